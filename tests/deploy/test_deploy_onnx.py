"""ONNX export of whole detectors + OnnxDetector vs the torch detector (real KITTI scan, synthetic frames)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pc3d.config import load_config
from pc3d.models.build import build_model
from pc3d.structures import Frame, PointCloud, collate

CONFIGS = {name: f"configs/synthetic/{name}.yaml"
           for name in ("pointpillars_tiny", "flatformer_tiny", "dsvt_pillar_tiny", "dsvt_voxel_tiny", "scatterformer_tiny",
                        "sst_tiny")}
FEATURES = ("x", "y", "z", "intensity")
TOL = 1e-4
# Each export takes 10-60 s on the shared CPU: the default run exports FlatFormer (partitioning in the graph)
# and, in the CLI test, PointPillars (ScatterND mode); DSVT-P, DSVT-V, ScatterFormer, SST, PointPillars and the
# hard-voxelization export run with -m slow (tests/deploy/test_deploy_backbones.py exports the ScatterFormer and
# SST backbones alone in the default run).
HEAVY = [pytest.param("pointpillars_tiny", marks=pytest.mark.slow), "flatformer_tiny",
         pytest.param("dsvt_pillar_tiny", marks=pytest.mark.slow), pytest.param("dsvt_voxel_tiny", marks=pytest.mark.slow),
         pytest.param("scatterformer_tiny", marks=pytest.mark.slow), pytest.param("sst_tiny", marks=pytest.mark.slow)]


def _repo(path):
    from pathlib import Path
    return str(Path(__file__).resolve().parents[2] / path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each config once (random weights, fixed seed): name -> (torch detector, OnnxDetector, path)."""
    from pc3d.deploy import OnnxDetector, export_onnx

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cfg = load_config(_repo(CONFIGS[name]), [])
            detector = build_model(cfg).eval()
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            result = export_onnx(detector, cfg, path)  # runs onnx.checker (full_check)
            cache[name] = (detector, OnnxDetector(path, intra_op_threads=2), result)
        return cache[name]

    return get


def _batch(*clouds):
    return collate([Frame(PointCloud(torch.as_tensor(c[:, :4]), FEATURES)) for c in clouds])


def _compare(detector, onnx_detector, batch) -> None:
    """Head outputs within TOL and the same decoded boxes (one torch and one onnxruntime forward)."""
    with torch.no_grad():
        voxelized = detector.voxelize(batch)
        ref = detector.forward_voxels(voxelized)
        torch_boxes = detector.decode(ref, voxelized)
    got = onnx_detector.forward_raw(batch)
    diffs = [float((a - b).abs().max()) for p, q in zip(ref, got) for a, b in zip(p.tensors(), q.tensors())]
    assert len(diffs) == len(onnx_detector.output_names)
    assert max(diffs) <= TOL
    _assert_same_boxes(torch_boxes, onnx_detector(batch))


# Decoded headings are atan2(sin, cos) of two head channels: an error d in the channels moves the angle by up to
# ~d * sqrt(2) / |(sin, cos)|. With random weights |(sin, cos)| can be ~1e-4 at a peak (sst_tiny, kitti_scan[:1500]:
# head maps equal to 2.4e-7, one heading off by 8.9e-4 rad), so headings get their own bound; every other box
# field and the scores keep TOL, and the head maps themselves are held to TOL in `_compare`.
HEADING_TOL = 1e-2


