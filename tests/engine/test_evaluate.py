import torch

from pc3d.engine.evaluate import config_metrics, within_range
from pc3d.structures import Boxes3D

KEY = "OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP"


def _boxes(xs, scores=None):
    b = torch.tensor([[x, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0] for x in xs])
    return Boxes3D(b, [0] * len(xs), scores=scores, num_points=None if scores else [50] * len(xs))


def test_within_range_keeps_centres_inside():
    kept = within_range(_boxes([0.0, 50.0, 60.0, -52.0]), (-51.2, -51.2, -3, 51.2, 51.2, 3))
    assert kept.boxes[:, 0].tolist() == [0.0, 50.0]


def test_range_filter_follows_config():
    gt = [_boxes([10.0, 60.0])]  # the 60 m box lies beyond the grid: nothing could detect it
    pred = [_boxes([10.0], scores=[0.9])]
    cfg = {"dataset": {"class_names": ["Vehicle"], "point_range": [-51.2, -51.2, -3, 51.2, 51.2, 3]},
           "eval": {"filter_to_point_range": True}}
    assert abs(config_metrics(cfg, pred, gt)[KEY] - 1.0) < 1e-6
    cfg["eval"]["filter_to_point_range"] = False
    assert config_metrics(cfg, pred, gt)[KEY] < 0.6
