"""The on-disk pc3d dataset format, shared by the synthetic writer and the Waymo converter.

Layout of a dataset root:
    <root>/<split>_infos.json
    <root>/points/<frame_id>.npy          float32 (N, C), columns named by "point_features"

`<split>_infos.json`:
    {"dataset": "synthetic", "class_names": [...], "point_features": ["x", "y", "z", "intensity"],
     "frames": [{"frame_id": str, "points": "points/<id>.npy", "boxes": [[x, y, z, dx, dy, dz, heading], ...],
                 "labels": [class name, ...], "difficulty": [1|2, ...], "num_points": [int, ...]}, ...]}
Paths are relative to the info file's folder. Boxes follow docs/conventions.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pc3d.data.class_map import resolve_class_map
from pc3d.structures import Boxes3D, Frame, PointCloud, check_ground_truth


def read_infos(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset info file not found: {path}")
    try:
        infos = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt info file ({err})") from err
    for key in ("class_names", "point_features", "frames"):
        if key not in infos:
            raise ValueError(f"{path}: info file has no '{key}' entry")
    return infos


class InfoDataset(torch.utils.data.Dataset):
    """Frames of a pc3d info file as `Frame`s, boxes restricted to `class_names`.

    `point_features` selects (and orders) the point columns a model reads; `transform` (e.g. the
    training augmentation) maps a `Frame` to a `Frame`.
    """

    def __init__(self, root, split: str, class_names: Sequence[str], point_features: Sequence[str],
                 transform: Callable[[Frame], Frame] | None = None, max_frames: int | None = None,
                 class_map: dict | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root does not exist: {self.root}")
        self.info_path = self.root / f"{split}_infos.json"
        infos = read_infos(self.info_path)
        self.split = split
        self.class_names = tuple(class_names)
        # file class name -> config class name; a config class no file class maps to is an error
        self.file_to_class = resolve_class_map(self.class_names, class_map, tuple(infos["class_names"]),
                                               f"{self.info_path}")
        self.file_features = tuple(infos["point_features"])
        self.point_features = tuple(point_features)
        missing = [f for f in self.point_features if f not in self.file_features]
        if missing:
            raise ValueError(f"{self.info_path}: point features {missing} requested but the files have {list(self.file_features)}")
        self.frames = infos["frames"][:max_frames] if max_frames else infos["frames"]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        info = self.frames[index]
        path = self.root / info["points"]
        try:
            points = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read points of frame {info['frame_id']!r} ({err})") from err
        cloud = PointCloud(points, self.file_features).select_features(self.point_features)
        frame = Frame(cloud, self.boxes_of(index), str(info["frame_id"]), {"split": self.split})
        return self.transform(frame) if self.transform is not None else frame

    def boxes_of(self, index: int) -> Boxes3D:
        """Ground truth of frame `index` restricted to this dataset's classes (no point loading)."""
        info = self.frames[index]
        # reject (never drop) a NaN / non-positive-size box, indexed as in the file: docs/conventions.md
        check_ground_truth(np.asarray(info["boxes"], dtype=np.float64), f"{info['frame_id']!r} of {self.info_path}")
        keep = [i for i, name in enumerate(info["labels"]) if name in self.file_to_class]
        if not keep:
            return Boxes3D.empty(self.class_names)
        boxes = np.asarray(info["boxes"], dtype=np.float32)[keep]
        labels = [self.class_names.index(self.file_to_class[info["labels"][i]]) for i in keep]
        difficulty = [info["difficulty"][i] for i in keep] if "difficulty" in info else None
        num_points = [info["num_points"][i] for i in keep] if "num_points" in info else None
        return Boxes3D(boxes, labels, self.class_names, None, difficulty, num_points)
