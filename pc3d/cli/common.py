"""Defaults and input preparation shared by the commands (infer, visualize, demo), so they agree."""
from __future__ import annotations

import sys

import numpy as np


def config_score_threshold(cfg: dict) -> float:
    """The one default score threshold of the tools and the demo: the config's
    `model.head.decode.score_threshold` (what the detector keeps; 0.1 unless the config says otherwise)."""
    from pc3d.models.heads.decode import DecodeConfig

    decode = ((cfg.get("model") or {}).get("head") or {}).get("decode") or {}
    return float(decode.get("score_threshold", DecodeConfig.score_threshold))

# The intensity range of the scans a command may meet, by source (the file formats do not say it).
SCAN_INTENSITY_MAX = {"kitti": 1.0, "nuscenes": 255.0, "synthetic": 1.0}


def scale_intensity(points: np.ndarray, features, cfg: dict, scan_intensity_max: float | None, source: str) -> np.ndarray:
    """Bring a scan's intensity column into the range the model was trained on.

    The one place this is configured is `dataset.intensity_max` (the largest intensity of the training data:
    1.0 for synthetic and KITTI, 255 for nuScenes). `scan_intensity_max` is the scan's own range (e.g. 255
    for a nuScenes sweep, `SCAN_INTENSITY_MAX`); the column is multiplied by their ratio. Without it the
    values are kept, with a warning when they exceed the model's range (a likely forgotten rescale).
    """
    features = list(features)
    model_max = cfg["dataset"].get("intensity_max")
    if "intensity" not in features or model_max is None:
        return points
    column = features.index("intensity")
    if scan_intensity_max is not None:
        if not scan_intensity_max > 0:
            raise ValueError(f"--intensity-max: must be > 0, got {scan_intensity_max}")
        points = points.copy()
        points[:, column] *= np.float32(model_max / scan_intensity_max)
    elif len(points) and float(points[:, column].max()) > 1.01 * model_max:
        print(f"warning: {source}: intensity up to {float(points[:, column].max()):.4g}, but the model was trained on "
              f"[0, {model_max:g}] (dataset.intensity_max); pass --intensity-max with the scan's range "
              "(e.g. 255 for nuScenes)", file=sys.stderr)
    return points
