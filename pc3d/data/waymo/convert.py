"""`tools/create_data.py waymo --root DIR --out DIR [--workers N]`: Waymo segments -> pc3d format.

Every `*.tfrecord` under `--root` is one segment. Output (see `pc3d.data.info_dataset`):

    <out>/points/<frame_id>.npy        float32 (N, 5) x, y, z, tanh(intensity), elongation
    <out>/segments/<segment>.json      the info entries of one segment
    <out>/segments/<segment>.done      written last: the segment is complete
    <out>/<split>_infos.json           {"dataset": "waymo", "class_names", "point_features", "frames"}

Resumable: a segment with a `.done` marker is skipped. Every file is written to a temporary name and
`os.replace`d, and the marker comes after the segment's JSON, so an interrupted run never leaves a
half-written file that counts. Segments run in a process pool.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from pc3d.data.waymo.frame import CLASS_NAMES, CLASS_NAMES_WITH_SIGN, POINT_FEATURES, extract_points, frame_id, \
    frame_to_info, parse_frame
from pc3d.io.tfrecord import iter_tfrecord

SPLIT_BY_FOLDER = {"training": "train", "validation": "val", "testing": "test"}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as stream:
        stream.write(data)
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def segment_name(path: Path) -> str:
    name = path.name
    for suffix in (".tfrecord", "_with_camera_labels"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def convert_segment(segment: Path, out: Path, include_sign: bool = False, drop_nlz: bool = True,
                    returns: tuple[int, ...] = (0, 1), max_frames: int | None = None) -> tuple[str, int, float]:
    """Convert one segment; returns `(segment name, frames written, seconds)`. Skips a done segment."""
    start = time.perf_counter()
    name = segment_name(segment)
    seg_dir = out / "segments"
    done = seg_dir / f"{name}.done"
    info_path = seg_dir / f"{name}.json"
    if done.exists() and info_path.exists():
        return name, 0, 0.0
    (out / "points").mkdir(parents=True, exist_ok=True)
    seg_dir.mkdir(parents=True, exist_ok=True)
    infos, poses = [], {}
    for index, record in enumerate(iter_tfrecord(segment)):
        if max_frames is not None and index >= max_frames:
            break
        try:
            frame = parse_frame(record)
        except ValueError as err:
            raise ValueError(f"{segment}: record {index}: {err}") from err
        points = extract_points(frame, returns).as_array(drop_nlz=drop_nlz, tanh_intensity=True)
        relpath = f"points/{frame_id(frame)}.npy"
        _atomic_save_npy(out / relpath, points)
        infos.append(frame_to_info(frame, relpath, include_sign))
        # vehicle -> global, for multi-frame input (dataset.sweeps): kept beside the infos
        transform = np.asarray(frame.pose.transform, dtype=np.float64)
        poses[infos[-1]["frame_id"]] = transform.reshape(4, 4).tolist() if transform.size == 16 else np.eye(4).tolist()
    _atomic_write_bytes(seg_dir / f"{name}.poses.json", json.dumps(poses).encode())
    _atomic_write_bytes(info_path, json.dumps(infos).encode())
    _atomic_write_bytes(done, b"ok\n")
    return name, len(infos), time.perf_counter() - start


def merge_infos(out: Path, segments: list[Path], split: str, include_sign: bool = False) -> Path:
    """Write `<out>/<split>_infos.json` (and `<split>_poses.json`) from the per-segment files (in segment order)."""
    frames, poses = [], {}
    for segment in segments:
        name = segment_name(segment)
        path = out / "segments" / f"{name}.json"
        if not (out / "segments" / f"{name}.done").exists():
            raise RuntimeError(f"segment {name} is not converted (no done marker in {out / 'segments'})")
        frames.extend(json.loads(path.read_text()))
        pose_path = out / "segments" / f"{name}.poses.json"
        if pose_path.exists():  # segments converted before poses were kept have none
            poses.update(json.loads(pose_path.read_text()))
    infos = {"dataset": "waymo", "class_names": list(CLASS_NAMES_WITH_SIGN if include_sign else CLASS_NAMES),
             "point_features": list(POINT_FEATURES), "frames": frames}
    target = out / f"{split}_infos.json"
    if poses:
        _atomic_write_bytes(out / f"{split}_poses.json", json.dumps(poses).encode())
    _atomic_write_bytes(target, json.dumps(infos).encode())
    return target


def find_segments(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"--root does not exist: {root}")
    return sorted(root.rglob("*.tfrecord"))


def convert_waymo(root, out, workers: int = 1, split: str | None = None, include_sign: bool = False,
                  keep_nlz: bool = False, first_return_only: bool = False, max_frames: int | None = None,
                  gt_database: bool = False) -> Path:
    """`tools/create_data.py waymo`: every segment under `root` into `out`; returns the merged info file.

    `split` defaults to the root folder's name (training -> train, validation -> val); `keep_nlz` keeps
    points inside no-label zones; `first_return_only` skips the second return; `max_frames` caps the frames
    per segment (debugging); `gt_database` also cuts every labelled object into `<out>/gt_database`."""
    from tqdm import tqdm

    segments = find_segments(Path(root))
    if not segments:
        raise SystemExit(f"no .tfrecord segments under {root}")
    split = split or SPLIT_BY_FOLDER.get(Path(root).name, "train")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    returns = (0,) if first_return_only else (0, 1)
    kwargs = dict(include_sign=include_sign, drop_nlz=not keep_nlz, returns=returns, max_frames=max_frames)
    start = time.perf_counter()
    converted = skipped = frames = 0
    workers = max(1, int(workers))
    with tqdm(total=len(segments), desc="waymo segments", unit="seg") as bar:
        if workers == 1:
            results = (convert_segment(s, out, **kwargs) for s in segments)
            for name, n, seconds in results:
                converted, skipped, frames = converted + (seconds > 0), skipped + (seconds == 0), frames + n
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(convert_segment, s, out, **kwargs): s for s in segments}
                for future in as_completed(futures):
                    name, n, seconds = future.result()
                    converted, skipped, frames = converted + (seconds > 0), skipped + (seconds == 0), frames + n
                    bar.update(1)
    elapsed = time.perf_counter() - start
    target = merge_infos(out, segments, split, include_sign)
    rate = frames / elapsed if elapsed > 0 else 0.0
    print(f"waymo: {converted} segments converted, {skipped} already done; {frames} frames in {elapsed:.1f} s "
          f"({rate:.2f} frames/s) -> {target}")
    if gt_database:
        from pc3d.data.gt_database import write_dataset_gt_database
        from pc3d.data.info_dataset import InfoDataset
        classes = CLASS_NAMES_WITH_SIGN if include_sign else CLASS_NAMES
        db = write_dataset_gt_database(InfoDataset(out, split, classes, POINT_FEATURES), out, "waymo")
        print(f"waymo: GT database -> {db}")
    return target
