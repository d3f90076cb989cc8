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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pc3d.io.points import read_points
from pc3d.structures import Boxes3D, Frame, PointCloud

KITTI_FEATURES = ("x", "y", "z", "intensity")


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


def read_labels(path) -> list[KittiObject]:
    path = Path(path)
    objects = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 15:
            raise ValueError(f"{path}:{n}: a KITTI label line has 15 fields, got {len(parts)}")
        v = [float(x) for x in parts[1:15]]
        h, w, l, x, y, z, ry = v[7], v[8], v[9], v[10], v[11], v[12], v[13]
        objects.append(KittiObject(parts[0], v[0], int(v[1]), np.array([x, y, z, h, w, l, ry])))
    return objects


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
    """KITTI object frames as `Frame`s; classes outside `class_names` (and DontCare) are dropped."""

    def __init__(self, root, split: str, class_names: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
                 point_features: Sequence[str] = KITTI_FEATURES, transform: Callable[[Frame], Frame] | None = None):
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
        self.point_features = tuple(point_features)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.frame_ids)

    def boxes_of(self, index: int) -> Boxes3D:
        fid = self.frame_ids[index]
        label_path = self.base / "label_2" / f"{fid}.txt"
        if not label_path.is_file():
            return Boxes3D.empty(self.class_names)
        objects = [o for o in read_labels(label_path) if o.name in self.class_names]
        if not objects:
            return Boxes3D.empty(self.class_names)
        calib = KittiCalib.from_file(self.base / "calib" / f"{fid}.txt")
        boxes = camera_boxes_to_lidar(np.stack([o.box_camera for o in objects]), calib)
        labels = [self.class_names.index(o.name) for o in objects]
        return Boxes3D(boxes, labels, self.class_names)

    def __getitem__(self, index: int) -> Frame:
        fid = self.frame_ids[index]
        points = read_points(self.base / "velodyne" / f"{fid}.bin", dim=4)
        cloud = PointCloud(points, KITTI_FEATURES).select_features(self.point_features)
        frame = Frame(cloud, self.boxes_of(index), fid, {"dataset": "kitti"})
        return self.transform(frame) if self.transform is not None else frame
