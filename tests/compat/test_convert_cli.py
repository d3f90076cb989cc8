"""tools/convert_checkpoint.py: OpenPCDet YAML + checkpoint -> DIR/config.yaml + DIR/model.pth that
tools/infer.py uses unchanged; --verify-fixture errors are one clear line."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from pc3d.cli import convert_checkpoint, infer

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
DETECTOR = FIXTURE_DIR / "openpcdet_centerpoint_nuscenes_detector.pt"


def _reference_files(tmp_path):
    """An OpenPCDet-layout config + checkpoint: the tiny detector fixture's MODEL and weights."""
    fx = torch.load(DETECTOR, weights_only=True)
    cfg = {"CLASS_NAMES": fx["class_names"],
           "DATA_CONFIG": {"DATASET": "NuScenesDataset", "POINT_CLOUD_RANGE": fx["point_cloud_range"],
                           "POINT_FEATURE_ENCODING": {"used_feature_list": ["x", "y", "z", "intensity", "timestamp"]},
                           "DATA_PROCESSOR": [{"NAME": "transform_points_to_voxels", "VOXEL_SIZE": fx["voxel_size"],
                                               "MAX_POINTS_PER_VOXEL": 10,
                                               "MAX_NUMBER_OF_VOXELS": {"train": 120000, "test": 160000}}]},
           "MODEL": fx["model_cfg"]}
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(cfg))
    torch.save({"model_state": fx["state_dict"], "epoch": 20}, tmp_path / "ref.pth")
    return tmp_path / "ref.yaml", tmp_path / "ref.pth"


def test_convert_then_infer(tmp_path, nuscenes_scan, capsys):
    ref_cfg, ref_ckpt = _reference_files(tmp_path)
    out = tmp_path / "converted"
    code = convert_checkpoint.main(["--from", "openpcdet", "--cfg", str(ref_cfg), "--ckpt", str(ref_ckpt),
                                    "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["dataset"]["point_features"] == ["x", "y", "z", "intensity", "time_lag"]
    assert config["model"]["backbone_3d"]["grid_pad"] == [1, 0, 0]
    assert config["model"]["head"]["decode"]["size_clamp"] is None
    scan = tmp_path / "scan.npy"
    import numpy as np
    points = nuscenes_scan.copy()
    points[:, 4] = 0.0
    np.save(scan, points)
    result = infer.run(infer.parse_args([str(out / "config.yaml"), str(out / "model.pth"), "--points", str(scan)]))
    assert result["boxes"], "the converted tiny CenterPoint should decode boxes on a real scan"
    labels = {b["label"] for b in result["boxes"]}
    assert labels <= set(config["dataset"]["class_names"])


def test_convert_reports_missing_config(tmp_path, capsys):
    code = convert_checkpoint.main(["--from", "openpcdet", "--cfg", str(tmp_path / "nope.yaml"),
                                    "--ckpt", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "reference config not found" in capsys.readouterr().err


def test_convert_rejects_unsupported_detector(tmp_path, capsys):
    ref_cfg, ref_ckpt = _reference_files(tmp_path)
    cfg = yaml.safe_load(ref_cfg.read_text())
    cfg["MODEL"]["NAME"] = "PVRCNN"
    ref_cfg.write_text(yaml.safe_dump(cfg))
    code = convert_checkpoint.main(["--from", "openpcdet", "--cfg", str(ref_cfg), "--ckpt", str(ref_ckpt),
                                    "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "PVRCNN" in err and "CenterPoint" in err


def test_verify_fixture_bad_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"reference": {"repo": "x/y"}}, bad)
    assert convert_checkpoint.main(["--verify-fixture", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing key(s)" in err and len(err.splitlines()) == 1


def test_verify_fixture_unknown_repo(tmp_path, capsys):
    fx = torch.load(FIXTURE_DIR / "openpcdet_centerpoint_nuscenes_map_to_bev.pt", weights_only=True)
    fx["reference"]["repo"] = "someone/else"
    torch.save(fx, tmp_path / "f.pt")
    assert convert_checkpoint.main(["--verify-fixture", str(tmp_path / "f.pt")]) == 2
    assert "no converter for reference repo 'someone/else'" in capsys.readouterr().err


def test_verify_fixture_fails_on_a_perturbed_output(tmp_path, capsys):
    fx = torch.load(FIXTURE_DIR / "openpcdet_centerpoint_nuscenes_backbone_2d.pt", weights_only=True)
    fx["outputs"]["spatial_features_2d"] = fx["outputs"]["spatial_features_2d"] + 1e-3
    torch.save(fx, tmp_path / "f.pt")
    assert convert_checkpoint.main(["--verify-fixture", str(tmp_path / "f.pt"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out.strip())
    assert not report["ok"] and report["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_verify_fixture_detects_a_swapped_norm(tmp_path, capsys):
    """A model that uses pc3d's default head norm (eps 1e-3) instead of OpenPCDet's (1e-5) must not match."""
    fx = torch.load(FIXTURE_DIR / "openpcdet_centerpoint_nuscenes_dense_head.pt", weights_only=True)
    fx["model_cfg"]["BN_EPS"] = 1e-3  # converter builds eps 1e-3; the fixture's numbers came from 1e-5
    torch.save(fx, tmp_path / "f.pt")
    assert convert_checkpoint.main(["--verify-fixture", str(tmp_path / "f.pt"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out.strip())["max_abs_diff"] > 1e-4
