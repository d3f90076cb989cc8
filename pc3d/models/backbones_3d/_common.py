"""Helpers shared by the 3D backbones: input validation and per-stage config expansion."""
from __future__ import annotations

from typing import Sequence

import torch

from pc3d.ops.partition.windows import is_exporting
from pc3d.structures import SparseVoxels


def check_voxels(voxels, in_channels: int, owner: str) -> None:
    """Raise a clear TypeError/ValueError when `voxels` cannot feed a backbone with `in_channels`."""
    if not isinstance(voxels, SparseVoxels):
        raise TypeError(f"{owner}.forward: expected pc3d.structures.SparseVoxels, got {type(voxels).__name__}")
    feats = voxels.features
    if not feats.dtype.is_floating_point:
        raise TypeError(f"{owner}: voxels.features must be floating point, got {feats.dtype}")
    if feats.ndim != 2 or feats.shape[1] != in_channels:
        raise ValueError(f"{owner}: voxels.features must be (V, {in_channels}), got {tuple(feats.shape)}")
    if voxels.coords.dtype.is_floating_point:
        raise TypeError(f"{owner}: voxels.coords must be integer (batch, z, y, x), got {voxels.coords.dtype}")
    if not is_exporting() and feats.numel() and not bool(torch.isfinite(feats).all()):
        raise ValueError(f"{owner}: voxels.features contains NaN or inf")


def per_stage(value, num_stages: int, name: str) -> list:
    """Broadcast a scalar / single entry to `num_stages` entries, or check the length of a list."""
    if isinstance(value, (int, float, str)) or value is None:
        return [value] * num_stages
    value = list(value)
    if len(value) != num_stages:
        raise ValueError(f"{name}: expected {num_stages} entries (one per stage), got {len(value)}")
    return value


def as_int_tuple(value: Sequence, length: int, name: str) -> tuple:
    values = tuple(int(v) for v in value)
    if len(values) != length:
        raise ValueError(f"{name}: expected {length} ints, got {list(value)}")
    return values
