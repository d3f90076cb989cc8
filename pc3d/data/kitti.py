"""KITTI 3D object layout: velodyne scans, calib and label_2, converted into the pc3d convention.

Layout: `<root>/training/{velodyne/<id>.bin, calib/<id>.txt, label_2/<id>.txt}` and optionally
`<root>/ImageSets/<split>.txt` listing frame ids (without it, every scan of `training/` is the split).

label_2 boxes are in the rectified camera frame (x right, y down, z forward) with the *bottom* centre
as origin and `rotation_y` about the camera's y axis. pc3d boxes are in the Velodyne frame with the
centre as origin: `centre_velo = Tr_velo_to_cam^-1 R0_rect^-1 (x, y - h/2, z)` and
`heading = -rotation_y - pi/2` (camera yaw is clockwise seen from above, measured from the camera x
axis, which is the Velodyne -y axis).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pc3d.data.class_map import resolve_class_map
from pc3d.io.points import read_points
from pc3d.structures import Boxes3D, Frame, PointCloud, check_ground_truth

KITTI_FEATURES = ("x", "y", "z", "intensity")
# every object type of KITTI's label_2 files (DontCare marks unlabelled regions, never a class)
KITTI_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
# image size used to clip projected boxes when the frame's image_2 PNG is absent (most KITTI images)
DEFAULT_IMAGE_SHAPE = (375, 1242)


# The KITTI types the official metric scores (each has an overlap threshold in pc3d.evaluation.kitti_metric).
KITTI_EVAL_TYPES = ("Car", "Pedestrian", "Cyclist", "Van", "Person_sitting", "Truck")


@dataclass
class KittiFrameBoxes:
    """One frame of ground truth or detections in KITTI label conventions.

    names: (M,) class names; boxes_camera: (M, 7) `x, y, z (bottom centre), h, w, l, ry`; bbox: (M, 4)
    image box `x1, y1, x2, y2` in pixels; truncated / occluded: ground-truth only (zeros for detections);
    scores: detections only.
    """

    names: Sequence[str]
    boxes_camera: np.ndarray
    bbox: np.ndarray
    truncated: np.ndarray | None = None
    occluded: np.ndarray | None = None
    scores: np.ndarray | None = None
    frame_id: str = ""
    _lower: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.names = tuple(str(n) for n in self.names)
        m = len(self.names)
        self.boxes_camera = np.asarray(self.boxes_camera, dtype=np.float64).reshape(-1, 7)
        self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4)
        self.truncated = np.zeros(m) if self.truncated is None else np.asarray(self.truncated, dtype=np.float64)
        self.occluded = (np.zeros(m, dtype=np.int64) if self.occluded is None
                         else np.asarray(self.occluded, dtype=np.int64))
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        for name in ("boxes_camera", "bbox", "truncated", "occluded", "scores"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != m:
                raise ValueError(f"KittiFrameBoxes {self.frame_id!r}: {name} has {value.shape[0]} rows for {m} names")
        self._lower = np.array([n.lower() for n in self.names], dtype=object)
        # a NaN box or a size <= 0 is refused, never dropped (docs/conventions.md "Ground truth");
        # DontCare rows carry the format's -1 / -1000 placeholders
        real = self._lower != "dontcare"
        sizes_ok = (self.boxes_camera[:, 3:6] > 0).all(axis=1)
        bad = np.flatnonzero(real & ~(np.isfinite(self.boxes_camera).all(axis=1) & sizes_ok))
        if bad.size:
            what = "detection" if self.scores is not None else "ground truth"
            raise ValueError(f"{what} of frame {self.frame_id!r}: box {bad[0]} {self.boxes_camera[bad[0]].round(4).tolist()} "
                             "has a NaN or inf value or a size (h, w, l) that is not > 0")

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class KittiCalib:
    P2: np.ndarray  # (3, 4)
    R0_rect: np.ndarray  # (3, 3)
    Tr_velo_to_cam: np.ndarray  # (3, 4)

    @classmethod
    def from_file(cls, path) -> "KittiCalib":
        path = Path(path)
        values = {}
        for line in path.read_text().splitlines():
            if ":" in line:
                key, rest = line.split(":", 1)
                values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        try:
            return cls(values["P2"].reshape(3, 4), values["R0_rect"].reshape(3, 3), values["Tr_velo_to_cam"].reshape(3, 4))
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a KITTI calib file (need P2, R0_rect, Tr_velo_to_cam): {err}") from err

    def velo_to_rect(self) -> np.ndarray:
        """4x4 transform from the Velodyne frame to the rectified camera frame."""
        velo_to_cam = np.eye(4)
        velo_to_cam[:3] = self.Tr_velo_to_cam
        rect = np.eye(4)
        rect[:3, :3] = self.R0_rect
        return rect @ velo_to_cam

    def rect_to_velo_points(self, xyz: np.ndarray) -> np.ndarray:
        homo = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1)
        return (np.linalg.inv(self.velo_to_rect()) @ homo.T).T[:, :3]


@dataclass
class KittiObject:
    name: str
    truncated: float
    occluded: int
    box_camera: np.ndarray  # (7,) x, y, z (bottom centre, rect cam), h, w, l, ry
    bbox: np.ndarray | None = None  # (4,) image box x1, y1, x2, y2 (pixels)


def read_labels(path) -> list[KittiObject]:
    path = Path(path)
    objects = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 15:
            raise ValueError(f"{path}:{n}: a KITTI label line has 15 fields, got {len(parts)}")
        try:
            v = [float(x) for x in parts[1:15]]
        except ValueError as err:
            raise ValueError(f"{path}:{n}: a KITTI label line holds numbers after the type ({err})") from err
        h, w, l, x, y, z, ry = v[7], v[8], v[9], v[10], v[11], v[12], v[13]
        box = np.array([x, y, z, h, w, l, ry])
        if parts[0] != "DontCare":  # DontCare rows carry -1 / -1000 placeholders by definition
            # reject (never drop) a NaN / non-positive-size box: docs/conventions.md "Ground truth"
            check_ground_truth(box[None, [0, 1, 2, 5, 4, 3, 6]], f"{path} (line {n})")
        objects.append(KittiObject(parts[0], v[0], int(v[1]), box, np.array(v[3:7])))
    return objects


def lidar_boxes_to_camera(boxes: np.ndarray, calib: KittiCalib) -> np.ndarray:
    """Inverse of `camera_boxes_to_lidar`: (M, 7+) pc3d Velodyne boxes -> (M, 7) `x, y, z (bottom), h, w, l, ry`."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(boxes), -1)[:, :7]
    homo = np.concatenate([boxes[:, :3], np.ones((len(boxes), 1))], axis=1)
    centre = (calib.velo_to_rect() @ homo.T).T[:, :3]
    centre[:, 1] += boxes[:, 5] / 2  # centre -> bottom (camera y points down)
    ry = -boxes[:, 6] - math.pi / 2
    ry = (ry + math.pi) % (2 * math.pi) - math.pi
    return np.concatenate([centre, boxes[:, [5, 4, 3]], ry[:, None]], axis=1)


