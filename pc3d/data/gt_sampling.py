"""GT-sampling augmentation: paste objects from the ground-truth database into a training scene.

Configured under `train.gt_sampling` the way OpenPCDet's `gt_sampling` is (see configs/synthetic/
flatformer_synthetic_tiny.yaml). For each class a target count is topped up with database objects that
pass the min-points and difficulty filters; a candidate is pasted only if its bird's-eye-view box does
not overlap (IoU > 0) any box already in the scene, original or pasted before it. Scene points inside a
pasted box are removed, and the object's points are added at the place they were recorded (objects keep
their range and viewing angle, so their point pattern stays plausible).

Optionally (`visibility`) the result is limited to what a spinning sensor could see: points are binned by
azimuth and inclination around the sensor, and in a bin a pasted point hides the scene points behind it
and is itself dropped when anything lies in front of it. Pasted boxes left with fewer points than their
class's minimum are dropped.

Randomness comes from a generator seeded by (seed, epoch, frame id), as GlobalAugmentation's, so the
samples do not depend on worker layout or DDP rank and a resumed run pastes exactly the same objects.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pc3d.ops.box_geometry import box_iou_bev, count_points_in_boxes, points_in_boxes
from pc3d.data.gt_database import DBEntry, GTDatabase
from pc3d.structures import Boxes3D, Frame, PointCloud

GT_SAMPLING_KEYS = ("db_info", "sample_groups", "min_points", "exclude_difficulty", "limit_whole_scene",
                    "remove_extra_width", "visibility", "point_features", "box_origin", "disable_after_epoch")
VISIBILITY_KEYS = ("sensor_origin", "azimuth_resolution_deg", "inclination_resolution_deg", "depth_tolerance")
# A separate stream from GlobalAugmentation's (same seed, epoch and frame) so that turning GT sampling
# on does not change which flips and rotations a frame gets.
_STREAM = 0x67745F73


@dataclass(frozen=True)
class Visibility:
    sensor_origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    azimuth_resolution_deg: float = 0.2
    inclination_resolution_deg: float = 0.4
    depth_tolerance: float = 0.3

    def __post_init__(self):
        if len(self.sensor_origin) != 3:
            raise ValueError(f"train.gt_sampling.visibility.sensor_origin needs 3 numbers, got {self.sensor_origin}")
        for name in ("azimuth_resolution_deg", "inclination_resolution_deg"):
            if not getattr(self, name) > 0:
                raise ValueError(f"train.gt_sampling.visibility.{name} must be > 0, got {getattr(self, name)}")
        if self.depth_tolerance < 0:
            raise ValueError(f"train.gt_sampling.visibility.depth_tolerance must be >= 0, got {self.depth_tolerance}")


@dataclass
class GTSampler:
    """Callable `Frame -> Frame`; set `epoch` before each epoch (the trainer does)."""

    database: GTDatabase
    sample_groups: dict[str, int]
    min_points: dict[str, int] = field(default_factory=dict)
    exclude_difficulty: tuple[int, ...] = ()
    limit_whole_scene: bool = True
    remove_extra_width: tuple[float, float, float] = (0.0, 0.0, 0.0)
    visibility: Visibility | None = None
    # The "fade" of PointAugmenting / mmdet3d's DisableObjectSampleHook: the last epochs train on real scenes
    # only, so the detector ends on the true context and object density. None = never.
    disable_after_epoch: int | None = None
    seed: int = 0
    epoch: int = 0

    def __post_init__(self):
        for name, count in self.sample_groups.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"train.gt_sampling.sample_groups.{name} must be an int >= 0, got {count!r}")
            if name not in self.database.entries:
                raise ValueError(f"train.gt_sampling.sample_groups: class {name!r} is not in the database "
                                 f"{self.database.info_path} (it has {self.database.class_names})")
        unknown = set(self.min_points) - set(self.sample_groups)
        if unknown:
            raise ValueError(f"train.gt_sampling.min_points names classes {sorted(unknown)} that are not sampled")
        if self.disable_after_epoch is not None and (isinstance(self.disable_after_epoch, bool) or
                                                     not isinstance(self.disable_after_epoch, int) or
                                                     self.disable_after_epoch < 0):
            raise ValueError(f"train.gt_sampling.disable_after_epoch must be an int >= 0 or null, "
                             f"got {self.disable_after_epoch!r}")
        if len(self.remove_extra_width) != 3:
            raise ValueError(f"train.gt_sampling.remove_extra_width needs 3 numbers, got {self.remove_extra_width}")
        excluded = set(self.exclude_difficulty)
        # The filtered pools, fixed once: sampling draws indices into them.
        self.pools: dict[str, list[DBEntry]] = {
            name: [e for e in self.database.entries[name]
                   if e.num_points >= self.min_points.get(name, 1) and e.difficulty not in excluded]
            for name in self.sample_groups}

    @classmethod
    def from_config(cls, cfg: dict | None, seed: int, dataset_root) -> "GTSampler | None":
        if not cfg:
            return None
        from pc3d.config import require_keys
        require_keys(cfg, GT_SAMPLING_KEYS, "train.gt_sampling", required=("db_info", "sample_groups"))
        path = Path(cfg["db_info"]).expanduser()
        if not path.is_absolute():
            path = Path(dataset_root) / path
        if not path.is_file():
            raise FileNotFoundError(
                f"train.gt_sampling.db_info: {path} does not exist — build it with "
                f"tools/create_data.py <dataset> ... --gt-database")
        database = GTDatabase(path, point_features=cfg.get("point_features"),
                              box_origin=cfg.get("box_origin", "center"))
        vis = cfg.get("visibility")
        if vis:
            require_keys(vis, VISIBILITY_KEYS, "train.gt_sampling.visibility")
            vis = Visibility(**{k: tuple(v) if isinstance(v, list) else v for k, v in vis.items()})
        return cls(database, dict(cfg["sample_groups"]), dict(cfg.get("min_points") or {}),
                   tuple(cfg.get("exclude_difficulty") or ()), bool(cfg.get("limit_whole_scene", True)),
                   tuple(cfg.get("remove_extra_width") or (0.0, 0.0, 0.0)), vis or None,
                   cfg.get("disable_after_epoch"), seed)

    # -- sampling --------------------------------------------------------------------------------
    def choose(self, frame: Frame) -> list[DBEntry]:
        """The database entries pasted into `frame` (deterministic in seed, epoch and frame id)."""
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(frame.frame_id.encode()), _STREAM])
        boxes = frame.gt_boxes
        names = boxes.names if boxes is not None else []
        placed = boxes.boxes[:, :7].numpy().astype(np.float32) if boxes is not None and len(boxes) else np.zeros((0, 7), np.float32)
        chosen: list[DBEntry] = []
        for name, target in self.sample_groups.items():
            want = target - (names.count(name) if self.limit_whole_scene else 0)
            pool = self.pools[name]
            if want <= 0 or not pool:
                continue
            picks = rng.choice(len(pool), size=min(want, len(pool)), replace=False)
            source = frame.frame_id.split("#")[0]  # CBGS copies are "<id>#<k>": never paste a frame into itself
            candidates = [pool[i] for i in picks if pool[i].sample_idx != source]
            if not candidates:
                continue
            cand = np.stack([e.box for e in candidates])
            # Greedy in draw order: a candidate is kept if it overlaps nothing placed so far.
            hits_scene = box_iou_bev(cand, placed).max(axis=1) > 0 if len(placed) else np.zeros(len(cand), bool)
            mutual = box_iou_bev(cand, cand) > 0
            kept: list[int] = []
            for i in range(len(cand)):
                if not hits_scene[i] and not any(mutual[i, j] for j in kept):
                    kept.append(i)
            chosen.extend(candidates[i] for i in kept)
            if kept:
                placed = np.concatenate([placed, cand[kept]])
        return chosen

    @property
    def active(self) -> bool:
        return self.disable_after_epoch is None or self.epoch < self.disable_after_epoch

    def __call__(self, frame: Frame) -> Frame:
        if not self.active:
            return frame
        entries = self.choose(frame)
        if not entries:
            return frame
        features = frame.points.feature_names
        objects = [self.database.load(e, features) for e in entries]
        scene = frame.points.points.numpy()
        new_boxes = np.stack([o.box for o in objects]).astype(np.float32)
        enlarged = new_boxes.copy()
        enlarged[:, 3:6] += np.asarray(self.remove_extra_width, np.float32)
        scene = scene[~points_in_boxes(scene[:, :3], enlarged).any(axis=1)]
        pasted = [o.points.astype(np.float32) for o in objects]
        keep_box = np.ones(len(objects), bool)
        if self.visibility is not None:
            scene, pasted = _limit_to_visible(scene, pasted, self.visibility)
            counts = np.array([len(p) for p in pasted])
            keep_box = counts >= np.array([max(1, self.min_points.get(o.name, 1)) for o in objects])
            pasted = [p for p, k in zip(pasted, keep_box) if k]
        points = np.concatenate([scene, *pasted]) if pasted else scene
        boxes = _merged_boxes(frame.gt_boxes, [o for o, k in zip(objects, keep_box) if k], points)
        return replace(frame, points=PointCloud(torch.from_numpy(np.ascontiguousarray(points)), features),
                       gt_boxes=boxes)


def _merged_boxes(old: Boxes3D | None, objects, points: np.ndarray) -> Boxes3D | None:
    if not objects:  # every candidate was hidden: the scene's own boxes may still have lost points behind them
        if old.num_points is None or not len(old):
            return old
        counts = count_points_in_boxes(points[:, :3], old.boxes[:, :7].numpy()).astype(np.int64)
        return replace(old, num_points=torch.from_numpy(counts))
    class_names = old.class_names
    missing = sorted({o.name for o in objects} - set(class_names))
    if missing:
        raise ValueError(f"GT sampling pasted classes {missing} that the dataset's class_names {list(class_names)} lack")
    box = np.stack([o.box for o in objects]).astype(np.float32)
    if old.has_velocity:  # a database without velocities (not nuScenes') pastes objects standing still
        velocity = [o.velocity if o.velocity is not None else np.zeros(2, np.float32) for o in objects]
        box = np.concatenate([box, np.stack(velocity).astype(np.float32)], axis=1)
    boxes = torch.cat([old.boxes, torch.from_numpy(box)])
    labels = torch.cat([old.labels, torch.tensor([class_names.index(o.name) for o in objects])])
    difficulty = None
    if old.difficulty is not None:
        difficulty = torch.cat([old.difficulty, torch.tensor([o.difficulty for o in objects])])
    num_points = None
    if old.num_points is not None:
        # recounted on the final cloud: pasting removes points and visibility may hide some
        num_points = torch.from_numpy(count_points_in_boxes(points[:, :3], boxes[:, :7].numpy()).astype(np.int64))
    return Boxes3D(boxes, labels, class_names, None, difficulty, num_points)


def _spherical_cells(points: np.ndarray, vis: Visibility) -> tuple[np.ndarray, np.ndarray]:
    rel = points[:, :3].astype(np.float64) - np.asarray(vis.sensor_origin)
    rng = np.linalg.norm(rel, axis=1)
    az = np.arctan2(rel[:, 1], rel[:, 0])
    inc = np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1]))
    ia = np.floor((az + math.pi) / math.radians(vis.azimuth_resolution_deg)).astype(np.int64)
    ii = np.floor((inc + math.pi / 2) / math.radians(vis.inclination_resolution_deg)).astype(np.int64)
    return ia * 1_000_003 + ii, rng


def _limit_to_visible(scene: np.ndarray, pasted: list[np.ndarray], vis: Visibility):
    """Drop what pasted objects hide and the pasted points that something else hides (per angular bin)."""
    sizes = [len(p) for p in pasted]
    obj = np.concatenate(pasted) if pasted else np.zeros((0, scene.shape[1]), np.float32)
    cell_s, r_s = _spherical_cells(scene, vis)
    cell_o, r_o = _spherical_cells(obj, vis)
    cells, inverse = np.unique(np.concatenate([cell_s, cell_o]), return_inverse=True)
    inv_s, inv_o = inverse[:len(cell_s)], inverse[len(cell_s):]
    near_s = np.full(len(cells), np.inf)
    near_o = np.full(len(cells), np.inf)
    np.minimum.at(near_s, inv_s, r_s)
    np.minimum.at(near_o, inv_o, r_o)
    keep_s = r_s <= near_o[inv_s] + vis.depth_tolerance
    keep_o = r_o <= np.minimum(near_s, near_o)[inv_o] + vis.depth_tolerance
    out, start = [], 0
    for n in sizes:
        out.append(obj[start:start + n][keep_o[start:start + n]])
        start += n
    return scene[keep_s], out
