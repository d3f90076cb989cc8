"""Headless frame rendering: real KITTI / nuScenes scans and synthetic frames, both backends.

Assertions are on the pixels: the image is not blank, each box's colour appears where the exposed
camera projection says the box lands, and a frame without boxes contains none of the box colours.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from pc3d.structures import Boxes3D, Frame, PointCloud
from pc3d.viz import render_frame
from pc3d.viz.cameras import bev_camera, chase_camera, look_at, overview_camera
from pc3d.viz.colors import CLASS_PALETTE, GT_COLOR, THEMES, class_color
from pc3d.viz.geometry import box_corners, box_segments, points_in_boxes_labels
from pc3d.viz.render import BackendUnavailable, probe_open3d, render_image, resolve_backend

W, H = 640, 480
KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist", "Truck")


def read_image(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def color_mask(image: np.ndarray, rgb, tol: int = 12) -> np.ndarray:
    target = np.round(np.asarray(rgb) * 255).astype(np.int32)
    return (np.abs(image.astype(np.int32) - target) <= tol).all(axis=-1)


def box_region(camera, box: np.ndarray, pad: int = 4):
    """Pixel rectangle (u0, v0, u1, v1) covering the projected corners of one box."""
    uv, depth = camera.project(box_corners(box[None])[0])
    assert (depth > 0).all()
    u0, v0 = np.floor(uv.min(axis=0)).astype(int) - pad
    u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + pad
    return max(u0, 0), max(v0, 0), min(u1, camera.width), min(v1, camera.height)


def fraction_in_region(mask, region) -> int:
    u0, v0, u1, v1 = region
    return int(mask[v0:v1, u0:u1].sum())


def all_box_colors():
    return [GT_COLOR, np.asarray(THEMES["white"].gt)] + list(CLASS_PALETTE)


def kitti_labels_to_boxes(label_path, calib_path) -> Boxes3D:
    """KITTI label_2 (rectified camera, bottom centre, ry) -> pc3d boxes in the Velodyne frame."""
    calib = {}
    for line in open(calib_path):
        if ":" in line:
            key, values = line.split(":", 1)
            calib[key] = np.array(values.split(), dtype=np.float64)
    rect = np.eye(4)
    rect[:3, :3] = calib["R0_rect"].reshape(3, 3)
    velo_to_cam = np.vstack([calib["Tr_velo_to_cam"].reshape(3, 4), [0, 0, 0, 1]])
    cam_to_velo = np.linalg.inv(rect @ velo_to_cam)
    boxes, labels = [], []
    for line in open(label_path):
        f = line.split()
        if not f or f[0] == "DontCare":
            continue
        h, w, l = map(float, f[8:11])
        bottom = cam_to_velo @ np.array([float(f[11]), float(f[12]), float(f[13]), 1.0])
        heading = -float(f[14]) - np.pi / 2
        heading = (heading + np.pi) % (2 * np.pi) - np.pi
        boxes.append([bottom[0], bottom[1], bottom[2] + h / 2, l, w, h, heading])
        labels.append(KITTI_CLASSES.index(f[0]))
    return Boxes3D(np.array(boxes), labels, KITTI_CLASSES)


@pytest.fixture(scope="module")
def kitti_gt(shared_data, kitti_scan):
    root = shared_data / "kitti/object/training"
    gt = kitti_labels_to_boxes(root / "label_2/000001.txt", root / "calib/000001.txt")
    # The conversion is right only if every labelled object actually contains LiDAR points.
    inside = points_in_boxes_labels(kitti_scan[:, :3].astype(np.float64), gt.boxes.numpy(), np.arange(len(gt)))
    counts = np.bincount(inside[inside >= 0], minlength=len(gt))
    assert (counts >= 5).all(), counts
    return gt


def open3d_or_skip():
    ok, reason = probe_open3d()
    if not ok:
        pytest.skip(f"Open3D offscreen rendering unavailable here: {reason}")
    return "open3d"


BACKENDS = [pytest.param("software", id="software"), pytest.param("open3d", id="open3d")]


def backend_or_skip(backend):
    return open3d_or_skip() if backend == "open3d" else backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("view", ["bev", "chase"])
def test_kitti_gt_and_pred_boxes_land_on_their_projection(tmp_path, kitti_scan, kitti_gt, backend, view):
    backend = backend_or_skip(backend)
    gt = kitti_gt
    pred_boxes = gt.boxes.clone()
    pred_boxes[:, 0] += 0.5
    pred = Boxes3D(pred_boxes, gt.labels, gt.class_names, scores=torch.tensor([0.9, 0.8, 0.05]))
    info = render_frame(kitti_scan, gt, pred, tmp_path / "kitti.png", view=view, width=W, height=H,
                        score_threshold=0.3, backend=backend, legend=False)
    assert info.backend == backend and info.path.exists() and info.seconds > 0
    image = read_image(info.path)
    assert image.shape == (H, W, 3)
    background = np.round(np.asarray(THEMES["dark"].background) * 255)
    assert (np.abs(image - background).sum(axis=-1) > 30).mean() > 0.01, "image is (almost) blank"
    gt_mask = color_mask(image, GT_COLOR)
    for box in gt.boxes.numpy():
        assert fraction_in_region(gt_mask, box_region(info.camera, box)) >= 5
    kept = [0, 1]  # the third prediction is below the score threshold
    for k in kept:
        mask = color_mask(image, class_color(int(pred.labels[k])))
        assert fraction_in_region(mask, box_region(info.camera, pred_boxes[k].numpy())) >= 5
    dropped = color_mask(image, class_color(int(pred.labels[2])))
    assert fraction_in_region(dropped, box_region(info.camera, pred_boxes[2].numpy())) == 0
    # Box pixels exist only near boxes: nothing of the GT colour far from every box.
    near_any = np.zeros_like(gt_mask)
    for box in np.concatenate([gt.boxes.numpy(), pred_boxes.numpy()]):
        u0, v0, u1, v1 = box_region(info.camera, box, pad=6)
        near_any[v0:v1, u0:u1] = True
    assert gt_mask[~near_any].sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("color_by", ["height", "intensity"])
def test_frame_without_boxes_has_no_box_colours(tmp_path, nuscenes_scan, backend, color_by):
    backend = backend_or_skip(backend)
    info = render_frame(nuscenes_scan, None, None, tmp_path / "nobox.png", view="overview", width=W, height=H,
                        color_by=color_by, backend=backend)
    image = read_image(info.path)
    assert (color_mask(image, THEMES["dark"].background, tol=3)).mean() < 0.99
    for rgb in all_box_colors():
        assert color_mask(image, rgb).sum() == 0, rgb


def test_nuscenes_sample_boxes_render(tmp_path, shared_data, nuscenes_scan):
    import json
    path = shared_data / "nuscenes/mmdet3d_demo/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951_boxes.json"
    data = json.loads(path.read_text())
    items = [{"box": inst["bbox_3d"], "label": inst["name"]} for inst in data["instances"]]
    gt = Boxes3D.from_json(items)
    info = render_frame(nuscenes_scan, gt, None, tmp_path / "nus.png", view="bev", width=W, height=H,
                        backend="software", legend=False, camera_kwargs={"xy_range": (-30, -30, 30, 30)})
    image = read_image(info.path)
    mask = color_mask(image, GT_COLOR)
    boxes = gt.boxes.numpy()
    visible = [b for b in boxes if np.abs(b[:2]).max() < 28]
    assert len(visible) >= 5
    for box in visible:
        assert fraction_in_region(mask, box_region(info.camera, box)) >= 3


def _synthetic_frame() -> Frame:
    try:
        from pc3d.data.synthetic.lidar import LidarConfig, simulate_frame
        return simulate_frame(3, lidar_config=LidarConfig.preset("waymo64"))
    except ImportError:  # simulator not available: a hand-made ground plane with two cars
        rng = np.random.default_rng(0)
        ground = np.c_[rng.uniform(-30, 30, (20000, 2)), np.zeros(20000), rng.uniform(0, 1, 20000)]
        boxes = np.array([[8, 3, 0.8, 4.5, 1.9, 1.6, 0.4], [-6, -5, 0.8, 4.0, 1.8, 1.5, -1.2]])
        car_pts = np.concatenate([b[:3] + rng.uniform(-0.5, 0.5, (500, 3)) * b[3:6] for b in boxes])
        points = np.concatenate([ground, np.c_[car_pts, rng.uniform(0, 1, len(car_pts))]]).astype(np.float32)
        return Frame(PointCloud(points), Boxes3D(boxes, [0, 0]), "handmade")


@pytest.fixture(scope="module")
def synthetic_frame():
    return _synthetic_frame()


@pytest.mark.parametrize("view", ["bev", "overview"])
def test_synthetic_frame_uses_its_gt_and_labels(tmp_path, synthetic_frame, view):
    frame = synthetic_frame
    gt = frame.gt_boxes
    # Boxes hit by the scan (others may be hidden behind something else).
    counts = gt.num_points.numpy() if gt.num_points is not None else np.full(len(gt), 100)
    info = render_frame(frame, out=tmp_path / "syn.png", view=view, width=W, height=H, color_by="label",
                        backend="auto", legend=False)
    image = read_image(info.path)
    mask = color_mask(image, GT_COLOR)
    assert mask.sum() > 50
    boxes = gt.boxes.numpy()
    in_view = 0
    for box, count in zip(boxes, counts):
        uv, depth = info.camera.project(box_corners(box[None])[0])
        if count < 20 or not ((uv >= 0) & (uv < [W, H])).all():
            continue
        in_view += 1
        assert fraction_in_region(mask, box_region(info.camera, box)) >= 3
    assert in_view >= 3
    # Label colouring tints the points inside boxes with a lightened class colour.
    vehicle = 0.6 * class_color(0) + 0.4 * np.asarray(THEMES["dark"].point_ramp[-1])
    assert color_mask(image, vehicle, tol=6).sum() > 0


def test_backends_agree_pixelwise(tmp_path, kitti_scan, kitti_gt):
    open3d_or_skip()
    images = {}
    for backend in ("open3d", "software"):
        info = render_frame(kitti_scan, kitti_gt, None, tmp_path / f"{backend}.png", view="overview", width=W,
                            height=H, backend=backend, legend=False, point_size=2, line_width=2)
        images[backend] = read_image(info.path)
    background = np.round(np.asarray(THEMES["dark"].background) * 255)
    fg = {k: np.abs(v - background).sum(axis=-1) > 30 for k, v in images.items()}
    iou = (fg["open3d"] & fg["software"]).sum() / (fg["open3d"] | fg["software"]).sum()
    assert iou > 0.75, iou
    gt_o3d, gt_sw = (color_mask(images[k], GT_COLOR) for k in ("open3d", "software"))
    assert (gt_o3d & gt_sw).sum() / max((gt_o3d | gt_sw).sum(), 1) > 0.6


def test_single_segment_lands_exactly_where_projected():
    """Both backends draw a segment on the pixels `Camera.project` predicts (within a pixel)."""
    camera = look_at([-10.0, 2.0, 6.0], [10.0, 0.0, 0.0], 320, 240, 50.0)
    segment = np.array([[[5.0, -2.0, 0.0], [12.0, 3.0, 1.0]]])
    uv, _ = camera.project(segment[0])
    backends = ["software"] + (["open3d"] if probe_open3d()[0] else [])
    for backend in backends:
        image, used = render_image(camera, np.zeros((0, 3)), np.zeros((0, 3)), segment, np.array([[1.0, 0.0, 0.0]]),
                                   1.0, 3.0, (0, 0, 0), backend)
        assert used == backend
        ys, xs = np.nonzero(color_mask(image, (1.0, 0.0, 0.0), tol=40))
        assert len(xs) > 20
        # distance of every red pixel from the projected line
        d = uv[1] - uv[0]
        normal = np.array([-d[1], d[0]]) / np.linalg.norm(d)
        dist = np.abs((np.stack([xs, ys], 1) - uv[0]) @ normal)
        assert dist.max() <= 2.6, (backend, dist.max())
        for end in uv:
            assert np.hypot(xs - end[0], ys - end[1]).min() <= 2.0


def test_bev_camera_orientation():
    cam = bev_camera(400, 300, xy_range=(-20, -20, 40, 20), ground_z=0.0)
    (u0, v0), (u_fwd, v_fwd), (u_left, v_left) = cam.project(np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0.]]))[0]
    assert v_fwd < v0 and abs(u_fwd - u0) < 1e-6        # forward is up
    assert u_left < u0 and abs(v_left - v0) < 1e-6      # left is left
    centre = cam.project(np.array([[10.0, 0.0, 0.0]]))[0][0]
    np.testing.assert_allclose(centre, [199.5, 149.5], atol=1e-6)
    # 60 m of x fits the 300 px height
    assert abs((v0 - v_fwd) / 10 - 300 / 60) < 1e-6


def test_chase_and_overview_cameras_see_the_scene(kitti_scan):
    xyz = kitti_scan[:, :3].astype(np.float64)
    chase = chase_camera(W, H, xyz)
    uv, depth = chase.project(np.array([[20.0, 0.0, -1.7]]))
    assert depth[0] > 0 and 0 < uv[0, 0] < W and 0 < uv[0, 1] < H
    over = overview_camera(W, H, xyz)
    uv, depth = over.project(xyz)
    inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    assert inside.mean() > 0.9


def test_box_segments_heading_marker_points_forward():
    box = np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, np.pi / 2]])
    segs = box_segments(box)
    assert segs.shape == (15, 2, 3)
    top_centre, front_mid = segs[12]
    np.testing.assert_allclose(top_centre, [1.0, 2.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(front_mid, [1.0, 4.0, 1.0], atol=1e-9)  # heading +90 deg: front is +y
    corners = box_corners(box)[0]
    np.testing.assert_allclose(corners.min(axis=0), [0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(corners.max(axis=0), [2.0, 4.0, 1.0], atol=1e-9)


def test_inputs_torch_frame_and_empty(tmp_path):
    pts = torch.tensor([[0.0, 0.0, 0.0, 0.5], [5.0, 1.0, 0.5, 0.2], [10.0, -3.0, 1.0, 0.9]])
    frame = Frame(PointCloud(pts), Boxes3D(torch.tensor([[5.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.0]]), [0]))
    info = render_frame(frame, out=tmp_path / "f.png", width=128, height=96, backend="software", legend=False)
    assert color_mask(read_image(info.path), GT_COLOR).sum() > 0
    empty = render_frame(np.zeros((0, 4), np.float32), None, None, tmp_path / "e.png", width=64, height=48,
                         backend="software")
    assert color_mask(read_image(empty.path), THEMES["dark"].background, tol=1).all()


@pytest.mark.parametrize("kwargs, error", [
    ({"points": np.array([[0.0, np.nan, 0.0]])}, ValueError),
    ({"points": np.zeros((5, 2))}, ValueError),
    ({"points": [[0.0, 0.0, 0.0]]}, TypeError),
    ({"view": "top"}, ValueError),
    ({"color_by": "rainbow"}, ValueError),
    ({"backend": "vulkan"}, ValueError),
    ({"gt_boxes": np.zeros((2, 5))}, ValueError),
    ({"gt_boxes": np.array([[0, 0, 0, 1, 1, 1, np.inf]])}, ValueError),
    ({"points": np.zeros((5, 3)), "color_by": "intensity"}, ValueError),
    ({"out": "frame.jpg"}, ValueError),
    ({"width": 5}, ValueError),
])
def test_bad_inputs_raise_clear_errors(tmp_path, kwargs, error):
    args = {"points": np.zeros((5, 4), np.float32), "gt_boxes": None, "pred_boxes": None,
            "out": tmp_path / "x.png", "backend": "software"}
    args.update(kwargs)
    if isinstance(args["out"], str):
        args["out"] = tmp_path / args["out"]
    with pytest.raises(error):
        render_frame(**args)


def test_backend_resolution_falls_back_when_probe_fails(monkeypatch):
    import pc3d.viz.render as render
    monkeypatch.delenv("PC3D_VIZ_BACKEND", raising=False)
    monkeypatch.setattr(render, "probe_open3d", lambda *a, **k: (False, "no EGL (test)"))
    assert resolve_backend("auto") == "software"
    with pytest.raises(BackendUnavailable, match="no EGL"):
        resolve_backend("open3d")
    monkeypatch.setenv("PC3D_VIZ_BACKEND", "software")
    assert resolve_backend("auto") == "software"


def test_auto_backend_survives_a_machine_without_egl(tmp_path):
    """With no usable EGL vendor the probe fails in its subprocess and "auto" renders in software."""
    import os
    import subprocess
    import sys
    script = (
        "import numpy as np, sys\n"
        "from pc3d.viz import render_frame, probe_open3d\n"
        "ok, reason = probe_open3d()\n"
        "info = render_frame(np.random.default_rng(0).uniform(-10, 10, (2000, 4)).astype(np.float32),\n"
        "                    np.array([[0, 0, 0, 4, 2, 1.5, 0.0]]), None, sys.argv[1], width=160, height=120)\n"
        "print(ok, info.backend)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PC3D_VIZ_BACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    env["__EGL_VENDOR_LIBRARY_FILENAMES"] = str(tmp_path / "no_such_vendor.json")  # libglvnd finds no EGL driver
    out = tmp_path / "noegl.png"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["False", "software"]
    assert color_mask(read_image(out), GT_COLOR).sum() > 10
