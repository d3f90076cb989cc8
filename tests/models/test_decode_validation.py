"""Decode settings and the NMS op refuse values that would silently keep nothing or everything."""
import math

import numpy as np
import pytest

from pc3d.config import load_config
from pc3d.models.build import build_model
from pc3d.models.heads.decode import DecodeConfig
from pc3d.ops.box_geometry import nms_rotated

CONFIG = "configs/synthetic/flatformer_synthetic_tiny.yaml"


@pytest.mark.parametrize("override, key", [
    ("model.head.decode.score_threshold=.nan", "score_threshold"),
    ("model.head.decode.score_threshold=1.5", "score_threshold"),
    ("model.head.decode.nms.iou_threshold=-0.1", "nms.iou_threshold"),
    ("model.head.decode.nms.iou_threshold=1.01", "nms.iou_threshold"),
    ("model.head.decode.nms.iou_threshold=.inf", "nms.iou_threshold"),
    ("model.head.decode.post_max_size=0", "post_max_size"),
])
def test_bad_decode_settings_from_the_config_are_refused(override, key):
    from pathlib import Path
    cfg = load_config(Path(__file__).resolve().parents[2] / CONFIG, [override])
    with pytest.raises(ValueError, match=rf"head\.decode\.{key} must be"):
        build_model(cfg)


def test_decode_config_checks_each_value():
    DecodeConfig(score_threshold=0.0, iou_threshold=1.0)  # the bounds themselves are valid
    with pytest.raises(ValueError, match=r"nms.iou_threshold .*\[0, 1\], got 2.0"):
        DecodeConfig.from_dict({"nms": {"type": "rotated", "iou_threshold": [0.7, 2.0, 0.5]}})
    with pytest.raises(ValueError, match="score_threshold"):
        DecodeConfig.from_dict({"score_threshold": math.nan})
    with pytest.raises(ValueError, match="nms.radius"):
        DecodeConfig.from_dict({"nms": {"type": "circle", "radius": -1.0}})


@pytest.mark.parametrize("threshold", [-1.0, -1e-9, 1.5, math.nan, math.inf])
def test_nms_rotated_refuses_thresholds_outside_unit_interval(threshold):
    boxes = np.array([[0, 0, 0, 4, 2, 1.5, 0.0], [0.5, 0, 0, 4, 2, 1.5, 0.1]])
    with pytest.raises(ValueError, match="iou_threshold must be"):
        nms_rotated(boxes, np.array([0.9, 0.8]), threshold)
    assert nms_rotated(boxes, np.array([0.9, 0.8]), 0.0).tolist() == [0]
    assert nms_rotated(boxes, np.array([0.9, 0.8]), 1.0).tolist() == [0, 1]