def project_to_image(box_camera: np.ndarray, calib: KittiCalib, image_shape=DEFAULT_IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """2D image boxes `(M, 4)` x1, y1, x2, y2 of camera boxes (their 8 corners through P2, clipped to the
    image) and a mask of the boxes that are in view (every corner in front of the camera and a non-empty
    clipped box), the detections a KITTI evaluation can see (mmdet3d drops the others the same way)."""
    box_camera = np.asarray(box_camera, dtype=np.float64).reshape(-1, 7)
    x, y, z, h, w, l, ry = box_camera.T
    cx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) / 2
    cz = np.array([1, -1, -1, 1, 1, -1, -1, 1]) / 2
    cy = np.array([0, 0, 0, 0, -1, -1, -1, -1])  # bottom face, then top (camera y down)
    c, s = np.cos(ry)[:, None], np.sin(ry)[:, None]
    px = x[:, None] + c * (l[:, None] * cx) + s * (w[:, None] * cz)
    pz = z[:, None] - s * (l[:, None] * cx) + c * (w[:, None] * cz)
    py = y[:, None] + h[:, None] * cy
    corners = np.stack([px, py, pz, np.ones_like(px)], axis=-1)  # (M, 8, 4)
    uvw = corners @ calib.P2.T
    in_front = (uvw[..., 2] > 1e-3).all(axis=1)
    depth = np.where(np.abs(uvw[..., 2]) < 1e-9, 1e-9, uvw[..., 2])
    u, v = uvw[..., 0] / depth, uvw[..., 1] / depth
    height, width = image_shape
    bbox = np.stack([np.clip(u.min(1), 0, width - 1), np.clip(v.min(1), 0, height - 1),
                     np.clip(u.max(1), 0, width - 1), np.clip(v.max(1), 0, height - 1)], axis=1)
    visible = in_front & (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])
    return bbox, visible


