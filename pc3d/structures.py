"""Typed data structures that flow through pc3d (no string-keyed batch dicts).

Conventions (frame, box layout, voxel coordinate order) are in docs/conventions.md.

- `PointCloud`: one scan, `points (N, C)` float32 plus the name of every column.
- `Boxes3D`: boxes `(M, 7)` or `(M, 9)` with labels and optional scores / difficulty / point counts.
- `SparseVoxels`: voxel features with `(batch, z, y, x)` integer coordinates and the grid geometry.
- `Frame`: one sample of a dataset (points + ground-truth boxes + id).
- `Batch` and `collate`: several frames stacked for a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

BOX_DIM = 7
BOX_DIM_WITH_VELOCITY = 9


def _as_tensor(value, dtype, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}: expected an array or tensor, got {type(value).__name__}") from err
    return value.to(dtype)


@dataclass
class PointCloud:
    """One scan. `points` is `(N, C)` float32; columns 0-2 are x, y, z."""

    points: torch.Tensor
    feature_names: tuple[str, ...] = ("x", "y", "z", "intensity")

    def __post_init__(self):
        self.points = _as_tensor(self.points, torch.float32, "PointCloud.points")
        self.feature_names = tuple(self.feature_names)
        if self.points.ndim != 2 or self.points.shape[1] < 3:
            raise ValueError(f"PointCloud.points must have shape (N, C>=3), got {tuple(self.points.shape)}")
        if self.points.shape[1] != len(self.feature_names):
            raise ValueError(
                f"PointCloud.points has {self.points.shape[1]} columns but feature_names names "
                f"{len(self.feature_names)}: {self.feature_names}"
            )
        if self.feature_names[:3] != ("x", "y", "z"):
            raise ValueError(f"PointCloud.feature_names must start with x, y, z, got {self.feature_names}")

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def xyz(self) -> torch.Tensor:
        return self.points[:, :3]

    def select_features(self, names: Sequence[str]) -> "PointCloud":
        """Keep the named columns in the given order; a missing name is a clear error."""
        missing = [n for n in names if n not in self.feature_names]
        if missing:
            raise ValueError(
                f"point features {missing} are required but this scan only has {list(self.feature_names)}"
            )
        index = [self.feature_names.index(n) for n in names]
        return PointCloud(self.points[:, index], tuple(names))

    def to(self, device) -> "PointCloud":
        return replace(self, points=self.points.to(device))


@dataclass
class Boxes3D:
    """Boxes `(M, 7)` = (x, y, z, dx, dy, dz, heading), or `(M, 9)` with (vx, vy) appended.

    `labels` index into `class_names`. Optional per-box fields are `None` or length-M tensors.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...] = ("Vehicle", "Pedestrian", "Cyclist")
    scores: torch.Tensor | None = None
    difficulty: torch.Tensor | None = None  # 1 = LEVEL_1, 2 = LEVEL_2
    num_points: torch.Tensor | None = None

    def __post_init__(self):
        self.boxes = _as_tensor(self.boxes, torch.float32, "Boxes3D.boxes")
        if self.boxes.ndim == 1 and self.boxes.numel() == 0:
            self.boxes = self.boxes.reshape(0, BOX_DIM)
        if self.boxes.ndim != 2 or self.boxes.shape[1] not in (BOX_DIM, BOX_DIM_WITH_VELOCITY):
            raise ValueError(f"Boxes3D.boxes must have shape (M, 7) or (M, 9), got {tuple(self.boxes.shape)}")
        self.labels = _as_tensor(self.labels, torch.int64, "Boxes3D.labels").reshape(-1)
        self.class_names = tuple(self.class_names)
        m = self.boxes.shape[0]
        for name in ("labels", "scores", "difficulty", "num_points"):
            value = getattr(self, name)
            if value is None:
                continue
            dtype = torch.float32 if name == "scores" else torch.int64
            value = _as_tensor(value, dtype, f"Boxes3D.{name}").reshape(-1)
            if value.shape[0] != m:
                raise ValueError(f"Boxes3D.{name} has {value.shape[0]} entries for {m} boxes")
            setattr(self, name, value)
        if m and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"Boxes3D.labels must be in [0, {len(self.class_names)}), got {self.labels.unique().tolist()}")

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def has_velocity(self) -> bool:
        return self.boxes.shape[1] == BOX_DIM_WITH_VELOCITY

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    def __getitem__(self, index) -> "Boxes3D":
        """Select boxes with an index, slice or boolean mask; every per-box field follows."""
        def pick(t):
            return None if t is None else t[index]
        return Boxes3D(self.boxes[index], self.labels[index], self.class_names, pick(self.scores),
                       pick(self.difficulty), pick(self.num_points))

    def to(self, device) -> "Boxes3D":
        def move(t):
            return None if t is None else t.to(device)
        return Boxes3D(self.boxes.to(device), self.labels.to(device), self.class_names, move(self.scores),
                       move(self.difficulty), move(self.num_points))

    @classmethod
    def empty(cls, class_names: Sequence[str], with_velocity: bool = False, with_scores: bool = False) -> "Boxes3D":
        dim = BOX_DIM_WITH_VELOCITY if with_velocity else BOX_DIM
        return cls(torch.zeros(0, dim), torch.zeros(0, dtype=torch.int64), tuple(class_names),
                   torch.zeros(0) if with_scores else None)

    def to_json(self) -> list[dict]:
        """`[{"box": [x, y, z, dx, dy, dz, heading], "label": name, "score": s, "velocity": [vx, vy]}]`."""
        out = []
        for i in range(len(self)):
            row = self.boxes[i].tolist()
            item = {"box": row[:BOX_DIM], "label": self.class_names[int(self.labels[i])]}
            if self.scores is not None:
                item["score"] = float(self.scores[i])
            if self.has_velocity:
                item["velocity"] = row[BOX_DIM:]
            out.append(item)
        return out

    @classmethod
    def from_json(cls, items: list[dict], class_names: Sequence[str] | None = None) -> "Boxes3D":
        """Inverse of `to_json`; unknown labels extend `class_names` when it is not given."""
        names = list(class_names) if class_names is not None else []
        boxes, labels, scores = [], [], []
        for k, item in enumerate(items):
            box = list(item["box"]) + list(item.get("velocity", []))
            if len(box) not in (BOX_DIM, BOX_DIM_WITH_VELOCITY):
                raise ValueError(f"box {k}: expected 7 numbers (9 with velocity), got {len(box)}")
            label = item.get("label", names[0] if names else "object")
            if label not in names:
                if class_names is not None:
                    raise ValueError(f"box {k}: label {label!r} is not one of {list(class_names)}")
                names.append(label)
            boxes.append(box)
            labels.append(names.index(label))
            scores.append(item.get("score"))
        has_scores = bool(items) and all(s is not None for s in scores)
        if not items:
            return cls.empty(names or ["object"])
        return cls(torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), tuple(names),
                   torch.tensor(scores, dtype=torch.float32) if has_scores else None)


