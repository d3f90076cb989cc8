"""matplotlib BEV figure: boxes, heading ticks, score filtering, legend, any output format."""
import numpy as np
import pytest
from PIL import Image

from pc3d.structures import Boxes3D
from pc3d.viz import bev_plot
from pc3d.viz.colors import CLASS_PALETTE_ON_WHITE, THEMES, class_color


def color_mask(image, rgb, tol=10):
    target = np.round(np.asarray(rgb) * 255).astype(np.int32)
    return (np.abs(image.astype(np.int32) - target) <= tol).all(axis=-1)


def scene():
    rng = np.random.default_rng(1)
    ground = np.c_[rng.uniform(-40, 40, (30000, 2)), rng.normal(-1.7, 0.05, 30000), rng.uniform(0, 1, 30000)]
    gt = Boxes3D(np.array([[12.0, 4.0, -0.9, 4.5, 1.9, 1.6, 0.3], [25.0, -6.0, -0.8, 0.8, 0.7, 1.8, 1.9]]),
                 [0, 1], ("Car", "Pedestrian", "Cyclist"))
    pred = Boxes3D(np.array([[12.4, 4.1, -0.9, 4.3, 1.9, 1.6, 0.35], [25.2, -6.1, -0.8, 0.8, 0.7, 1.8, 1.8],
                             [-15.0, 10.0, -1.0, 1.8, 0.6, 1.7, 0.0]]),
                   [0, 1, 2], ("Car", "Pedestrian", "Cyclist"), scores=np.array([0.91, 0.55, 0.1]))
    return ground.astype(np.float32), gt, pred


def test_bev_plot_draws_gt_and_kept_predictions(tmp_path):
    points, gt, pred = scene()
    out = bev_plot(points, gt, pred, out=tmp_path / "bev.png", score_threshold=0.3)
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert color_mask(image, THEMES["white"].gt).sum() > 50
    assert color_mask(image, class_color(0, "white")).sum() > 20
    assert color_mask(image, class_color(1, "white")).sum() > 20
    assert color_mask(image, class_color(2, "white")).sum() == 0  # score 0.1 < 0.3: not drawn, not in legend


def test_bev_plot_without_boxes_has_no_box_colours(tmp_path):
    points, _, _ = scene()
    out = bev_plot(points, out=tmp_path / "empty.png")
    image = np.asarray(Image.open(out).convert("RGB"))
    assert (image.astype(int).sum(axis=-1) < 700).mean() > 0.02  # points drawn
    for rgb in [THEMES["white"].gt, *CLASS_PALETTE_ON_WHITE[:8]]:
        assert color_mask(image, rgb).sum() == 0


@pytest.mark.parametrize("suffix", ["pdf", "svg"])
def test_bev_plot_vector_formats_and_dark_theme(tmp_path, suffix, kitti_scan):
    _, gt, pred = scene()
    out = bev_plot(kitti_scan, gt, pred, out=tmp_path / f"bev.{suffix}", theme="dark", xy_range=(-20, -20, 40, 20))
    assert out.stat().st_size > 1000
    head = out.read_bytes()[:8]
    assert head.startswith(b"%PDF") if suffix == "pdf" else b"<?xml" in head or head.startswith(b"<svg")


def test_bev_plot_bad_range(tmp_path):
    points, gt, _ = scene()
    with pytest.raises(ValueError, match="xy_range"):
        bev_plot(points, gt, out=tmp_path / "x.png", xy_range=(10, 0, 0, 10))
