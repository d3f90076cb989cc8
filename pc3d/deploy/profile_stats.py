"""Dataset statistics of the exported graph's dynamic axes, and TensorRT optimisation profiles from them.

A TensorRT engine built from a graph with dynamic axes needs one optimisation profile: a
`(min, opt, max)` shape per input. Kernels are tuned for `opt` and every frame must fit in
`[min, max]`, so the profile comes from the sizes real frames produce:

    frames = synthetic_frames(32, "waymo64")                     # or dataset_frames(cfg, "val", 32)
    stats = collect_axis_stats(detector, frames)               # {"num_points": [...], "num_voxels": [...], "num_sets": [...]}
    summary = summarize(stats)                                 # percentiles per axis
    profile = optimization_profile(stats, layout)              # {"points": ((1, 4), (opt, 4), (max, 4)), ...}

`num_sets` (DSVT rotated sets of the first stage / FlatFormer groups of the x order) is reported for
information: sets are computed inside the graph and are not an input axis.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from pc3d.structures import Frame, collate

AXES = ("num_points", "num_voxels", "num_sets")
DEFAULT_PERCENTILES = (0, 5, 50, 95, 99, 100)


def synthetic_frames(num_frames: int, lidar: str = "waymo64", seed: int = 0) -> Iterator[Frame]:
    """`num_frames` frames of `pc3d.data.synthetic.simulate_frame` (seeds `seed .. seed + num_frames - 1`)."""
    from pc3d.data.synthetic import LidarConfig, simulate_frame

    _check_count(num_frames)
    config = LidarConfig.preset(lidar)
    for k in range(num_frames):
        yield simulate_frame(seed + k, lidar_config=config)


def dataset_frames(cfg: dict, split: str, num_frames: int, root: str | None = None) -> Iterator[Frame]:
    """The first `num_frames` frames (evenly spread over the split) of the config's on-disk dataset."""
    from pc3d.data.build import build_dataset

    _check_count(num_frames)
    dataset = build_dataset(cfg["dataset"], split, root=root)
    total = len(dataset)
    if total == 0:
        raise ValueError(f"dataset split {split!r} is empty")
    for index in np.unique(np.linspace(0, total - 1, min(num_frames, total)).round().astype(int)):
        yield dataset[int(index)]


def _check_count(num_frames) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")


def count_sets(detector, coords: torch.Tensor) -> int | None:
    """Sets / groups the 3D backbone forms for `coords` (V, 4): DSVT's first-stage rotated sets (shift 0),
    FlatFormer's groups of the x order; None for other backbones."""
    backbone = detector.backbone_3d
    name = type(backbone).__name__
    shape = detector.voxelizer.spatial_shape
    if coords.shape[0] == 0:
        return 0 if name in ("DSVT", "FlatFormer") else None
    if name == "DSVT":
        from pc3d.ops.partition.rotated_sets import rotated_sets
        sets = rotated_sets(coords.long(), shape, backbone.window_shape[0], backbone.set_size[0], "x",
                            backbone.shifts[0][0])
        return int(sets.voxel_index.shape[0])
    if name == "FlatFormer":
        from pc3d.ops.partition.flattened_windows import flattened_window_groups
        groups = flattened_window_groups(coords.long(), shape, backbone.window_shape, backbone.group_size, "x")
        return int(groups.voxel_index.shape[0])
    return None


def collect_axis_stats(detector, frames: Iterable[Frame]) -> dict[str, np.ndarray]:
    """Per-frame sizes of the graph inputs: `num_points` (in-range points fed to the graph),
    `num_voxels` and `num_sets` (empty when the backbone has no sets). Values are int64 arrays."""
    out = {axis: [] for axis in AXES}
    features = tuple(detector.point_features)
    for frame in frames:
        if not isinstance(frame, Frame):
            raise TypeError(f"frames: expected pc3d.structures.Frame items, got {type(frame).__name__}")
        voxelized = detector.voxelize(collate([Frame(frame.points.select_features(features))]))
        num_points = voxelized.points.shape[0] if voxelized.points is not None else int(voxelized.voxel_num_points.sum())
        out["num_points"].append(int(num_points))
        out["num_voxels"].append(voxelized.num_voxels)
        sets = count_sets(detector, voxelized.coords)
        if sets is not None:
            out["num_sets"].append(sets)
    if not out["num_voxels"]:
        raise ValueError("frames: got no frame")
    return {axis: np.asarray(values, dtype=np.int64) for axis, values in out.items()}


def summarize(stats: dict[str, np.ndarray], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """`{axis: {"p0": .., "p50": .., ..., "mean": .., "frames": n}}` for every non-empty axis."""
    summary = {}
    for axis, values in stats.items():
        values = np.asarray(values)
        if values.size == 0:
            continue
        row = {f"p{p:g}": float(np.percentile(values, p)) for p in percentiles}
        row["mean"] = float(values.mean())
        row["frames"] = int(values.size)
        summary[axis] = row
    return summary


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def axis_range(values: np.ndarray, opt_percentile: float = 50.0, max_percentile: float = 100.0,
               margin: float = 1.25, multiple: int = 256, minimum: int = 1) -> tuple[int, int, int]:
    """`(min, opt, max)` of one axis: min = `minimum` (smaller frames, down to a near-empty scan, must still
    run and cost nothing in tuning), opt = the `opt_percentile` frame, max = `max_percentile` x `margin`
    (headroom for frames busier than the ones scanned); opt / max rounded up to `multiple` (kernel tiles)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("values: no frame statistics")
    if not 0 <= opt_percentile <= max_percentile <= 100:
        raise ValueError(f"percentiles: need 0 <= opt ({opt_percentile}) <= max ({max_percentile}) <= 100")
    if margin < 1:
        raise ValueError(f"margin: expected >= 1, got {margin}")
    opt = max(_round_up(np.percentile(values, opt_percentile), multiple), minimum)
    top = max(_round_up(np.percentile(values, max_percentile) * margin, multiple), opt)
    return int(minimum), int(opt), int(top)


def optimization_profile(stats: dict[str, np.ndarray], layout: dict, opt_percentile: float = 50.0,
                         max_percentile: float = 100.0, margin: float = 1.25,
                         multiple: int = 256) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """`{input_name: (min_shape, opt_shape, max_shape)}` for the graph described by `layout`
    (`pc3d_layout` metadata of the exported file: mode, inputs, point_features; hard mode also needs
    `max_points_per_voxel`)."""
    points = axis_range(stats["num_points"], opt_percentile, max_percentile, margin, multiple)
    voxels = axis_range(stats["num_voxels"], opt_percentile, max_percentile, margin, multiple)
    channels = len(layout["point_features"])
    names = layout["inputs"]
    if layout["mode"] == "hard":
        per_voxel = int(layout["max_points_per_voxel"])
        shapes = [tuple((v, per_voxel, channels) for v in voxels), tuple((v,) for v in voxels),
                  tuple((v, 4) for v in voxels)]
    else:
        shapes = [tuple((n, channels) for n in points), tuple((n,) for n in points), tuple((v, 4) for v in voxels)]
    return {name: shape for name, shape in zip(names, shapes)}
