"""Write simulated frames to the on-disk pc3d info format (see pc3d/data/info_dataset.py).

    <out>/points/<frame_id>.npy     float32 (N, 4) x, y, z, intensity
    <out>/<split>_infos.json        {"dataset": "synthetic", "class_names", "point_features", "frames": [...]}

Frame `i` of a split is simulated with seed `seed * 1_000_003 + SPLIT_OFFSETS[split] + i`, so splits
never share a scene (as long as a split has fewer than 250,000 frames) and any frame can be
regenerated on its own. Every file is written to a temporary name and moved into place with
`os.replace`, so an interrupted run never leaves a truncated file behind.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .lidar import POINT_FEATURES, LidarConfig, simulate_frame
from .scene import CLASS_NAMES, SceneConfig

SEED_STRIDE = 1_000_003
SPLIT_OFFSETS = {"train": 0, "val": 250_000, "test": 500_000, "mini": 750_000}
MAX_FRAMES_PER_SPLIT = 250_000
BEAM_PRESETS = {64: "waymo64", 32: "vlp32"}


def frame_seed(seed: int, split: str, index: int) -> int:
    """Seed of frame `index` of `split`; disjoint across splits and across base seeds."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    if not 0 <= index < MAX_FRAMES_PER_SPLIT:
        raise ValueError(f"frame index must be in [0, {MAX_FRAMES_PER_SPLIT}), got {index}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed) * SEED_STRIDE + SPLIT_OFFSETS[split] + int(index)


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(Path(path), lambda f: np.save(f, array, allow_pickle=False))


def save_json_atomic(path: Path, obj) -> None:
    data = json.dumps(obj, indent=1).encode()
    atomic_write_bytes(Path(path), lambda f: f.write(data))


def _init_worker(threads: int) -> None:
    """Split the cores between workers instead of every worker using all of them."""
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _make_frame(job) -> dict:
    """Simulate and store one frame; returns its info entry (runs in a worker process)."""
    out_dir, frame_id, seed, scene_config, lidar_config, drop_empty = job
    frame = simulate_frame(seed, scene_config, lidar_config, frame_id=frame_id)
    rel = f"points/{frame_id}.npy"
    save_npy_atomic(Path(out_dir) / rel, frame.points.points.numpy().astype(np.float32))
    gt = frame.gt_boxes
    if drop_empty:
        gt = gt[gt.num_points > 0]
    return {"frame_id": frame_id, "seed": int(seed), "points": rel,
            "num_lidar_points": int(len(frame.points)),
            "boxes": [[float(v) for v in row] for row in gt.boxes.tolist()],
            "labels": gt.names,
            "difficulty": [int(v) for v in gt.difficulty.tolist()],
            "num_points": [int(v) for v in gt.num_points.tolist()]}


def write_synthetic_dataset(out_dir, frames: int, seed: int, split: str = "train",
                            scene_config: SceneConfig | None = None, lidar_config: LidarConfig | None = None,
                            workers: int = 0, drop_empty_boxes: bool = False, progress: bool = True) -> Path:
    """Simulate `frames` frames of `split` into `out_dir`; returns the path of `<split>_infos.json`.

    workers: 0 = in this process, k > 0 = a pool of k processes (results are identical).
    drop_empty_boxes: leave 0-point boxes out of the infos (they are kept by default, like Waymo).
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 0:
        raise ValueError(f"frames must be a non-negative int, got {frames!r}")
    if frames > MAX_FRAMES_PER_SPLIT:
        raise ValueError(f"frames must be <= {MAX_FRAMES_PER_SPLIT} (split seed ranges would overlap)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    out_dir = Path(out_dir)
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    lidar_config = lidar_config or LidarConfig.preset("waymo64")
    jobs = [(str(out_dir), f"{split}_{i:06d}", frame_seed(seed, split, i), scene_config, lidar_config,
             drop_empty_boxes) for i in range(frames)]
    bar = tqdm(total=frames, desc=f"synthetic {split}", disable=not progress)
    if workers and workers > 0 and frames > 1:
        # spawn, not fork: numba's OpenMP runtime aborts in a forked child
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            infos = []
            for info in pool.map(_make_frame, jobs):
                infos.append(info)
                bar.update()
    else:
        infos = []
        for job in jobs:
            infos.append(_make_frame(job))
            bar.update()
    bar.close()
    info_path = out_dir / f"{split}_infos.json"
    save_json_atomic(info_path, {
        "dataset": "synthetic", "class_names": list(CLASS_NAMES), "point_features": list(POINT_FEATURES),
        "split": split, "seed": int(seed), "lidar": lidar_config.name, "sensor_height": lidar_config.sensor_height,
        "frames": infos})
    return info_path


def write_synthetic_split(out, frames: int, seed: int, split: str = "train", scene: str = "street", beams: int = 64,
                          workers: int = 0, drop_empty_boxes: bool = False, gt_database: bool = False,
                          progress: bool = True) -> tuple[Path, Path | None]:
    """`tools/create_data.py synthetic`: a split from preset names (`SceneConfig.preset(scene)`, the LiDAR of
    `BEAM_PRESETS[beams]`), plus its GT database when asked. Returns `(info path, database path or None)`."""
    path = write_synthetic_dataset(out, frames, seed, split=split, scene_config=SceneConfig.preset(scene),
                                   lidar_config=LidarConfig.preset(BEAM_PRESETS[beams]), workers=workers,
                                   drop_empty_boxes=drop_empty_boxes, progress=progress)
    db = write_synthetic_gt_database(out, split, progress=progress) if gt_database else None
    return path, db


def write_synthetic_gt_database(root, split: str = "train", progress: bool = False) -> Path:
    """`<root>/synthetic_dbinfos_<split>.pkl` + `<root>/gt_database/` from a written split (all classes)."""
    from pc3d.data.gt_database import write_dataset_gt_database
    from pc3d.data.info_dataset import InfoDataset

    dataset = InfoDataset(root, split, CLASS_NAMES, POINT_FEATURES)
    return write_dataset_gt_database(dataset, root, "synthetic", progress=progress)

