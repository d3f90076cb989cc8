"""3D backbones: `SparseVoxels -> SparseVoxels` modules built from a config dict.

`build_backbone_3d({"type": "DSVT", "in_channels": 32, "dims": 32, ...})`. `BACKBONES_3D` is the one table
of this stage: type name -> `Backbone3DEntry` (module, class, the snake_case aliases the YAML configs use,
and whether the network has an ONNX path). The detector builder, the aliases and the export check
(`pc3d.deploy`) all read it. Every backbone has `out_channels`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

_SPCONV_REASON = ("it is the spconv sparse-convolution baseline (e.g. centerpoint_voxel), and spconv's sparse "
                  "convolutions are custom C++/CUDA kernels with no ONNX symbolic and no onnxruntime/TensorRT operator")


@dataclass(frozen=True)
class Backbone3DEntry:
    """One registered 3D backbone type.

    module / class_name: where the class lives (imported lazily, so that a missing optional dependency,
    spconv, only affects the backbone that needs it); aliases: lower-case spellings accepted in configs;
    exportable: False when the network has no ONNX path, with `export_blocker` saying why.
    """

    module: str
    class_name: str
    aliases: tuple[str, ...] = ()
    exportable: bool = True
    export_blocker: str = ""

    def __post_init__(self):
        if self.exportable == bool(self.export_blocker):
            raise ValueError(f"{self.class_name}: a non-exportable backbone needs an export_blocker, and only it")

    def load(self) -> type:
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.class_name)


BACKBONES_3D: dict[str, Backbone3DEntry] = {
    "identity": Backbone3DEntry("identity", "IdentityBackbone3D", ("none",)),
    "DSVT": Backbone3DEntry("dsvt", "DSVT", ("dsvt",)),
    "DSVT-P": Backbone3DEntry("dsvt", "DSVT", ("dsvt_pillar", "dsvt_p")),
    "DSVT-V": Backbone3DEntry("dsvt", "DSVT", ("dsvt_voxel", "dsvt_v")),
    "FlatFormer": Backbone3DEntry("flatformer", "FlatFormer", ("flatformer",)),
    "ScatterFormer": Backbone3DEntry("scatterformer", "ScatterFormer", ("scatterformer",)),
    "SST": Backbone3DEntry("sst", "SST", ("sst",)),
    "SparseResNetBackbone": Backbone3DEntry("spconv_resnet", "SparseResNetBackbone", ("spconv_resnet", "sparse_resnet"),
                                            exportable=False, export_blocker=_SPCONV_REASON),
    "VoxelResBackBone8x": Backbone3DEntry("spconv_resnet", "SparseResNetBackbone", ("voxelresbackbone8x",),
                                          exportable=False, export_blocker=_SPCONV_REASON),
}
_ALIASES = {alias: name for name, entry in BACKBONES_3D.items() for alias in entry.aliases}


def _normalise(name) -> str:
    return str(name).lower().replace("-", "_")


_SPELLINGS = {**{_normalise(name): name for name in BACKBONES_3D}, **_ALIASES}


def canonical_backbone_3d(name) -> str | None:
    """The registered type name for `name` or one of its aliases (case / '-' vs '_' ignored); None if unknown."""
    if name in BACKBONES_3D:
        return name
    return _SPELLINGS.get(_normalise(name))


def backbone_3d_entry(name) -> Backbone3DEntry:
    """The table entry of a type name or alias; ValueError naming the known ones when unknown."""
    canonical = canonical_backbone_3d(name)
    if canonical is None:
        raise ValueError(f"backbone_3d: unknown type {name!r}; expected one of "
                         f"{sorted(BACKBONES_3D) + sorted(_ALIASES)}")
    return BACKBONES_3D[canonical]


def build_backbone_3d(cfg: dict) -> nn.Module:
    """Instantiate a 3D backbone from `{"type": name, **constructor kwargs}` (e.g. parsed YAML)."""
    if not isinstance(cfg, dict):
        raise TypeError(f"build_backbone_3d: expected a dict config, got {type(cfg).__name__}")
    if "type" not in cfg:
        raise ValueError(f"build_backbone_3d: config has no 'type' (one of {sorted(BACKBONES_3D)})")
    kwargs = dict(cfg)
    name = kwargs.pop("type")
    if canonical_backbone_3d(name) is None:
        raise ValueError(f"build_backbone_3d: unknown type {name!r}; expected one of "
                         f"{sorted(BACKBONES_3D) + sorted(_ALIASES)}")
    cls = backbone_3d_entry(name).load()
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"build_backbone_3d: bad arguments for {name}: {err}") from err
