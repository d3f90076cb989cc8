"""One Waymo `dataset_pb2.Frame` -> pc3d points and `Boxes3D` (vehicle frame, docs/conventions.md).

Points: every lidar, first and (by default) second return, as the official
`frame_utils.convert_range_image_to_point_cloud` computes them (see `range_image.py`), with
per-point intensity, elongation and the no-label-zone flag.
Labels: `laser_labels` -> boxes `(x, y, z, length, width, height, heading)` (Waymo boxes are
already centre-z and heading CCW from +x), classes Vehicle / Pedestrian / Cyclist (+ Sign with
`include_sign=True`), difficulty = the label's `detection_difficulty_level` raised to LEVEL_2 when
`num_lidar_points_in_box <= 5`, and `num_points`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pc3d.data.waymo.range_image import (beam_inclinations_for_rows, decompress_matrix, pixel_pose_matrices,
                                         range_image_to_points)
from pc3d.structures import Boxes3D

CLASS_NAMES = ("Vehicle", "Pedestrian", "Cyclist")
CLASS_NAMES_WITH_SIGN = ("Vehicle", "Pedestrian", "Cyclist", "Sign")
# label_pb2.Label.Type values
WAYMO_TYPE_TO_NAME = {1: "Vehicle", 2: "Pedestrian", 3: "Sign", 4: "Cyclist"}
NAME_TO_WAYMO_TYPE = {name: value for value, name in WAYMO_TYPE_TO_NAME.items()}
LEVEL_2_MAX_POINTS = 5
POINT_FEATURES = ("x", "y", "z", "intensity", "elongation")


def parse_frame(data: bytes):
    """Serialized bytes (one TFRecord payload) -> `dataset_pb2.Frame`; a clear error if not a Frame."""
    from google.protobuf.message import DecodeError
    from waymo_open_dataset import dataset_pb2

    frame = dataset_pb2.Frame()
    try:
        frame.ParseFromString(data)
    except DecodeError as err:
        raise ValueError(f"record is not a waymo_open_dataset.Frame proto ({err})") from err
    return frame


def frame_id(frame) -> str:
    """`<context name>_<timestamp_micros>`: unique per frame over the dataset."""
    return f"{frame.context.name}_{frame.timestamp_micros}"


def wrap_angle(angle):
    """Wrap radians to [-pi, pi)."""
    return (np.asarray(angle, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def squash_intensity(intensity: np.ndarray) -> np.ndarray:
    """Waymo raw intensity is unbounded (retro-reflectors reach thousands); tanh maps it into [0, 1)
    as OpenPCDet/DSVT do, so that a model sees a bounded feature."""
    return np.tanh(intensity)


@dataclass
class LidarPoints:
    """Points of a frame: `xyz (N, 3)` vehicle frame, `intensity`, `elongation` (raw), `in_nlz`
    bool, `laser (N,)` laser name (1=TOP .. 5=REAR), `return_index (N,)` 0 or 1."""

    xyz: np.ndarray
    intensity: np.ndarray
    elongation: np.ndarray
    in_nlz: np.ndarray
    laser: np.ndarray
    return_index: np.ndarray

    def __len__(self) -> int:
        return self.xyz.shape[0]

    def as_array(self, drop_nlz: bool = True, tanh_intensity: bool = True) -> np.ndarray:
        """`(N, 5)` float32 x, y, z, intensity, elongation (the pc3d Waymo point layout)."""
        keep = ~self.in_nlz if drop_nlz else np.ones(len(self), dtype=bool)
        intensity = squash_intensity(self.intensity[keep]) if tanh_intensity else self.intensity[keep]
        return np.concatenate([self.xyz[keep], intensity[:, None], self.elongation[keep, None]], axis=1).astype(np.float32)


def range_images_of(frame) -> tuple[dict, np.ndarray | None]:
    """`({laser_name: [return1 (H, W, 4), return2 (H, W, 4) or None]}, top_pose (H, W, 6) or None)`."""
    images: dict[int, list] = {}
    top_pose = None
    for laser in frame.lasers:
        returns = []
        for ri in (laser.ri_return1, laser.ri_return2):
            returns.append(decompress_matrix(ri.range_image_compressed) if len(ri.range_image_compressed) else None)
        images[laser.name] = returns
        if laser.name == 1 and len(laser.ri_return1.range_image_pose_compressed):
            top_pose = decompress_matrix(laser.ri_return1.range_image_pose_compressed)
    return images, top_pose


def extract_points(frame, returns: tuple[int, ...] = (0, 1)) -> LidarPoints:
    """All lidar points of `frame` in the vehicle frame.

    Order: for each requested return, each laser sorted by name (TOP first), pixels row-major —
    the order of the official `convert_range_image_to_point_cloud` outputs concatenated.
    A frame without range images (e.g. a labels-only frame) gives 0 points.
    """
    for r in returns:
        if r not in (0, 1):
            raise ValueError(f"returns must contain 0 (first) and/or 1 (second), got {returns}")
    images, top_pose = range_images_of(frame)
    frame_pose = np.asarray(frame.pose.transform, dtype=np.float64).reshape(4, 4) if len(frame.pose.transform) else np.eye(4)
    calibrations = sorted(frame.context.laser_calibrations, key=lambda c: c.name)
    top_pixel_pose = None          # (H, W, 4, 4), built once for both returns
    parts = []
    for return_index in returns:
        for calib in calibrations:
            image = images.get(calib.name, [None, None])[return_index]
            if image is None:
                continue
            height, width = image.shape[:2]
            extrinsic = np.asarray(calib.extrinsic.transform, dtype=np.float64).reshape(4, 4)
            pixel_pose = None
            if calib.name == 1:
                if top_pose is None:
                    raise ValueError(f"frame {frame_id(frame)}: TOP lidar range image has no range_image_pose")
                if top_pose.shape[:2] != (height, width):
                    raise ValueError(f"frame {frame_id(frame)}: TOP pose image {top_pose.shape} does not match "
                                     f"the range image {image.shape}")
                if top_pixel_pose is None:
                    top_pixel_pose = pixel_pose_matrices(top_pose)
                pixel_pose = top_pixel_pose
            xyz, features, _ = range_image_to_points(image, extrinsic, beam_inclinations_for_rows(calib, height),
                                                     pixel_pose, frame_pose if pixel_pose is not None else None)
            n = xyz.shape[0]
            nlz = features[:, 2] > 0 if features.shape[1] >= 3 else np.zeros(n, dtype=bool)
            parts.append((xyz, features[:, 0], features[:, 1], nlz, np.full(n, calib.name, np.int8),
                          np.full(n, return_index, np.int8)))
    if not parts:
        empty = np.zeros(0, np.float32)
        return LidarPoints(np.zeros((0, 3), np.float32), empty, empty.copy(), np.zeros(0, bool),
                           np.zeros(0, np.int8), np.zeros(0, np.int8))
    cols = list(zip(*parts))
    return LidarPoints(*(np.concatenate(c) for c in cols))


def labels_to_boxes(frame, include_sign: bool = False) -> Boxes3D:
    """`frame.laser_labels` -> `Boxes3D` with difficulty (1/2) and `num_points`.

    Unknown types are dropped; Sign is dropped unless `include_sign` (then it is class index 3).
    """
    class_names = CLASS_NAMES_WITH_SIGN if include_sign else CLASS_NAMES
    boxes, labels, difficulty, num_points = [], [], [], []
    for label in frame.laser_labels:
        name = WAYMO_TYPE_TO_NAME.get(int(label.type))
        if name is None or name not in class_names:
            continue
        b = label.box
        boxes.append([b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, float(wrap_angle(b.heading))])
        labels.append(class_names.index(name))
        points = int(label.num_lidar_points_in_box)
        level = max(1, int(label.detection_difficulty_level))
        difficulty.append(2 if (level >= 2 or points <= LEVEL_2_MAX_POINTS) else 1)
        num_points.append(points)
    if not boxes:
        empty = Boxes3D.empty(class_names)
        empty.difficulty = empty.labels.clone()
        empty.num_points = empty.labels.clone()
        return empty
    return Boxes3D(np.asarray(boxes, dtype=np.float32), np.asarray(labels), class_names,
                   difficulty=np.asarray(difficulty), num_points=np.asarray(num_points))


def frame_to_info(frame, points_relpath: str, include_sign: bool = False) -> dict:
    """The pc3d info-file entry of a frame (boxes as lists, labels as class names)."""
    gt = labels_to_boxes(frame, include_sign)
    return {
        "frame_id": frame_id(frame),
        "points": points_relpath,
        "boxes": gt.boxes.tolist(),
        "labels": gt.names,
        "difficulty": gt.difficulty.tolist(),
        "num_points": gt.num_points.tolist(),
        "timestamp": int(frame.timestamp_micros),
        "context_name": frame.context.name,
    }
