"""tools/test.py reports the metric of the config's dataset type (pc3d.engine.evaluate.METRICS_BY_DATASET):
Waymo AP/APH, KITTI AP, the nuScenes devkit's mAP/NDS, or IR/FMR/RR on a 3DMatch-layout benchmark."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.config import ConfigError, load_config
from pc3d.engine.evaluate import (KITTI, METRICS_BY_DATASET, NUSCENES, THREEDMATCH, WAYMO, dataset_metrics,
                                  metric_family)
from pc3d.structures import Boxes3D, Frame, PointCloud

REPO = Path(__file__).resolve().parents[2]
FPFH_CONFIG = REPO / "configs/threedmatch/fpfh_ransac.yaml"


def test_every_dataset_type_has_one_metric():
    assert {k: v.name for k, v in METRICS_BY_DATASET.items()} == {
        "synthetic": "waymo", "waymo": "waymo", "info": "waymo", "kitti": "kitti", "nuscenes": "nuscenes",
        "lyft": "nuscenes", "threedmatch": "threedmatch"}
    for path, family in (("waymo/dsvt_pillar.yaml", WAYMO), ("synthetic/flatformer_tiny.yaml", WAYMO),
                         ("nuscenes/dsvt_pillar.yaml", NUSCENES), ("threedmatch/fpfh_ransac.yaml", THREEDMATCH)):
        assert metric_family(load_config(REPO / "configs" / path)) is family, path
    assert KITTI.detection and WAYMO.detection and NUSCENES.detection and not THREEDMATCH.detection
    with pytest.raises(ConfigError, match="dataset.type 'modelnet' has no metric"):
        metric_family({"dataset": {"type": "modelnet"}, "_source_": "x.yaml"})
    with pytest.raises(ConfigError, match="no 'dataset' section"):
        metric_family({"_source_": "x.yaml"})


def _boxes(xs, scores=None):
    b = torch.tensor([[x, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0] for x in xs])
    return Boxes3D(b, [0] * len(xs), ("Vehicle",), scores=scores, num_points=None if scores else [50] * len(xs))


def test_waymo_and_synthetic_configs_report_waymo_ap():
    for kind in ("waymo", "synthetic"):
        cfg = {"dataset": {"type": kind, "class_names": ["Vehicle"]}, "eval": {"filter_to_point_range": False}}
        metrics = dataset_metrics(cfg, None, [_boxes([10.0], [0.9])], [_boxes([10.0, 30.0])], "unused")
        assert metrics["OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP"] == pytest.approx(0.5, abs=0.02), kind
        assert "NDS" not in metrics


def _nuscenes_frames(n=2, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    sizes = [[4.2, 1.9, 1.6], [0.7, 0.7, 1.8], [1.8, 0.6, 1.7]]
    for i in range(n):
        boxes = np.array([[rng.uniform(-25, 25), rng.uniform(-25, 25), 0.0, *sizes[k], rng.uniform(-3, 3), 0.0, 0.0]
                          for k in range(3)], np.float32)
        pts = np.concatenate([b[:3] + rng.uniform(-0.3, 0.3, size=(30, 3)) * b[3:6] for b in boxes])
        pts = np.concatenate([pts, rng.uniform(0, 1, (len(pts), 1))], 1).astype(np.float32)
        gt = Boxes3D(boxes, [0, 1, 2], ("Vehicle", "Pedestrian", "Cyclist"), num_points=[30] * 3, difficulty=[1] * 3)
        frames.append(Frame(PointCloud(pts), gt, f"f{i}"))
    return frames


def test_nuscenes_config_reports_the_devkit_map_and_nds(tmp_path):
    pytest.importorskip("nuscenes")
    from pc3d.data.build import build_dataset
    from pc3d.testing.nuscenes_writer import write_nuscenes_tables

    write_nuscenes_tables(_nuscenes_frames(), tmp_path / "db", split="synthetic_val")
    classes = ["car", "pedestrian", "bicycle"]
    cfg = {"dataset": {"type": "nuscenes", "root": str(tmp_path / "db"), "class_names": classes,
                       "point_features": ["x", "y", "z", "intensity"], "sweeps": 1},
           "eval": {"filter_to_point_range": False}}
    dataset = build_dataset(cfg["dataset"], "synthetic_val")
    ground_truths = [dataset.boxes_of(i) for i in range(len(dataset))]
    perfect = [Boxes3D(g.boxes, g.labels, g.class_names, scores=torch.linspace(0.9, 0.5, len(g))) for g in ground_truths]
    metrics = dataset_metrics(cfg, dataset, perfect, ground_truths, tmp_path / "out")
    assert metrics["mAP"] == pytest.approx(1.0)
    # one-sample scenes: no GT velocity, so mAVE is 1 by the devkit's NaN rule: NDS = (5 + 4) / 10
    assert metrics["NDS"] == pytest.approx(0.9, abs=1e-3)
    assert set(k for k in metrics if k.startswith("AP/")) == {f"AP/{c}" for c in classes}
    assert (tmp_path / "out/nuscenes_eval/results_nusc.json").is_file()
    assert not any(k.startswith("OBJECT_TYPE_") for k in metrics)  # the devkit's metric, not the Waymo one
    shifted = [Boxes3D(b.boxes + torch.tensor([5.0, 0, 0, 0, 0, 0, 0, 0, 0]), b.labels, b.class_names, b.scores)
               for b in perfect]
    assert dataset_metrics(cfg, dataset, shifted, ground_truths, tmp_path / "out2")["mAP"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 frames"):
        dataset_metrics(cfg, dataset, perfect[:1], ground_truths, tmp_path / "out3")


@pytest.fixture(scope="module")
def synthetic_benchmark(tmp_path_factory):
    """One high-overlap synthetic room pair in the 3DMatch layout, listed twice (fragments 2 and 3 -> fragment 0,
    non-consecutive so that they count for registration recall; RoITr's scripts never count a scene's first
    pair), with the gt.info information matrix."""
    from pc3d.data.synthetic.registration_pairs import information_matrix, make_registration_pair

    root = tmp_path_factory.mktemp("synmatch")
    pair = make_registration_pair(100000, overlap="high")  # FPFH + ICP registers it within 2 cm (test_reg_fpfh)
    scene = root / "synroom-0000"
    scene.mkdir()
    np.save(scene / "cloud_bin_0.npy", pair.ref_points.astype(np.float32))
    np.save(scene / "cloud_bin_2.npy", pair.src_points.astype(np.float32))
    np.save(scene / "cloud_bin_3.npy", pair.src_points.astype(np.float32))
    bench = root / "benchmarks/3DMatch/synroom-0000"
    bench.mkdir(parents=True)
    t = pair.transform
    in_ref = pair.src_points.astype(np.float64) @ t[:3, :3].T + t[:3, 3]

    def entry(j, matrix):
        return f"0\t{j}\t4\n" + "".join("\t".join(f"{v:.10e}" for v in row) + "\n" for row in matrix)
    (bench / "gt.log").write_text(entry(2, t) + entry(3, t))
    (bench / "gt.info").write_text(entry(2, information_matrix(in_ref)) + entry(3, information_matrix(in_ref)))
    return root, pair


def _run_test_tool(capsys, *argv):
    from pc3d.cli.test import main
    assert main([str(FPFH_CONFIG), *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_fpfh_ransac_config_scores_a_3dmatch_benchmark(synthetic_benchmark, tmp_path, capsys):
    from pc3d.evaluation.registration_metrics import evaluate_pair
    from pc3d.models.registration.fpfh_ransac import FPFHRansacRegistration

    root, pair = synthetic_benchmark
    metrics = _run_test_tool(capsys, "--data-root", str(root), "--out-dir", str(tmp_path / "a"))
    assert metrics["protocol"] == "pc3d" and metrics["method"] == "fpfh_ransac" and metrics["num_pairs"] == 2
    assert metrics["registration_recall"] == 1.0 and metrics["feature_matching_recall"] == 1.0
    assert json.loads((tmp_path / "a/metrics.json").read_text()) == metrics
    from pc3d.engine.registration_benchmark import format_benchmark_metrics
    rows = format_benchmark_metrics(metrics).splitlines()
    assert rows[1].split()[0] == "synroom-0000" and rows[2].split()[0] == "mean" and rows[2].split()[-1] == "2"
    # the same numbers as scoring the pair by hand with the config's method
    src, ref = pair.src_points.astype(np.float64), pair.ref_points.astype(np.float64)
    result = FPFHRansacRegistration(voxel_size=0.05, max_iterations=100000, confidence=0.999, icp=True,
                                    mutual_filter=False, seed=0).register(src, ref)
    corr = result.correspondences
    direct = evaluate_pair(result.transform, pair.transform, src_corr=src[corr[:, 0]], ref_corr=ref[corr[:, 1]])
    assert metrics["inlier_ratio"] == pytest.approx(direct["inlier_ratio"], abs=1e-6)
    assert metrics["rre"] == pytest.approx(direct["rre"], abs=1e-6)
    # RoITr's evaluation protocol on the same benchmark: float32 IR over <= 1000 sampled correspondences
    roitr = _run_test_tool(capsys, "--data-root", str(root), "--set", "eval.protocol=roitr",
                           "--out-dir", str(tmp_path / "b"))
    assert roitr["protocol"] == "roitr" and roitr["registration_recall"] == 1.0
    if len(corr) <= 1000:  # every correspondence kept: the same IR up to float32
        assert roitr["inlier_ratio"] == pytest.approx(direct["inlier_ratio"], abs=1e-5)


def test_benchmark_config_errors_are_one_line(synthetic_benchmark, tmp_path, capsys):
    from pc3d.cli.test import main
    root, _ = synthetic_benchmark
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"x")
    for argv, message in (([str(ckpt), "--data-root", str(root)], "has no weights"),
                          (["--data-root", str(root), "--set", "eval.protocol=geo"], "eval.protocol"),
                          (["--data-root", str(root), "--set", "dataset.benchmark=4DMatch"], "benchmark"),
                          (["--data-root", str(tmp_path / "none")], "benchmark folder not found")):
        assert main([str(FPFH_CONFIG), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_real_3dmatch_layout_lists_every_pair(shared_data):
    from pc3d.data.threedmatch import read_gt_log
    from pc3d.engine.registration_benchmark import build_benchmark

    root = shared_data / "3dmatch"
    if not (root / "benchmarks/3DMatch").is_dir():
        pytest.skip(f"{root}/benchmarks/3DMatch missing")
    cfg = load_config(FPFH_CONFIG, [f"dataset.root={root}"])
    bench = build_benchmark(cfg)
    scenes = sorted(p.name for p in (root / "benchmarks/3DMatch").iterdir() if (p / "gt.log").is_file())
    assert len(bench) == sum(len(read_gt_log(root / "benchmarks/3DMatch" / s / "gt.log")) for s in scenes) > 0
    assert bench.scenes == scenes


def test_kitti_config_reports_the_benchmark_ap_beside_waymo_ap(shared_data, tmp_path):
    """The KITTI family: label_2 ground truth through the devkit-style AP, next to the Waymo-style AP."""
    from pc3d.data.build import build_dataset

    if not (shared_data / "kitti/object/training/label_2/000000.txt").is_file():
        pytest.skip("kitti/object/training missing")
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets/val.txt").write_text("000000\n")
    (tmp_path / "training").symlink_to(shared_data / "kitti/object/training")
    cfg = load_config(REPO / "configs/_base_/kitti.yaml", [f"dataset.root={tmp_path}"])
    cfg["eval"] = {"filter_to_point_range": False}
    dataset = build_dataset(cfg["dataset"], "val")
    gt = dataset.boxes_of(0)
    exact = [Boxes3D(gt.boxes, gt.labels, gt.class_names, torch.full((len(gt),), 0.9))]
    metrics = dataset_metrics(cfg, dataset, exact, [gt], tmp_path / "out")
    kitti = {k: v for k, v in metrics.items() if k.startswith("kitti/")}
    assert kitti and max(kitti.values()) > 0  # the ground truth scores on the KITTI benchmark
    assert any(k.startswith("OBJECT_TYPE_") for k in metrics)


def test_lyft_type_builds_the_devkit_loader(shared_data):
    """`dataset.type: lyft` reads the devkit-schema tables (and is scored by the nuScenes family)."""
    pytest.importorskip("nuscenes")
    from pc3d.data.build import build_dataset
    from pc3d.data.nuscenes import NuScenesDataset

    root = shared_data / "lyft/v1.01-train"
    if not root.is_dir():
        pytest.skip(f"{root} missing")
    ds = build_dataset({"type": "lyft", "root": str(root), "class_names": ["car", "pedestrian"],
                        "point_features": ["x", "y", "z", "intensity", "time_lag"], "sweeps": 1}, "all")
    assert isinstance(ds, NuScenesDataset) and len(ds) == 1
    assert metric_family({"dataset": {"type": "lyft"}}) is NUSCENES


def test_tools_test_on_a_nuscenes_config_prints_devkit_metrics(tmp_path, capsys):
    """End to end through tools/test.py: a tiny PointPillars config on a nuScenes-format database gets the
    devkit's mAP / NDS (random weights, so only the keys and the submission are checked, not the values)."""
    pytest.importorskip("nuscenes")
    from pc3d.checkpoint import save_checkpoint
    from pc3d.cli.test import main
    from pc3d.models.build import build_model
    from pc3d.testing.nuscenes_writer import write_nuscenes_tables

    write_nuscenes_tables(_nuscenes_frames(), tmp_path / "db", split="synthetic_val")
    config = tmp_path / "nuscenes_tiny.yaml"
    config.write_text(f"""_base_: {REPO / 'configs/synthetic/pointpillars_tiny.yaml'}
dataset:
  type: nuscenes
  root: {tmp_path / 'db'}
  class_names: [car, pedestrian, bicycle]
  sweeps: 1
  val_split: synthetic_val
model:
  head: {{class_groups: [[car], [pedestrian, bicycle]]}}
""")
    cfg = load_config(config)
    torch.manual_seed(0)
    save_checkpoint({"model": build_model(cfg).state_dict()}, tmp_path / "random.pth")
    assert main([str(config), str(tmp_path / "random.pth"), "--json", "--no-progress",
                 "--out-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"mAP", "NDS", "mATE", "AP/car", "AP/pedestrian", "AP/bicycle"} <= set(metrics)
    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["NDS"] <= 1.0 and metrics["frames"] == 2
    assert not any(k.startswith("OBJECT_TYPE_") for k in metrics)
    submission = json.loads((tmp_path / "eval/nuscenes_eval/results_nusc.json").read_text())
    assert len(submission["results"]) == 2
    assert json.loads((tmp_path / "eval/metrics.json").read_text())["NDS"] == metrics["NDS"]
    from pc3d.cli.test import format_nuscenes_metrics
    table = format_nuscenes_metrics(metrics).splitlines()
    assert table[0].startswith(f"mAP {metrics['mAP']:.4f} NDS {metrics['NDS']:.4f}")
    assert [line.split()[0] for line in table[1:]] == ["car", "pedestrian", "bicycle"]
