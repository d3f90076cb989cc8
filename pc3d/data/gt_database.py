"""Ground-truth database: every labelled object's points, cut out of its scan, for GT-sampling augmentation.

On-disk layout (the idea of OpenPCDet's and mmdetection3d's databases, so a user recognises it):

    <root>/<prefix>_dbinfos_<split>.pkl      {class name: [entry dict, ...]}
    <root>/<db_dir>/<frame>_<class>_<i>.bin   float32 (n, C) raw, the object's points

Entry dicts hold only builtins and numpy (read back through pc3d.io.safe_pickle, never plain pickle):
    name, path (relative to <root>), sample_idx (frame id), gt_idx, box3d_lidar (7,) float32,
    num_points_in_gt, difficulty, and in pc3d-written files also point_features and box_origin.

Points are stored relative to the box's reference point, not rotated (as both toolkits do): the box
centre for pc3d and OpenPCDet (`box_origin: center`), the bottom centre for mmdetection3d's files
(`box_origin: bottom`, whose box z is the bottom too). `GTDatabase` converts either to pc3d's
centre-z boxes and absolute points at read time.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pc3d.ops.box_geometry import points_in_boxes
from pc3d.io.safe_pickle import safe_load

BOX_ORIGINS = ("center", "bottom")


@dataclass(frozen=True)
class GTObject:
    """One database object ready to paste: absolute points (pc3d features) and a pc3d box."""

    name: str
    box: np.ndarray          # (7,) float32, centre z
    points: np.ndarray       # (n, C) float32, absolute coordinates
    difficulty: int
    num_points: int
    source: str              # frame id it was cut from
    velocity: np.ndarray | None = None   # (2,) vx, vy when the database has them (nuScenes)


@dataclass(frozen=True)
class DBEntry:
    name: str
    path: str
    box: np.ndarray          # (7,) float32, pc3d convention (centre z)
    num_points: int
    difficulty: int
    sample_idx: str
    point_features: tuple[str, ...]
    box_origin: str
    velocity: np.ndarray | None = None


def dbinfos_name(prefix: str, split: str) -> str:
    return f"{prefix}_dbinfos_{split}.pkl"


def write_gt_database(frames: Iterable, root, prefix: str, split: str, point_features: Sequence[str],
                      db_dir: str = "gt_database", class_names: Sequence[str] | None = None) -> Path:
    """Cut every box's points out of `frames` (an iterable of `pc3d.structures.Frame`, un-augmented).

    Boxes with zero points are kept in the infos (num_points_in_gt 0) so that the min-points filter,
    not the writer, decides what is sampled. Returns the path of the dbinfos file.
    """
    root = Path(root)
    (root / db_dir).mkdir(parents=True, exist_ok=True)
    features = tuple(point_features)
    db: dict[str, list[dict]] = {}
    for frame in frames:
        boxes = frame.gt_boxes
        if boxes is None or len(boxes) == 0:
            continue
        if frame.points.feature_names != features:
            raise ValueError(f"frame {frame.frame_id!r}: point features {frame.points.feature_names}, "
                             f"expected {features}")
        pts = frame.points.points.numpy()
        box_array = boxes.boxes.numpy().astype(np.float32)   # (M, 7), or (M, 9) with velocity
        inside = points_in_boxes(pts[:, :3], box_array[:, :7])
        difficulty = boxes.difficulty.tolist() if boxes.difficulty is not None else [0] * len(boxes)
        for i, name in enumerate(boxes.names):
            if class_names is not None and name not in class_names:
                continue
            obj = pts[inside[:, i]].copy()
            obj[:, :3] -= box_array[i, :3]
            rel = f"{db_dir}/{frame.frame_id}_{name}_{i}.bin"
            obj.astype(np.float32).tofile(root / rel)
            db.setdefault(name, []).append({
                "name": name, "path": rel, "sample_idx": str(frame.frame_id), "gt_idx": i,
                "box3d_lidar": box_array[i].copy(), "num_points_in_gt": int(len(obj)),
                "difficulty": int(difficulty[i]), "point_features": features, "box_origin": "center"})
    path = root / dbinfos_name(prefix, split)
    tmp = path.with_suffix(".pkl.tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(db, handle, protocol=4)
    tmp.replace(path)
    return path


class GTDatabase:
    """A dbinfos file and its object files, read through the restricted unpickler.

    `point_features` names the columns of the object files when entries do not say (OpenPCDet's and
    mmdet3d's files do not: Waymo's are x y z intensity elongation, KITTI's x y z intensity); pc3d-written
    entries carry their own. `box_origin` likewise defaults for files that do not record it.
    """

    def __init__(self, info_path, root=None, point_features: Sequence[str] | None = None,
                 box_origin: str = "center"):
        self.info_path = Path(info_path)
        self.root = Path(root) if root is not None else self.info_path.parent
        if box_origin not in BOX_ORIGINS:
            raise ValueError(f"box_origin must be one of {BOX_ORIGINS}, got {box_origin!r}")
        raw = safe_load(self.info_path)
        if not isinstance(raw, dict):
            raise ValueError(f"{self.info_path}: a dbinfos file is a dict of class name -> entries, "
                             f"got {type(raw).__name__}")
        self.entries: dict[str, list[DBEntry]] = {}
        for name, items in raw.items():
            if not isinstance(items, list):
                raise ValueError(f"{self.info_path}: entries of class {name!r} are not a list")
            self.entries[str(name)] = [self._entry(str(name), k, item, point_features, box_origin)
                                       for k, item in enumerate(items)]

    def _entry(self, name: str, k: int, item, point_features, box_origin) -> DBEntry:
        where = f"{self.info_path}: entry {k} of {name!r}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not a dict")
        for key in ("path", "box3d_lidar", "num_points_in_gt"):
            if key not in item:
                raise ValueError(f"{where} has no '{key}'")
        box = np.asarray(item["box3d_lidar"], dtype=np.float32).reshape(-1)
        if box.shape[0] < 7 or not np.all(np.isfinite(box[:7])):
            raise ValueError(f"{where}: box3d_lidar must hold 7 finite numbers, got {box.tolist()}")
        origin = item.get("box_origin", box_origin)
        if origin not in BOX_ORIGINS:
            raise ValueError(f"{where}: box_origin {origin!r} is not one of {BOX_ORIGINS}")
        features = tuple(item.get("point_features") or point_features or ())
        if len(features) < 3:
            raise ValueError(f"{where}: the point features of the object files are unknown; pass point_features")
        velocity = box[7:9].copy() if box.shape[0] >= 9 and np.all(np.isfinite(box[7:9])) else None
        box = box[:7].copy()
        if origin == "bottom":
            box[2] += box[5] / 2
        return DBEntry(name, str(item["path"]), box, int(item["num_points_in_gt"]),
                       int(item.get("difficulty", 0)), str(item.get("sample_idx", item.get("image_idx", ""))),
                       features, origin, velocity)

    @property
    def class_names(self) -> list[str]:
        return list(self.entries)

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def load(self, entry: DBEntry, features: Sequence[str] | None = None) -> GTObject:
        """The object's absolute points (columns `features`, default the file's) and its pc3d box."""
        path = self.root / entry.path
        try:
            raw = np.fromfile(path, dtype=np.float32)
        except OSError as err:
            raise ValueError(f"{path}: cannot read database object ({err})") from err
        width = len(entry.point_features)
        if raw.size % width:
            raise ValueError(f"{path}: {raw.size} floats is not a whole number of {width}-feature points")
        pts = raw.reshape(-1, width).copy()
        if len(pts) != entry.num_points:
            raise ValueError(f"{path}: {len(pts)} points but its dbinfos entry says {entry.num_points}")
        origin = entry.box[:3].copy()
        if entry.box_origin == "bottom":
            origin[2] -= entry.box[5] / 2
        pts[:, :3] += origin
        if features is not None:
            missing = [f for f in features if f not in entry.point_features]
            if missing:
                raise ValueError(f"{path}: features {missing} requested, the database has {list(entry.point_features)}")
            pts = pts[:, [entry.point_features.index(f) for f in features]]
        return GTObject(entry.name, entry.box.copy(), pts, entry.difficulty, entry.num_points, entry.sample_idx,
                        entry.velocity)


def write_dataset_gt_database(dataset, root, prefix: str, split: str | None = None, progress: bool = False) -> Path:
    """The database of a pc3d dataset object (un-augmented frames, all its classes), beside its infos."""
    from tqdm import tqdm

    frames = (dataset[i] for i in tqdm(range(len(dataset)), desc=f"gt database {prefix}", disable=not progress))
    return write_gt_database(frames, root, prefix, split or dataset.split, dataset.point_features,
                             class_names=dataset.class_names)


# -- tools/create_data.py {kitti, nuscenes, lyft} --root DIR --split S --gt-database ------------------------
DATASET_PREFIX = {"kitti": "kitti", "nuscenes": "nuscenes", "lyft": "lyft"}


def write_split_gt_database(kind: str, root, split: str = "train", version: str | None = None, sweeps: int = 10,
                            classes=None, out=None, progress: bool = True) -> Path:
    """The GT database of a KITTI / nuScenes / Lyft split (`kind`), written to `out` (default `root`).
    `classes` default to the loader's (nuScenes: its 10 classes); Lyft needs them named."""
    root = Path(root)
    if kind not in DATASET_PREFIX:
        raise ValueError(f"kind: expected one of {sorted(DATASET_PREFIX)}, got {kind!r}")
    if not root.exists():
        raise SystemExit(f"--root {root} does not exist")
    if kind == "kitti":
        from pc3d.data.kitti import KittiDataset
        kw = {"class_names": tuple(classes)} if classes else {}
        dataset = KittiDataset(root, split, **kw)
    else:
        from pc3d.data.nuscenes import NUSCENES_CLASSES, NuScenesDataset
        classes = tuple(classes) if classes else (NUSCENES_CLASSES if kind == "nuscenes" else None)
        if classes is None:
            raise SystemExit("lyft: name the classes to keep with --classes (Lyft's category names are its own)")
        dataset = NuScenesDataset(root, split, classes, sweeps=sweeps, version=version)
    return write_dataset_gt_database(dataset, out or root, DATASET_PREFIX[kind], split, progress=progress)
