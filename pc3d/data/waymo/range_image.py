"""Waymo range images -> points (numpy), the same geometry as the official
`frame_utils.convert_range_image_to_point_cloud` / `range_image_utils`, without TensorFlow.

A range image is `(H, W, 4)` float32: range (m), intensity, elongation, no-label-zone flag
(1 inside an NLZ, -1 outside). Pixels with range <= 0 are empty.

Geometry (sensor frame -> vehicle frame):
- row `i` has inclination `inclinations[i]`; row 0 is the *highest* beam. The calibration stores
  inclinations ascending, so they are reversed (`beam_inclinations_for_rows`).
- column `j` has azimuth `((W - j - 0.5) / W * 2 - 1) * pi - atan2(E[1,0], E[0,0])` (E = extrinsic):
  column 0 looks backwards (+pi) and azimuth decreases to the right; the correction puts the sensor's
  yaw mounting back so that a point lands at its true vehicle-frame bearing.
- `p_sensor = r * (cos(az) cos(inc), sin(az) cos(inc), sin(inc))`, `p_vehicle = E p_sensor`.
- TOP lidar only: every pixel has its own vehicle pose (rolling shutter while the car moves),
  `range_image_top_pose` `(H, W, 6)` = roll, pitch, yaw, tx, ty, tz of vehicle->world at that pixel's
  firing time; the point goes to the world with it and back into the frame's vehicle pose:
  `p = inv(frame_pose) @ pixel_pose @ p_vehicle_at_pixel_time`.
"""
from __future__ import annotations

import zlib

import numpy as np

RANGE, INTENSITY, ELONGATION, NLZ = 0, 1, 2, 3


def decompress_matrix(compressed: bytes, kind: str = "float"):
    """zlib-decompress and parse a `MatrixFloat` ("float") or `MatrixInt32` ("int32") proto into a
    numpy array of the proto's `shape.dims`."""
    from waymo_open_dataset import dataset_pb2

    if not isinstance(compressed, (bytes, bytearray)):
        raise TypeError(f"compressed: expected bytes, got {type(compressed).__name__}")
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as err:
        raise ValueError(f"compressed: not a zlib stream ({err})") from err
    if kind == "float":
        proto, dtype = dataset_pb2.MatrixFloat(), np.float32
    elif kind == "int32":
        proto, dtype = dataset_pb2.MatrixInt32(), np.int32
    else:
        raise ValueError(f"kind must be 'float' or 'int32', got {kind!r}")
    proto.ParseFromString(raw)
    data = np.asarray(proto.data, dtype=dtype)
    dims = tuple(proto.shape.dims)
    if int(np.prod(dims)) != data.size:
        raise ValueError(f"matrix proto: {data.size} values do not fill shape {dims}")
    return data.reshape(dims)


def compress_matrix(array: np.ndarray, level: int = 6) -> bytes:
    """Inverse of `decompress_matrix`: float arrays -> MatrixFloat, integer arrays -> MatrixInt32."""
    from waymo_open_dataset import dataset_pb2

    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        proto = dataset_pb2.MatrixFloat()
        proto.data.extend(array.astype(np.float32).reshape(-1).tolist())
    elif np.issubdtype(array.dtype, np.integer):
        proto = dataset_pb2.MatrixInt32()
        proto.data.extend(array.astype(np.int32).reshape(-1).tolist())
    else:
        raise TypeError(f"array: expected a float or integer array, got {array.dtype}")
    proto.shape.dims.extend(array.shape)
    return zlib.compress(proto.SerializeToString(), level)


def uniform_inclinations(inclination_min: float, inclination_max: float, height: int) -> np.ndarray:
    """`(height,)` ascending inclinations at the centres of `height` equal bins of [min, max]."""
    if height <= 0:
        raise ValueError(f"height must be positive, got {height}")
    return inclination_min + (0.5 + np.arange(height)) / height * (inclination_max - inclination_min)


def beam_inclinations_for_rows(calibration, height: int) -> np.ndarray:
    """`(height,)` float64 inclination of each range-image row (row 0 = highest beam) from a
    `LaserCalibration`: the given `beam_inclinations` when present, else uniform in [min, max]."""
    if len(calibration.beam_inclinations) > 0:
        inclinations = np.asarray(calibration.beam_inclinations, dtype=np.float64)
        if inclinations.shape[0] != height:
            raise ValueError(f"laser {calibration.name}: {inclinations.shape[0]} beam inclinations for a "
                             f"range image of {height} rows")
    else:
        inclinations = uniform_inclinations(calibration.beam_inclination_min, calibration.beam_inclination_max, height)
    return inclinations[::-1].copy()