def check_ground_truth(boxes, frame: str):
    """Refuse ground truth that would silently skew a metric: a box with a non-finite value, or a size
    (dx, dy, dz) that is not > 0. The rule is *reject*, never drop (docs/conventions.md, "Ground truth"):
    the error names the frame and the box index. `boxes`: a `Boxes3D` or an (M, 7+) array / tensor (a
    dataset's raw rows, so that the index is the file's). Returns `boxes` unchanged."""
    if boxes is None or len(boxes) == 0:
        return boxes
    arr = boxes.boxes if isinstance(boxes, Boxes3D) else _as_tensor(boxes, torch.float64, "ground truth boxes")
    arr = arr.detach().cpu().double().reshape(len(arr), -1)
    finite = torch.isfinite(arr).all(dim=1)
    sized = (arr[:, 3:6] > 0).all(dim=1)
    bad = torch.nonzero(~(finite & sized)).flatten().tolist()
    if bad:
        i = bad[0]
        what = "a NaN or inf value" if not bool(finite[i]) else "a size (dx, dy, dz) that is not > 0"
        more = f" ({len(bad) - 1} more bad box(es) in this frame)" if len(bad) > 1 else ""
        raise ValueError(f"ground truth of frame {frame}: box {i} {[round(v, 4) for v in arr[i, :7].tolist()]} "
                         f"has {what}{more}; fix or remove it in the dataset")
    return boxes


@dataclass
class SparseVoxels:
    """Non-empty voxels of a batch.

    features: `(V, C)` float; coords: `(V, 4)` int32 `(batch, z, y, x)`;
    spatial_shape: `(nz, ny, nx)`; voxel_size: `(sx, sy, sz)` metres;
    point_range: `(x_min, y_min, z_min, x_max, y_max, z_max)`.
    """

    features: torch.Tensor
    coords: torch.Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    voxel_size: tuple[float, float, float] = (0.0, 0.0, 0.0)
    point_range: tuple[float, ...] = (0.0,) * 6

    def __post_init__(self):
        if self.coords.ndim != 2 or self.coords.shape[1] != 4:
            raise ValueError(f"SparseVoxels.coords must be (V, 4) (batch, z, y, x), got {tuple(self.coords.shape)}")
        if self.features.shape[0] != self.coords.shape[0]:
            raise ValueError(
                f"SparseVoxels has {self.features.shape[0]} feature rows for {self.coords.shape[0]} coords")
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)

    def __len__(self) -> int:
        return self.coords.shape[0]

    @property
    def batch_index(self) -> torch.Tensor:
        return self.coords[:, 0].long()

    def with_features(self, features: torch.Tensor) -> "SparseVoxels":
        return replace(self, features=features)


@dataclass
class Frame:
    """One dataset sample in the pc3d convention."""

    points: PointCloud
    gt_boxes: Boxes3D | None = None
    frame_id: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class Batch:
    """Frames stacked for a model.

    points: `(N, 1 + C)` float32 whose first column is the sample index in the batch.
    """

    points: torch.Tensor
    feature_names: tuple[str, ...]
    batch_size: int
    gt_boxes: list[Boxes3D | None]
    frame_ids: list[str]
    metadata: list[dict]

    def to(self, device) -> "Batch":
        return replace(self, points=self.points.to(device),
                       gt_boxes=[b.to(device) if b is not None else None for b in self.gt_boxes])

    def points_of(self, sample: int) -> torch.Tensor:
        return self.points[self.points[:, 0] == sample, 1:]


def collate(frames: Sequence[Frame]) -> Batch:
    """Stack frames: points get a leading sample-index column; boxes stay a per-sample list."""
    if not frames:
        raise ValueError("collate: got no frames")
    names = frames[0].points.feature_names
    parts = []
    for i, frame in enumerate(frames):
        if frame.points.feature_names != names:
            raise ValueError(
                f"collate: frame {frame.frame_id!r} has features {frame.points.feature_names}, expected {names}")
        pts = frame.points.points
        parts.append(torch.cat([torch.full((pts.shape[0], 1), float(i)), pts], dim=1))
    return Batch(torch.cat(parts, dim=0), names, len(frames), [f.gt_boxes for f in frames],
                 [f.frame_id for f in frames], [f.metadata for f in frames])
