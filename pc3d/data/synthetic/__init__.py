"""Synthetic data, the embedded default dataset: a LiDAR street-scene simulator and registration pairs.

- `scene`: procedural street scenes (`SceneConfig`, `generate_scene`) built from `shapes` of `primitives`
  on an analytic `ground`;
- `lidar`: spinning multi-beam LiDAR (`LidarConfig.preset("waymo64" | "hdl64" | "vlp32" | "tiny16")`,
  `simulate_frame(seed, scene_config, lidar_config) -> Frame`);
- `raycast`: first-hit numba ray caster (`pc3d.testing.reference_raycast`: plain numpy version for checks);
- `labels`: boxes, points-in-box counts, Waymo difficulty;
- `writer`: the on-disk pc3d info format (`write_synthetic_dataset`, `write_synthetic_split` behind `tools/create_data.py synthetic`);
- `registration_pairs`: indoor rooms scanned by a depth camera (`make_registration_pair`,
  `write_registration_dataset` in the 3DMatch layout).
"""
from .lidar import LidarConfig, LidarScan, simulate, simulate_frame
from .registration_pairs import (DepthCameraConfig, RegistrationPair, RoomConfig, make_registration_pair,
                                 write_registration_dataset)
from .scene import CLASS_NAMES, Scene, SceneConfig, generate_scene
from .writer import write_synthetic_dataset

__all__ = ["CLASS_NAMES", "DepthCameraConfig", "LidarConfig", "LidarScan", "RegistrationPair", "RoomConfig", "Scene",
           "SceneConfig", "generate_scene", "make_registration_pair", "simulate", "simulate_frame",
           "write_registration_dataset", "write_synthetic_dataset"]