def rotation_from_roll_pitch_yaw(roll, pitch, yaw) -> np.ndarray:
    """`(..., 3, 3)` rotation `Rz(yaw) @ Ry(pitch) @ Rx(roll)` (intrinsic z-y'-x'')."""
    roll, pitch, yaw = (np.asarray(a, dtype=np.float64) for a in (roll, pitch, yaw))
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rot = np.empty(roll.shape + (3, 3))
    rot[..., 0, 0] = cy * cp
    rot[..., 0, 1] = cy * sp * sr - sy * cr
    rot[..., 0, 2] = cy * sp * cr + sy * sr
    rot[..., 1, 0] = sy * cp
    rot[..., 1, 1] = sy * sp * sr + cy * cr
    rot[..., 1, 2] = sy * sp * cr - cy * sr
    rot[..., 2, 0] = -sp
    rot[..., 2, 1] = cp * sr
    rot[..., 2, 2] = cp * cr
    return rot


def pixel_pose_matrices(pose_image: np.ndarray) -> np.ndarray:
    """`(H, W, 6)` roll, pitch, yaw, tx, ty, tz -> `(H, W, 4, 4)` vehicle->world transforms."""
    pose_image = np.asarray(pose_image, dtype=np.float64)
    if pose_image.ndim != 3 or pose_image.shape[2] != 6:
        raise ValueError(f"pose_image must be (H, W, 6), got {pose_image.shape}")
    out = np.zeros(pose_image.shape[:2] + (4, 4))
    out[..., :3, :3] = rotation_from_roll_pitch_yaw(pose_image[..., 0], pose_image[..., 1], pose_image[..., 2])
    out[..., :3, 3] = pose_image[..., 3:6]
    out[..., 3, 3] = 1.0
    return out


def column_azimuths(width: int, extrinsic: np.ndarray) -> np.ndarray:
    """`(W,)` azimuth (sensor frame, radians) of each range-image column."""
    az_correction = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    ratios = (np.arange(width, 0, -1, dtype=np.float64) - 0.5) / width
    return (ratios * 2.0 - 1.0) * np.pi - az_correction


def range_image_to_cartesian(ranges: np.ndarray, extrinsic: np.ndarray, row_inclinations: np.ndarray,
                             pixel_pose: np.ndarray | None = None, frame_pose: np.ndarray | None = None) -> np.ndarray:
    """`(H, W)` ranges -> `(H, W, 3)` float64 points in the vehicle frame.

    row_inclinations: `(H,)` per row (row 0 first). pixel_pose: optional `(H, W, 4, 4)`; then
    `frame_pose` `(4, 4)` (vehicle->world of the frame) is required.
    """
    ranges = np.asarray(ranges, dtype=np.float64)
    extrinsic = np.asarray(extrinsic, dtype=np.float64)
    if ranges.ndim != 2:
        raise ValueError(f"ranges must be (H, W), got {ranges.shape}")
    if extrinsic.shape != (4, 4):
        raise ValueError(f"extrinsic must be (4, 4), got {extrinsic.shape}")
    height, width = ranges.shape
    row_inclinations = np.asarray(row_inclinations, dtype=np.float64)
    if row_inclinations.shape != (height,):
        raise ValueError(f"row_inclinations must be ({height},), got {row_inclinations.shape}")
    azimuth = column_azimuths(width, extrinsic)[None, :]
    inclination = row_inclinations[:, None]
    cos_inc = np.cos(inclination)
    sensor = np.stack([np.cos(azimuth) * cos_inc * ranges, np.sin(azimuth) * cos_inc * ranges,
                       np.sin(inclination) * ranges], axis=-1)
    points = sensor @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    if pixel_pose is not None:
        if frame_pose is None:
            raise ValueError("frame_pose is required when pixel_pose is given")
        pixel_pose = np.asarray(pixel_pose, dtype=np.float64)
        if pixel_pose.shape != (height, width, 4, 4):
            raise ValueError(f"pixel_pose must be ({height}, {width}, 4, 4), got {pixel_pose.shape}")
        world = np.einsum("hwij,hwj->hwi", pixel_pose[..., :3, :3], points) + pixel_pose[..., :3, 3]
        world_to_vehicle = np.linalg.inv(np.asarray(frame_pose, dtype=np.float64))
        points = world @ world_to_vehicle[:3, :3].T + world_to_vehicle[:3, 3]
    return points


def range_image_to_points(range_image: np.ndarray, extrinsic: np.ndarray, row_inclinations: np.ndarray,
                          pixel_pose: np.ndarray | None = None, frame_pose: np.ndarray | None = None):
    """Valid pixels (range > 0) of a `(H, W, C>=3)` range image as points.

    Returns `(points (N, 3) float32 vehicle frame, features (N, C-1) float32 = intensity, elongation
    [, nlz], pixel (N, 2) int64 row/column)` in row-major pixel order, as the official op.
    """
    range_image = np.asarray(range_image, dtype=np.float32)
    if range_image.ndim != 3 or range_image.shape[2] < 3:
        raise ValueError(f"range_image must be (H, W, C>=3), got {range_image.shape}")
    cartesian = range_image_to_cartesian(range_image[..., RANGE], extrinsic, row_inclinations, pixel_pose, frame_pose)
    mask = range_image[..., RANGE] > 0
    rows, cols = np.nonzero(mask)
    return (cartesian[rows, cols].astype(np.float32), range_image[rows, cols, 1:].astype(np.float32),
            np.stack([rows, cols], axis=1).astype(np.int64))
