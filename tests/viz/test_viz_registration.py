"""Registration figure on the real 3DMatch fragment pair and on a synthetic pair."""
import numpy as np
import pytest
import torch
from PIL import Image

from pc3d.viz import render_registration
from pc3d.viz.registration import INLIER_COLOR, OUTLIER_COLOR, REFERENCE_COLOR, SOURCE_COLOR, apply_transform


def color_mask(image, rgb, tol=12):
    target = np.round(np.asarray(rgb) * 255).astype(np.int32)
    return (np.abs(image.astype(np.int32) - target) <= tol).all(axis=-1)


def rotation_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@pytest.fixture(scope="module")
def fragment_pair(shared_data):
    from pc3d.io.points import read_points
    root = shared_data / "3dmatch"
    ref = read_points(root / "fragments/predator_demo/cloud_bin_21.pth").astype(np.float64)
    src = read_points(root / "fragments/predator_demo/cloud_bin_34.pth").astype(np.float64)
    lines = (root / "benchmarks/3DLoMatch/7-scenes-redkitchen/gt.log").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["21", "34"])
    transform = np.array([[float(v) for v in lines[start + k].split()] for k in range(1, 5)])
    return src, ref, transform


def test_real_fragments_panels_and_correspondence_colours(tmp_path, fragment_pair):
    from scipy.spatial import cKDTree
    src, ref, transform = fragment_pair
    dist, nn = cKDTree(ref).query(apply_transform(src, transform))
    rng = np.random.default_rng(0)
    good = rng.choice(np.nonzero(dist < 0.03)[0], 120, replace=False)
    bad = np.stack([rng.integers(0, len(src), 60), rng.integers(0, len(ref), 60)], axis=1)
    corr = np.concatenate([np.stack([good, nn[good]], axis=1), bad])
    info = render_registration(src, ref, transform, corr, out=tmp_path / "reg.png", panel_width=320,
                               panel_height=280)
    image = np.asarray(Image.open(info.path).convert("RGB"))
    # before (320) + after (320) + correspondences (1.6 * 320) side by side
    assert image.shape[1] == 320 + 320 + 512 and image.shape[0] == 280 + 60
    panels = [image[60:, :320], image[60:, 320:640], image[60:, 640:]]
    for panel in panels[:2]:
        assert color_mask(panel, SOURCE_COLOR).sum() > 200
        assert color_mask(panel, REFERENCE_COLOR).sum() > 200
    assert color_mask(panels[2], INLIER_COLOR).sum() > 100
    assert color_mask(panels[2], OUTLIER_COLOR).sum() > 50
    assert color_mask(panels[0], INLIER_COLOR).sum() == 0
    assert info.backend in ("open3d", "software")


def test_synthetic_pair_inliers_from_threshold_and_torch_inputs(tmp_path):
    rng = np.random.default_rng(0)
    ref = np.c_[rng.uniform(-2, 2, (3000, 2)), rng.normal(0, 0.02, 3000)]
    ref[:1000, 2] += np.linspace(0, 1, 1000)  # some relief so the panels are not a flat sheet
    transform = np.eye(4)
    transform[:3, :3] = rotation_z(0.4)
    transform[:3, 3] = [0.3, -0.2, 0.05]
    src = apply_transform(ref, np.linalg.inv(transform))  # src maps onto ref exactly with `transform`
    idx = np.arange(0, 3000, 30)
    corr = np.stack([idx, idx], axis=1)
    corr[::4, 1] = (corr[::4, 1] + 1500) % 3000  # every 4th is wrong -> outlier by residual
    info = render_registration(torch.from_numpy(src).float(), torch.from_numpy(ref).float(), torch.from_numpy(transform),
                               torch.from_numpy(corr), out=tmp_path / "syn.png", panel_width=256, panel_height=200,
                               backend="software", title="synthetic")
    image = np.asarray(Image.open(info.path).convert("RGB"))
    corr_panel = image[60:, 512:]
    assert color_mask(corr_panel, INLIER_COLOR).sum() > 50
    assert color_mask(corr_panel, OUTLIER_COLOR).sum() > 20


def test_inlier_mask_overrides_threshold_and_coordinate_correspondences(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.uniform(-1, 1, (500, 3))
    src = ref.copy()
    pairs = np.concatenate([src[:50], ref[:50]], axis=1)  # (K, 6) coordinates, all true matches
    info = render_registration(src, ref, np.eye(4), pairs, inlier_mask=np.zeros(50, bool), out=tmp_path / "m.png",
                               panel_width=160, panel_height=128, backend="software")
    image = np.asarray(Image.open(info.path).convert("RGB"))[60:, 320:]
    assert color_mask(image, OUTLIER_COLOR).sum() > 10
    assert color_mask(image, INLIER_COLOR).sum() == 0


@pytest.mark.parametrize("kwargs, error", [
    ({"transform": np.eye(3)}, ValueError),
    ({"transform": np.full((4, 4), np.nan)}, ValueError),
    ({"correspondences": np.zeros((5, 3), np.int64)}, ValueError),
    ({"correspondences": np.array([[0, 999]])}, ValueError),
    ({"correspondences": np.zeros((5, 2))}, TypeError),
    ({"correspondences": np.array([[0, 1]]), "inlier_mask": np.ones(3, bool)}, ValueError),
    ({"src": np.zeros((4, 2))}, ValueError),
])
def test_registration_bad_inputs(tmp_path, kwargs, error):
    args = {"src": np.random.default_rng(0).uniform(size=(20, 3)), "ref": np.random.default_rng(1).uniform(size=(20, 3)),
            "transform": np.eye(4), "out": tmp_path / "x.png", "backend": "software"}
    args.update(kwargs)
    with pytest.raises(error):
        render_registration(**args)


def test_legend_lists_line_colours_only_when_lines_are_drawn(tmp_path):
    rng = np.random.default_rng(2)
    ref = rng.uniform(-1, 1, (400, 3))
    pairs = np.stack([np.arange(40), np.arange(40)], axis=1)
    header = {}
    for name, corr in (("without", None), ("with", pairs)):
        info = render_registration(ref, ref, np.eye(4), corr, out=tmp_path / f"{name}.png", panel_width=200,
                                   panel_height=160, backend="software")
        header[name] = np.asarray(Image.open(info.path).convert("RGB"))[:60]  # title and colour key
    assert color_mask(header["without"], INLIER_COLOR, tol=30).sum() == 0
    assert color_mask(header["without"], OUTLIER_COLOR, tol=30).sum() == 0
    assert color_mask(header["without"], SOURCE_COLOR, tol=30).sum() > 0
    assert color_mask(header["with"], INLIER_COLOR, tol=30).sum() > 0
    assert color_mask(header["with"], OUTLIER_COLOR, tol=30).sum() > 0
