"""3D backbones: `SparseVoxels -> SparseVoxels` modules built from a config dict.

`build_backbone_3d({"type": "DSVT", "in_channels": 32, "dims": 32, ...})`; the registered types
are in `BACKBONES_3D` (snake_case aliases such as `dsvt_pillar`, `dsvt_voxel`, `flatformer`,
`scatterformer`, `sst`, `spconv_resnet` are accepted too). Every backbone has `out_channels`.
"""
from __future__ import annotations

import importlib

from torch import nn

# type name -> (module, class); imported lazily so that a missing optional dependency (spconv)
# only affects the backbone that needs it
BACKBONES_3D = {
    "DSVT": ("dsvt", "DSVT"),
    "DSVT-P": ("dsvt", "DSVT"),
    "DSVT-V": ("dsvt", "DSVT"),
    "FlatFormer": ("flatformer", "FlatFormer"),
    "ScatterFormer": ("scatterformer", "ScatterFormer"),
    "SST": ("sst", "SST"),
    "SparseResNetBackbone": ("spconv_resnet", "SparseResNetBackbone"),
    "VoxelResBackBone8x": ("spconv_resnet", "SparseResNetBackbone"),
}
# lower-case / snake_case spellings used in the YAML configs
_ALIASES = {"dsvt": "DSVT", "dsvt_pillar": "DSVT-P", "dsvt_p": "DSVT-P", "dsvt_voxel": "DSVT-V", "dsvt_v": "DSVT-V",
            "flatformer": "FlatFormer", "scatterformer": "ScatterFormer", "sst": "SST",
            "spconv_resnet": "SparseResNetBackbone", "sparse_resnet": "SparseResNetBackbone",
            "voxelresbackbone8x": "VoxelResBackBone8x"}


def _canonical(name: str) -> str | None:
    if name in BACKBONES_3D:
        return name
    return _ALIASES.get(str(name).lower().replace("-", "_"))


def build_backbone_3d(cfg: dict) -> nn.Module:
    """Instantiate a 3D backbone from `{"type": name, **constructor kwargs}` (e.g. parsed YAML)."""
    if not isinstance(cfg, dict):
        raise TypeError(f"build_backbone_3d: expected a dict config, got {type(cfg).__name__}")
    if "type" not in cfg:
        raise ValueError(f"build_backbone_3d: config has no 'type' (one of {sorted(BACKBONES_3D)})")
    kwargs = dict(cfg)
    name = kwargs.pop("type")
    canonical = _canonical(name)
    if canonical is None:
        raise ValueError(f"build_backbone_3d: unknown type {name!r}; expected one of "
                         f"{sorted(BACKBONES_3D) + sorted(_ALIASES)}")
    module_name, class_name = BACKBONES_3D[canonical]
    cls = getattr(importlib.import_module(f"{__name__}.{module_name}"), class_name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"build_backbone_3d: bad arguments for {name}: {err}") from err