def image_shape_of(png_path) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, or the usual KITTI size when the image is absent."""
    try:
        with open(png_path, "rb") as f:
            head = f.read(24)
    except OSError:
        return DEFAULT_IMAGE_SHAPE
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return DEFAULT_IMAGE_SHAPE
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def camera_boxes_to_lidar(box_camera: np.ndarray, calib: KittiCalib) -> np.ndarray:
    """(M, 7) [x, y, z (bottom), h, w, l, ry] rect-camera boxes -> (M, 7) pc3d boxes in the Velodyne frame."""
    box_camera = np.asarray(box_camera, dtype=np.float64).reshape(-1, 7)
    centre = box_camera[:, :3].copy()
    centre[:, 1] -= box_camera[:, 3] / 2  # bottom -> centre (camera y points down)
    centre_velo = calib.rect_to_velo_points(centre)
    heading = -box_camera[:, 6] - math.pi / 2
    heading = (heading + math.pi) % (2 * math.pi) - math.pi
    dims = box_camera[:, [5, 4, 3]]  # l, w, h -> dx, dy, dz
    return np.concatenate([centre_velo, dims, heading[:, None]], axis=1).astype(np.float32)


class KittiDataset(torch.utils.data.Dataset):
    """KITTI object frames as `Frame`s; types outside `class_names` (after `class_map`) and DontCare are dropped.

    `class_map` renames KITTI types to config classes (`pc3d.data.class_map`); a config class that matches
    no KITTI type is an error.
    """

    def __init__(self, root, split: str, class_names: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
                 point_features: Sequence[str] = KITTI_FEATURES, transform: Callable[[Frame], Frame] | None = None,
                 class_map: dict | None = None):
        self.root = Path(root)
        self.base = self.root / "training"
        if not (self.base / "velodyne").is_dir():
            raise FileNotFoundError(f"KITTI root {self.root} has no training/velodyne folder")
        split_file = self.root / "ImageSets" / f"{split}.txt"
        if split_file.is_file():
            self.frame_ids = [s.strip() for s in split_file.read_text().split() if s.strip()]
        else:
            self.frame_ids = sorted(p.stem for p in (self.base / "velodyne").glob("*.bin"))
        self.class_names = tuple(class_names)
        self.kitti_to_class = resolve_class_map(self.class_names, class_map, KITTI_CLASSES, "KITTI")
        self.point_features = tuple(point_features)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.frame_ids)

    def boxes_of(self, index: int) -> Boxes3D:
        fid = self.frame_ids[index]
        label_path = self.base / "label_2" / f"{fid}.txt"
        if not label_path.is_file():
            return Boxes3D.empty(self.class_names)
        objects = [o for o in read_labels(label_path) if o.name in self.kitti_to_class]
        if not objects:
            return Boxes3D.empty(self.class_names)
        calib = KittiCalib.from_file(self.base / "calib" / f"{fid}.txt")
        boxes = camera_boxes_to_lidar(np.stack([o.box_camera for o in objects]), calib)
        labels = [self.class_names.index(self.kitti_to_class[o.name]) for o in objects]
        return Boxes3D(boxes, labels, self.class_names)

    # -- the official KITTI metric works on label_2 data: camera boxes, image boxes, every object ----------
    @property
    def kitti_eval_classes(self) -> tuple[str, ...]:
        """The KITTI types scored by the KITTI metric: those of Car / Pedestrian / Cyclist (and Van,
        Person_sitting, Truck) that some config class maps from."""
        return tuple(k for k in KITTI_EVAL_TYPES if k in self.kitti_to_class)

    def kitti_ground_truth(self, index: int):
        """Every label_2 object of frame `index` (DontCare and unevaluated types included, as the devkit reads them)."""
        fid = self.frame_ids[index]
        label_path = self.base / "label_2" / f"{fid}.txt"
        objects = read_labels(label_path) if label_path.is_file() else []
        return KittiFrameBoxes([o.name for o in objects], np.array([o.box_camera for o in objects]).reshape(-1, 7),
                               np.array([o.bbox for o in objects]).reshape(-1, 4), [o.truncated for o in objects],
                               [o.occluded for o in objects], None, fid)

    def kitti_detections(self, index: int, predictions: Boxes3D):
        """Predictions (Velodyne frame, config class names) as KITTI detections: camera boxes, image
        boxes projected through P2, class names mapped back to KITTI types. Boxes outside the camera
        view are left out (KITTI labels only cover the camera's field of view)."""
        fid = self.frame_ids[index]
        to_kitti = {}
        for kitti_name, cls in self.kitti_to_class.items():
            to_kitti.setdefault(cls, kitti_name)  # first KITTI type mapped to a class names its detections
        names = [to_kitti.get(n, n) for n in predictions.names]
        if predictions.scores is None and len(predictions):
            raise ValueError(f"KITTI frame {fid}: predictions have no scores")
        scores = predictions.scores.detach().cpu().numpy() if predictions.scores is not None else np.zeros(0)
        if not len(predictions):
            return KittiFrameBoxes([], np.zeros((0, 7)), np.zeros((0, 4)), scores=np.zeros(0), frame_id=fid)
        calib = KittiCalib.from_file(self.base / "calib" / f"{fid}.txt")
        box_camera = lidar_boxes_to_camera(predictions.boxes.detach().cpu().numpy(), calib)
        bbox, visible = project_to_image(box_camera, calib, image_shape_of(self.base / "image_2" / f"{fid}.png"))
        keep = np.flatnonzero(visible)
        return KittiFrameBoxes([names[i] for i in keep], box_camera[keep], bbox[keep], scores=scores[keep], frame_id=fid)

    def __getitem__(self, index: int) -> Frame:
        fid = self.frame_ids[index]
        points = read_points(self.base / "velodyne" / f"{fid}.bin", dim=4)
        cloud = PointCloud(points, KITTI_FEATURES).select_features(self.point_features)
        frame = Frame(cloud, self.boxes_of(index), fid, {"dataset": "kitti"})
        return self.transform(frame) if self.transform is not None else frame
