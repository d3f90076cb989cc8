"""Reference-parity fixtures: one `torch.save`d dict layout, shared by every reference family.

Layout (the reference's own names everywhere, so a fixture reads like the reference's code):

- `reference`: `{"repo": "owner/name", "commit": 40 hex, "files": [paths the numbers came from]}`;
- `model_cfg`: the reference's config section for the module under test (OpenPCDet: e.g. its `BACKBONE_3D`
  dict with `NAME`; the whole `MODEL` dict for a whole detector; mmdet3d: the module dict with `type`);
- `state_dict`: the reference's weights with the prefix they have inside a full checkpoint
  (`vfe.`, `backbone_3d.`, `backbone_2d.`, `dense_head.` for OpenPCDet; `middle_encoder.` for mmdet3d);
- top-level constructor arguments besides the config section, under the reference's argument names
  (`input_channels`, `grid_size`, `voxel_size`, `point_cloud_range`, `num_point_features`, `class_names`);
- `inputs` / `outputs`: named as the reference names them (OpenPCDet's `batch_dict` keys of that stage);
  a sparse tensor is stored flattened as `<name>.features`, `<name>.indices`, `<name>.spatial_shape`;
- `seed`: the seed every parameter and buffer was drawn with.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CTOR_ARGS = ("input_channels", "grid_size", "voxel_size", "point_cloud_range", "num_point_features", "class_names")
REQUIRED = ("reference", "model_cfg", "state_dict", "inputs", "outputs", "seed")


class FixtureError(ValueError):
    """A fixture file does not follow the layout; the message names the file and the key."""


@dataclass(frozen=True)
class ReferenceInfo:
    repo: str
    commit: str
    files: tuple[str, ...]


@dataclass
class ReferenceFixture:
    """A validated fixture (see the module docstring for the layout)."""

    path: str
    reference: ReferenceInfo
    model_cfg: dict
    state_dict: dict[str, torch.Tensor]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    seed: int
    ctor_args: dict[str, Any] = field(default_factory=dict)

    @property
    def module_name(self) -> str:
        """The reference module's name: OpenPCDet's `NAME` or mmdet3d's `type`."""
        return str(self.model_cfg.get("NAME", self.model_cfg.get("type", "")))


def load_fixture(path) -> ReferenceFixture:
    """Read and validate a fixture; every problem is a `FixtureError` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise FixtureError(f"fixture not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign / truncated files
        raise FixtureError(f"{path}: not a readable torch file of plain values and tensors: "
                           f"{type(err).__name__}: {str(err)[:200]}") from err
    return validate_fixture(data, str(path))


def validate_fixture(data: Any, source: str = "<fixture>") -> ReferenceFixture:
    if not isinstance(data, dict):
        raise FixtureError(f"{source}: a fixture is a dict, got {type(data).__name__}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise FixtureError(f"{source}: missing key(s) {missing}; a fixture has {list(REQUIRED)} "
                           f"plus optional {list(CTOR_ARGS)}")
    unknown = sorted(k for k in data if k not in REQUIRED and k not in CTOR_ARGS)
    if unknown:
        raise FixtureError(f"{source}: unknown top-level key(s) {unknown}; allowed: {list(REQUIRED) + list(CTOR_ARGS)}")
    ref = data["reference"]
    if not isinstance(ref, dict) or not {"repo", "commit", "files"} <= set(ref):
        raise FixtureError(f"{source}: 'reference' must be a dict with repo, commit and files, got {ref!r}")
    if not re.fullmatch(r"[0-9a-f]{40}", str(ref["commit"])):
        raise FixtureError(f"{source}: reference.commit must be a 40-hex commit, got {ref['commit']!r}")
    if not isinstance(data["model_cfg"], dict):
        raise FixtureError(f"{source}: 'model_cfg' must be the reference's config dict, got {type(data['model_cfg']).__name__}")
    state = data["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FixtureError(f"{source}: 'state_dict' must map key names to tensors")
    for key in ("inputs", "outputs"):
        if not isinstance(data[key], dict) or not data[key]:
            raise FixtureError(f"{source}: '{key}' must be a non-empty dict keyed by the reference's names")
    if not isinstance(data["seed"], int):
        raise FixtureError(f"{source}: 'seed' must be an int, got {data['seed']!r}")
    fixture = ReferenceFixture(
        path=source, reference=ReferenceInfo(str(ref["repo"]), str(ref["commit"]), tuple(ref["files"])),
        model_cfg=data["model_cfg"], state_dict=state, inputs=data["inputs"], outputs=data["outputs"],
        seed=data["seed"], ctor_args={k: data[k] for k in CTOR_ARGS if k in data})
    if not fixture.module_name:
        raise FixtureError(f"{source}: model_cfg has neither NAME (OpenPCDet) nor type (mmdet3d)")
    return fixture


def save_fixture(data: dict, path) -> Path:
    """Validate, then `torch.save` (used by the reference harnesses, which live outside the project)."""
    validate_fixture(data, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path