def _assert_same_boxes(a, b):
    """Same number of boxes per sample; each box of one side matched to the nearest box of the other (same label,
    by centre / size / score) is within TOL there and within HEADING_TOL in (wrapped) heading."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.class_names == y.class_names
        assert len(x) == len(y)
        if len(x) == 0:
            continue
        other = [c for c in range(x.boxes.shape[1]) if c != 6]
        rows_x = torch.cat([x.boxes[:, other], x.scores[:, None]], 1).double()
        rows_y = torch.cat([y.boxes[:, other], y.scores[:, None]], 1).double()
        diff = (rows_x[:, None, :] - rows_y[None, :, :]).abs().amax(-1)
        diff = torch.where(x.labels[:, None] == y.labels[None, :], diff, torch.full_like(diff, float("inf")))
        assert float(diff.amin(1).max()) <= TOL and float(diff.amin(0).max()) <= TOL
        turn = x.boxes[:, 6:7].double() - y.boxes[None, :, 6].double()
        heading = torch.remainder(turn + torch.pi, 2 * torch.pi) - torch.pi
        nearest = diff.argmin(1)
        assert float(heading[torch.arange(len(x)), nearest].abs().max()) <= HEADING_TOL


def _synthetic(seed, lidar="tiny16"):
    from pc3d.data.synthetic import LidarConfig, simulate_frame
    return simulate_frame(seed, lidar_config=LidarConfig.preset(lidar)).points.points.numpy()


@pytest.mark.parametrize("name", HEAVY)
def test_export_full_kitti_scan_matches_torch(exported, kitti_scan, name):
    import onnx

    detector, onnx_detector, result = exported(name)
    onnx.checker.check_model(str(result.path), full_check=True)
    graph = onnx.load(str(result.path)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"points": ["num_points", 4], "point_voxel": ["num_points"], "coords": ["num_voxels", 4]}
    # no ScatterND reduction (onnxruntime races on those with >1 thread; the comparisons below use 2 threads)
    assert result.metadata["scatternd_reductions"] == 0 and onnx_detector.intra_op_threads == 2
    if name != "pointpillars_tiny":  # the partitioning is inside the graph: its sort is a TopK over all voxels
        assert any(n.op_type == "TopK" for n in graph.node)
    batch = _batch(kitti_scan)  # the whole 120k-point scan, far larger than the trace example
    _compare(detector, onnx_detector, batch)


@pytest.mark.parametrize("name", HEAVY)
def test_dynamic_axes_one_export_many_sizes(exported, kitti_scan, name):
    detector, onnx_detector, _ = exported(name)
    clouds = [kitti_scan[:1500], kitti_scan[::20], _synthetic(2)[:700]]
    voxel_counts = set()
    for cloud in clouds:
        batch = _batch(cloud)
        voxel_counts.add(detector.voxelize(batch).num_voxels)
        _compare(detector, onnx_detector, batch)
    assert len(voxel_counts) == len(clouds)  # really different sizes through the same graph


@pytest.mark.slow
def test_hard_voxelization_export(tmp_path, kitti_scan):
    """Hard voxels (V, P, C) + mean VFE: inputs voxel_points / voxel_num_points / coords, dynamic num_voxels."""
    from pc3d.deploy import OnnxDetector, export_onnx

    torch.manual_seed(0)
    cfg = load_config(_repo(CONFIGS["pointpillars_tiny"]), [])
    cfg["model"]["voxelization"].update(mode="hard", max_points_per_voxel=8, max_voxels=40000)
    cfg["model"]["vfe"] = {"type": "mean"}
    detector = build_model(cfg).eval()
    result = export_onnx(detector, cfg, tmp_path / "hard.onnx")
    assert result.input_names == ["voxel_points", "voxel_num_points", "coords"]
    onnx_detector = OnnxDetector(result.path)
    for cloud in (kitti_scan, kitti_scan[:2000]):
        _compare(detector, onnx_detector, _batch(cloud))


def test_multi_frame_batch_and_empty_frame(exported, kitti_scan):
    detector, onnx_detector, _ = exported("flatformer_tiny")
    far_away = np.array([[500.0, 0.0, 0.0, 0.5]], dtype=np.float32)  # nothing in point_range
    batch = _batch(kitti_scan[:4000], far_away, kitti_scan[-3000:])
    _compare(detector, onnx_detector, batch)
    # a batch of only empty frames takes the torch detector's zero-BEV branch
    empty = _batch(far_away)
    _assert_same_boxes(detector.predict(empty), onnx_detector(empty))


def test_predict_points_and_bad_input(exported, kitti_scan, tmp_path):
    from pc3d.deploy import OnnxDetector

    detector, onnx_detector, _ = exported("flatformer_tiny")
    boxes = onnx_detector.predict_points(kitti_scan[:5000])
    _assert_same_boxes(detector.predict(_batch(kitti_scan[:5000])), [boxes])
    with pytest.raises(ValueError, match="points"):
        onnx_detector.predict_points(kitti_scan[:100, :3])
    with pytest.raises(FileNotFoundError, match="path"):
        OnnxDetector(tmp_path / "missing.onnx")
    bad = tmp_path / "plain.onnx"
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(bad))
    with pytest.raises(ValueError, match="pc3d metadata"):
        OnnxDetector(bad)


def test_spconv_baseline_refused_with_reason(capsys):
    from pc3d.cli.export import main
    from pc3d.deploy.onnx_export import ExportError, check_exportable

    cfg = load_config(_repo("configs/synthetic/centerpoint_voxel_tiny.yaml"), [])
    with pytest.raises(ExportError, match="spconv.*no ONNX"):
        check_exportable(cfg)
    assert main([_repo("configs/synthetic/centerpoint_voxel_tiny.yaml"), "--format", "onnx", "--out", "/nonexistent/x.onnx"]) == 2
    err = capsys.readouterr().err
    assert "spconv" in err and "cannot export" in err


def test_cli_export_check_points_and_tensorrt_profile(tmp_path, kitti_scan, capsys, monkeypatch):
    """One CLI run: ONNX export + --check-points on a real (cropped) scan + the TensorRT path up to the builder
    (TensorRT is absent here: exit code 3 after writing the ONNX file and the optimisation profile)."""
    import pc3d.deploy.tensorrt_engine as trt_module
    from pc3d.cli.export import main
    from pc3d.deploy.tensorrt_engine import TensorRTUnavailable

    def unavailable():
        raise TensorRTUnavailable("TensorRT is not installed (test)")

    monkeypatch.setattr(trt_module, "import_tensorrt", unavailable)
    scan = tmp_path / "crop.bin"
    kitti_scan[kitti_scan[:, 0] > 0][:8000].tofile(scan)
    out = tmp_path / "pp.plan"
    code = main([_repo(CONFIGS["pointpillars_tiny"]), "--format", "tensorrt", "--out", str(out),
                 "--check-points", str(scan), "--dim", "4", "--json", "--repeat", "1",
                 "--profile-frames", "2", "--lidar", "tiny16", "--scatter", "scatternd"])
    captured = capsys.readouterr()
    assert code == 3 and "TensorRT engine was not built" in captured.err
    row = json.loads(captured.out.strip().splitlines()[-1])
    assert row["onnx"] == str(tmp_path / "pp.onnx") and (tmp_path / "pp.onnx").is_file() and not out.exists()
    assert row["max_abs_diff"] <= TOL and row["max_box_diff"] <= TOL
    assert row["torch_seconds"] > 0 and row["onnxruntime_seconds"] > 0
    assert row["num_points"] == 8000 and row["num_voxels"] > 0
    assert row["num_boxes_torch"] == row["num_boxes_onnxruntime"]
    assert row["onnxruntime_threads"] == 1  # the ScatterND export is only run single-threaded
    from pc3d.deploy import OnnxDetector
    onnx_model = __import__("onnx").load(str(tmp_path / "pp.onnx"))
    ops = {node.op_type for node in onnx_model.graph.node}
    assert "ScatterND" in ops
    with pytest.raises(ValueError, match="intra_op_threads"):
        OnnxDetector(tmp_path / "pp.onnx", intra_op_threads=2)
    profile = json.loads((tmp_path / "pp.plan.profile.json").read_text())
    assert set(profile) == {"points", "point_voxel", "coords"}
    for name, (low, opt, high) in profile.items():
        assert all(a <= b <= c for a, b, c in zip(low, opt, high))
    stats = row["axis_stats"]
    assert profile["coords"][2][0] >= stats["num_voxels"]["p100"] and profile["points"][2][0] >= stats["num_points"]["p100"]
