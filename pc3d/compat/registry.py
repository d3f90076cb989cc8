"""Converter registry: reference module NAME -> how to build the same computation in pc3d.

Each reference family has one or more converter files (`pc3d/compat/<family>.py`) that define

    FAMILY = "openpcdet"                     # the checkpoint / config layout it reads
    REPOS = ("open-mmlab/OpenPCDet",)        # `reference.repo` values whose fixtures it verifies
    CONVERTERS = {"MeanVFE": StageConverter(...), ...}   # keyed by the reference's module NAME / type

and is listed once in `CONVERTER_MODULES` below. Files of the same FAMILY are merged (a later file may
add names, never silently replace one), so a fork such as DSVT adds its modules with a new file and
one line here. A `StageConverter` knows four things about one reference module: the pc3d config it
corresponds to, how its weights are renamed / reshaped, which pc3d stage module it becomes and how that
module is run on the reference's `batch_dict` inputs, returning outputs under the reference's names.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

# One line per converter file. Order matters only for error messages.
CONVERTER_MODULES = (
    "pc3d.compat.openpcdet",
    "pc3d.compat.dsvt",
    "pc3d.compat.roitr",
    "pc3d.compat.flatformer",
)

# pc3d Detector attribute of each stage, in pipeline order
STAGES = ("vfe", "backbone_3d", "to_bev", "backbone_2d", "head")
# a reference model that is not a detector (RoITr) is converted as one stage, the whole pc3d model
WHOLE_MODEL = "model"


class ConversionError(ValueError):
    """A reference config / checkpoint cannot be converted; the message names keys and what is supported."""


@dataclass(frozen=True)
class RefContext:
    """What a reference module's constructor gets besides its config section (reference argument names,
    pc3d meaning): classes, point range, voxel size and grid `(nx, ny, nz)`, point features, input width."""

    class_names: tuple[str, ...] | None = None
    point_cloud_range: tuple[float, ...] | None = None
    voxel_size: tuple[float, float, float] | None = None
    grid_size: tuple[int, int, int] | None = None
    num_point_features: int | None = None
    input_channels: int | None = None
    point_feature_names: tuple[str, ...] | None = None
    voxelization: dict = field(default_factory=dict)  # pc3d voxelization options (max points / voxels)

    @classmethod
    def from_args(cls, args: dict[str, Any], **extra) -> "RefContext":
        """From a fixture's top-level constructor arguments (missing ones stay None)."""
        def tup(key, kind):
            value = args.get(key)
            if value is None:
                return None
            if isinstance(value, torch.Tensor):
                value = value.tolist()
            return tuple(kind(v) for v in value)
        voxel_size = tup("voxel_size", float)
        point_range = tup("point_cloud_range", float)
        grid = tup("grid_size", int)
        if grid is None and voxel_size and point_range:
            grid = tuple(int(round((point_range[i + 3] - point_range[i]) / voxel_size[i])) for i in range(3))
        n = args.get("num_point_features")
        c = args.get("input_channels")
        return cls(class_names=tuple(args["class_names"]) if args.get("class_names") is not None else None,
                   point_cloud_range=point_range, voxel_size=voxel_size, grid_size=grid,
                   num_point_features=int(n) if n is not None else None,
                   input_channels=int(c) if c is not None else None, **extra)

    def need(self, *names: str, who: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConversionError(f"{who}: needs {missing} (top-level fixture keys / reference YAML), none given")

    @property
    def pc3d_spatial_shape(self) -> tuple[int, int, int]:
        """pc3d's `(nz, ny, nx)` from the reference's `grid_size` `(nx, ny, nz)`."""
        return tuple(reversed(self.grid_size))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """pc3d point feature names: the given ones, or x, y, z + placeholders for a fixture."""
        if self.point_feature_names is not None:
            return self.point_feature_names
        n = self.num_point_features or self.input_channels or 4
        return ("x", "y", "z") + tuple(f"feature{i}" for i in range(3, n))


# (section cfg, reference weights without prefix, ctx) -> pc3d model sections, e.g. {"vfe": {...}}
ConfigFn = Callable[[dict, dict, RefContext], dict]
# (reference weights without prefix, pc3d model sections, ctx) -> pc3d weights (keys relative to the stage)
WeightsFn = Callable[[dict, dict, RefContext], dict]
# (pc3d model sections, ctx, inputs) -> the pc3d stage module
BuildFn = Callable[[dict, RefContext, dict], nn.Module]
# (pc3d stage module, reference inputs, pc3d model sections, ctx) -> outputs under the reference's names
RunFn = Callable[[nn.Module, dict, dict, RefContext], dict]


@dataclass(frozen=True)
class StageConverter:
    """One reference module. `section`: its config section (e.g. OpenPCDet's `BACKBONE_3D`); `prefix`: its
    key prefix in a full reference checkpoint; `stage`: the pc3d Detector attribute it becomes."""

    name: str
    section: str
    prefix: str
    stage: str
    config: ConfigFn
    weights: WeightsFn
    build: BuildFn
    run: RunFn

    def __post_init__(self):
        if self.stage not in STAGES + (WHOLE_MODEL,):
            raise ValueError(f"StageConverter {self.name}: stage must be one of {STAGES + (WHOLE_MODEL,)}, "
                             f"got {self.stage!r}")


@dataclass(frozen=True)
class DetectorConverter:
    """A whole reference detector (e.g. OpenPCDet's `CenterPoint`): its sections are converted one by one
    with the stage converters named by each section's NAME. `run` runs the pc3d Detector on the
    reference's inputs; `build` builds it from the merged pc3d model sections."""

    name: str
    sections: tuple[str, ...]
    build: BuildFn
    run: RunFn


@dataclass
class Family:
    name: str
    repos: list[str] = field(default_factory=list)
    stages: dict[str, StageConverter] = field(default_factory=dict)
    detectors: dict[str, DetectorConverter] = field(default_factory=dict)

    def supported(self) -> list[str]:
        return sorted(self.stages) + sorted(self.detectors)


_FAMILIES: dict[str, Family] | None = None


def families() -> dict[str, Family]:
    """All families, merged from `CONVERTER_MODULES` (imported once)."""
    global _FAMILIES
    if _FAMILIES is None:
        merged: dict[str, Family] = {}
        for module_name in CONVERTER_MODULES:
            module = importlib.import_module(module_name)
            family = merged.setdefault(module.FAMILY, Family(module.FAMILY))
            family.repos += [r for r in getattr(module, "REPOS", ()) if r not in family.repos]
            for table, attr in ((family.stages, "CONVERTERS"), (family.detectors, "DETECTORS")):
                for name, conv in getattr(module, attr, {}).items():
                    if name in table:
                        raise ConversionError(f"{module_name}: converter {name!r} already registered for "
                                              f"family {module.FAMILY!r}")
                    table[name] = conv
        _FAMILIES = merged
    return _FAMILIES


def family(name: str) -> Family:
    known = families()
    if name not in known:
        raise ConversionError(f"unknown reference family {name!r}; supported: {sorted(known)}")
    return known[name]


def family_for_repo(repo: str) -> Family:
    """The family whose converters handle fixtures of `repo` (`owner/name`, case-insensitive)."""
    for fam in families().values():
        if repo.lower() in (r.lower() for r in fam.repos):
            return fam
    supported = {f.name: f.repos for f in families().values()}
    raise ConversionError(f"no converter for reference repo {repo!r}; supported repos: {supported}")


def converter_for(fam: Family, name: str, section: str | None = None) -> StageConverter | DetectorConverter:
    conv = fam.stages.get(name) or fam.detectors.get(name)
    if conv is None:
        where = f" (section {section})" if section else ""
        raise ConversionError(f"unsupported {fam.name} module {name!r}{where}; supported: {fam.supported()}")
    if section is not None and isinstance(conv, StageConverter) and conv.section != section:
        raise ConversionError(f"{fam.name} module {name!r} is a {conv.section} module, found under {section}")
    return conv


def strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_all_used(ref_state: dict, used: set, who: str) -> None:
    """Every reference key must have been consumed by a converter: an unmapped key is an error."""
    unused = sorted(k for k in ref_state if k not in used)
    if unused:
        more = f" ... (+{len(unused) - 12} more)" if len(unused) > 12 else ""
        raise ConversionError(f"{who}: reference key(s) not mapped to pc3d ({len(unused)}): "
                              f"{', '.join(unused[:12])}{more}")


def load_into(module: nn.Module, state: dict, who: str) -> None:
    """Strict load with an error that names missing / unexpected / wrongly shaped keys."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shape = [f"{k}: converted {tuple(state[k].shape)} vs pc3d {tuple(own[k].shape)}"
             for k in sorted(own) if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = [f"{who}: converted weights do not fit the pc3d module"]
        for title, items in (("pc3d keys with no reference weight", missing),
                             ("converted keys pc3d does not have", unexpected), ("shape mismatch", shape)):
            if items:
                parts.append(f"{title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
        raise ConversionError("; ".join(parts))
    module.load_state_dict(state, strict=True)


def convert_sections(fam: Family, model_cfg: dict, sections: tuple[str, ...], ref_state: dict,
                     ctx: RefContext) -> tuple[dict, dict]:
    """Convert the named reference MODEL sections: -> (pc3d model sections, pc3d Detector state_dict)."""
    pc3d_cfg: dict = {}
    state: dict = {}
    used: set = set()
    for section in sections:
        sub = model_cfg.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict) or "NAME" not in sub:
            raise ConversionError(f"MODEL.{section}: expected a dict with NAME, got {sub!r}")
        conv = converter_for(fam, sub["NAME"], section)
        part = strip_prefix(ref_state, conv.prefix)
        used |= {conv.prefix + k for k in part}
        sections_cfg = conv.config(sub, part, ctx)
        for key, value in sections_cfg.items():
            pc3d_cfg[key] = {**pc3d_cfg.get(key, {}), **value}
        stage_state = conv.weights(part, sections_cfg, ctx)
        state.update({f"{conv.stage}.{k}": v for k, v in stage_state.items()})
    unknown = sorted(k for k in model_cfg if isinstance(model_cfg[k], dict) and "NAME" in model_cfg[k]
                     and k not in sections)
    if unknown:
        raise ConversionError(f"MODEL sections {unknown} are not supported by this converter "
                              f"(supported sections: {list(sections)})")
    check_all_used(ref_state, used, "checkpoint")
    return pc3d_cfg, state
