"""tools/visualize.py: scans + box JSON (tools/infer.py format), on-disk pc3d datasets, BEV plot, errors."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pc3d.viz.colors import GT_COLOR, class_color

TOOL = Path(__file__).resolve().parents[2] / "tools" / "visualize.py"


@pytest.fixture(scope="module")
def tool():
    """The tool's implementation (tools/visualize.py is a thin wrapper around it)."""
    return importlib.import_module("pc3d.cli.visualize")


def color_mask(image, rgb, tol=12):
    target = np.round(np.asarray(rgb) * 255).astype(np.int32)
    return (np.abs(image.astype(np.int32) - target) <= tol).all(axis=-1)


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_scan_with_pred_and_gt_json(tmp_path, tool, shared_data):
    scan = shared_data / "nuscenes/mmdet3d_demo/samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
    nus = json.loads((shared_data / "nuscenes/mmdet3d_demo/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951_boxes.json").read_text())
    gt = write_json(tmp_path / "gt.json", {"boxes": [{"box": i["bbox_3d"], "label": i["name"]} for i in nus["instances"]]})
    pred = write_json(tmp_path / "pred.json", {"boxes": [
        {"box": nus["instances"][k]["bbox_3d"], "label": "car", "score": s} for k, s in ((3, 0.9), (5, 0.1))]})
    out = tmp_path / "scan.png"
    code = tool.main(["--points", str(scan), "--dim", "5", "--boxes", str(pred), "--gt-boxes", str(gt), "--out", str(out),
                      "--width", "320", "--height", "240", "--color-by", "intensity", "--score-threshold", "0.5",
                      "--view", "overview"])
    assert code == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (240, 320, 3)
    assert color_mask(image, GT_COLOR).sum() > 20
    # Predictions share the GT's class order, so "car" keeps the colour of its GT class index.
    names = list(dict.fromkeys(i["name"] for i in nus["instances"]))
    assert color_mask(image, class_color(names.index("car"))).sum() > 5


def test_frame_info_dataset(tmp_path, tool):
    rng = np.random.default_rng(0)
    (tmp_path / "points").mkdir()
    points = np.c_[rng.uniform(-20, 20, (5000, 2)), rng.normal(0, 0.05, 5000), rng.uniform(0, 1, 5000)].astype(np.float32)
    np.save(tmp_path / "points" / "f0.npy", points)
    np.save(tmp_path / "points" / "f1.npy", points[:100])
    infos = {"class_names": ["Vehicle", "Pedestrian", "Cyclist"], "point_features": ["x", "y", "z", "intensity"],
             "frames": [{"frame_id": "f0", "points": "points/f0.npy", "boxes": [[5, 2, 0.8, 4.5, 2, 1.6, 0.5]],
                         "labels": ["Vehicle"]},
                        {"frame_id": "f1", "points": "points/f1.npy", "boxes": [], "labels": []}]}
    info_path = write_json(tmp_path / "val_infos.json", infos)
    out = tmp_path / "f0.png"
    assert tool.main(["--frame-info", str(info_path), "--index", "0", "--out", str(out), "--width", "256",
                      "--height", "192", "--backend", "software"]) == 0
    assert color_mask(np.asarray(Image.open(out).convert("RGB")), GT_COLOR).sum() > 20
    out1 = tmp_path / "f1.png"
    assert tool.main(["--frame-info", str(info_path), "--index", "1", "--out", str(out1), "--width", "256",
                      "--height", "192", "--backend", "software", "--bev-plot"]) == 0
    assert out1.stat().st_size > 1000
    with pytest.raises(SystemExit, match="out of range"):
        tool.main(["--frame-info", str(info_path), "--index", "7", "--out", str(out)])


def test_cli_errors(tmp_path, tool, capsys):
    pts = tmp_path / "p.npy"
    np.save(pts, np.zeros((10, 4), np.float32))
    with pytest.raises(SystemExit):
        tool.main(["--points", str(pts)])  # neither --out nor --show
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        tool.main(["--points", str(pts), "--boxes", str(bad), "--out", str(tmp_path / "o.png")])
    wrong = write_json(tmp_path / "wrong.json", {"boxes": [{"box": [1, 2, 3], "label": "car"}]})
    with pytest.raises(SystemExit, match="bad box entry"):
        tool.main(["--points", str(pts), "--boxes", str(wrong), "--out", str(tmp_path / "o.png")])
    with pytest.raises(SystemExit, match="not found"):
        tool.main(["--points", str(tmp_path / "missing.bin"), "--out", str(tmp_path / "o.png")])
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((10, 4), np.nan, np.float32))
    assert tool.main(["--points", str(nan), "--out", str(tmp_path / "o.png"), "--backend", "software"]) == 2
    assert "NaN" in capsys.readouterr().err


def test_show_without_display_is_a_clear_error(tmp_path, tool, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    pts = tmp_path / "p.npy"
    np.save(pts, np.zeros((10, 4), np.float32))
    if sys.platform not in ("win32", "darwin"):
        assert tool.main(["--points", str(pts), "--show"]) == 2
        assert "display" in capsys.readouterr().err


def test_runs_as_a_script():
    proc = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--frame-info" in proc.stdout and "--score-threshold" in proc.stdout


def test_semantickitti_point_labels(tmp_path, tool, shared_data):
    from pc3d.viz.colors import distinct_label_colors
    root = shared_data / "semantickitti/sequences/00"
    out = tmp_path / "sem.png"
    assert tool.main(["--points", str(root / "velodyne/000000.bin"), "--point-labels", str(root / "labels/000000.label"),
                      "--color-by", "label", "--out", str(out), "--width", "200", "--height", "160",
                      "--backend", "software", "--view", "overview"]) == 0
    image = np.asarray(Image.open(out).convert("RGB"))
    ids = np.unique(np.fromfile(root / "labels/000000.label", dtype=np.uint32) & 0xFFFF)
    colours = distinct_label_colors(ids)
    assert len({tuple(np.round(c, 3)) for c in colours}) == len(ids)  # sparse ids get distinct colours
    present = sum(color_mask(image, c, tol=3).sum() > 0 for c in colours)
    assert present >= len(ids) - 1  # (one class may be hidden behind another's splats)
    with pytest.raises(SystemExit, match="labels for"):  # 50 labels for an 800-point scan
        tool.main(["--points", str(shared_data / "kitti/mmdet3d_tests/training/velodyne/000000.bin"),
                   "--point-labels", str(root / "labels/000000.label"), "--out", str(out)])
