"""What a user expects of the commands (issue 17): settable train keys, --threads, test's work dir, infer's
checkpoint / score threshold / intensity, register's degenerate input, --gt and --render, export's --opset."""
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pc3d.testing.scenes import room_cloud


REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/synthetic/pointpillars_tiny.yaml"
SHIPPED = REPO / "configs/synthetic/flatformer_synthetic_tiny.yaml"
SHIPPED_CKPT = REPO / "checkpoints/flatformer_synthetic_tiny.pth"


def tool(name):
    return importlib.import_module(f"pc3d.cli.{name}")


# -- train ----------------------------------------------------------------------------------------------
def test_every_trainer_key_is_settable(tmp_path):
    import dataclasses

    from pc3d.config import load_config
    from pc3d.engine.trainer import TRAIN_KEYS, TrainSettings
    bare = tmp_path / "bare.yaml"
    bare.write_text(f"_base_: [{CONFIG}]\ntrain: {{_delete_: true, epochs: 1}}\n")
    cfg = load_config(bare, ["train.max_steps=7", "train.checkpoint_every_steps=3", "train.min_box_points=2",
                             "train.amp=bf16"], defaults=tool("train").train_defaults)
    assert set(cfg["train"]) == {f.name for f in dataclasses.fields(TrainSettings)} == set(TRAIN_KEYS)
    settings = TrainSettings.from_config(cfg["train"])
    assert (settings.max_steps, settings.checkpoint_every_steps, settings.min_box_points, settings.amp) == (7, 3, 2, "bf16")
    assert settings.epochs == 1 and settings.batch_size == TrainSettings.batch_size


def test_train_max_steps_and_threads(tmp_path, tiny_dataset, capsys):
    rc = tool("train").main([str(CONFIG), "--set", f"dataset.root={tiny_dataset}", "--set", "train.max_steps=1",
                             "--set", "train.batch_size=1", "--threads", "1", "--work-dir", str(tmp_path / "w"),
                             "--no-progress", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    assert torch.get_num_threads() == 1
    assert tool("train").main([str(CONFIG), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


# -- test -----------------------------------------------------------------------------------------------
def test_test_writes_into_work_dirs_not_beside_the_checkpoint(tmp_path, tiny_dataset, monkeypatch, capsys):
    from pc3d.cli.test import default_out_dir
    assert default_out_dir(SHIPPED, "val") == Path("work_dirs/flatformer_synthetic_tiny/eval_val")
    before = sorted(p.name for p in SHIPPED_CKPT.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    assert tool("test").main([str(SHIPPED), str(SHIPPED_CKPT), "--set", f"dataset.root={tiny_dataset}", "--json",
                              "--no-progress"]) == 0
    assert json.loads((tmp_path / "work_dirs/flatformer_synthetic_tiny/eval_val/metrics.json").read_text())["frames"] == 2
    assert sorted(p.name for p in SHIPPED_CKPT.parent.iterdir()) == before


# -- infer ----------------------------------------------------------------------------------------------
def _scan(tmp_path, intensity_max=1.0):
    rng = np.random.default_rng(0)
    path = tmp_path / "scan.npy"
    np.save(path, np.c_[rng.uniform(-30, 30, (4000, 2)), rng.uniform(-2, 1, 4000),
                        rng.uniform(0, intensity_max, 4000)].astype(np.float32))
    return path


def test_infer_without_checkpoint_warns_and_marks(tmp_path, capsys):
    out = tmp_path / "boxes.json"
    assert tool("infer").main([str(CONFIG), "--points", str(_scan(tmp_path)), "--out", str(out)]) == 0
    assert "RANDOM, UNTRAINED" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["random_weights"] is True and result["checkpoint"] is None


def test_infer_score_threshold_defaults_to_the_config_and_the_demo(tmp_path, capsys):
    from pc3d.cli.common import config_score_threshold
    from pc3d.config import load_config
    scan = str(_scan(tmp_path))
    assert tool("infer").main([str(SHIPPED), str(SHIPPED_CKPT), "--points", scan, "--json"]) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert default["random_weights"] is False
    assert default["score_threshold"] == config_score_threshold(load_config(SHIPPED)) == 0.1
    assert tool("infer").main([str(SHIPPED), str(SHIPPED_CKPT), "--points", scan, "--json",
                               "--score-threshold", "0.3"]) == 0
    strict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [b for b in default["boxes"] if b["score"] >= 0.3] == strict["boxes"]
    assert all(b["score"] >= 0.1 for b in default["boxes"])
    assert tool("infer").main([str(SHIPPED), str(SHIPPED_CKPT), "--points", scan, "--json",
                               "--score-threshold", "0.02"]) == 0
    loose = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(loose["boxes"]) >= len(default["boxes"])
    for bad in ("nan", "1.5", "-0.1"):
        assert tool("infer").main([str(SHIPPED), str(SHIPPED_CKPT), "--points", scan, "--score-threshold", bad]) == 2
        assert "--score-threshold" in capsys.readouterr().err


def test_intensity_is_scaled_from_the_config_in_cli_and_demo(tmp_path, capsys):
    from pc3d.cli.common import SCAN_INTENSITY_MAX, scale_intensity
    from pc3d.cli.demo import REAL_SCANS
    from pc3d.config import load_config
    synthetic = load_config(SHIPPED)
    nuscenes = load_config(REPO / "configs/nuscenes/centerpoint_voxel.yaml")
    assert synthetic["dataset"]["intensity_max"] == 1.0 and nuscenes["dataset"]["intensity_max"] == 255.0
    assert {source for *_, source in REAL_SCANS} == {"kitti", "nuscenes"} <= set(SCAN_INTENSITY_MAX)
    raw = np.array([[0, 0, 0, 255.0], [1, 1, 1, 51.0]], np.float32)
    scaled = scale_intensity(raw, ("x", "y", "z", "intensity"), synthetic, SCAN_INTENSITY_MAX["nuscenes"], "sweep")
    np.testing.assert_allclose(scaled[:, 3], [1.0, 0.2], rtol=1e-6)
    assert raw[0, 3] == 255.0  # the input is not modified
    np.testing.assert_array_equal(scale_intensity(raw, ("x", "y", "z", "intensity"), nuscenes, 255.0, "s"), raw)
    # infer: a 0..255 scan on a [0, 1] model warns; --intensity-max 255 rescales it and gives the same boxes
    scan255 = _scan(tmp_path, 255.0)
    assert tool("infer").main([str(SHIPPED), str(SHIPPED_CKPT), "--points", str(scan255), "--json"]) == 0
    assert "--intensity-max" in capsys.readouterr().err
    assert tool("infer").main([str(SHIPPED), str(SHIPPED_CKPT), "--points", str(scan255), "--json",
                               "--intensity-max", "255"]) == 0
    rescaled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["boxes"]
    points = np.load(scan255)
    points[:, 3] *= np.float32(1 / 255)
    np.save(tmp_path / "unit.npy", points)
    assert tool("infer").main([str(SHIPPED), str(SHIPPED_CKPT), "--points", str(tmp_path / "unit.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["boxes"] == rescaled


# -- register -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("points, message", [
    (np.zeros((1, 3)), "1 point(s)"),
    (np.ones((500, 3)), "one location"),
])
def test_register_refuses_degenerate_clouds(tmp_path, capsys, points, message):
    np.save(tmp_path / "bad.npy", points.astype(np.float32))
    good = np.random.default_rng(0).uniform(0, 2, (500, 3)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    assert tool("register").main([str(tmp_path / "good.npy"), str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.npy" in err


def _room(seed=0, n_per_face=400):
    return room_cloud(seed, n_per_face, 600)


def test_register_gt_metrics_and_render(tmp_path, capsys):
    from PIL import Image
    from scipy.spatial.transform import Rotation

    from pc3d.evaluation.registration_metrics import relative_rotation_error, relative_translation_error, transform_rmse
    ref = _room()
    gt = np.eye(4)
    gt[:3, :3] = Rotation.from_euler("zyx", [20, 4, -3], degrees=True).as_matrix()
    gt[:3, 3] = [0.3, -0.2, 0.1]
    src = (ref - gt[:3, 3]) @ gt[:3, :3]
    np.save(tmp_path / "src.npy", src.astype(np.float32))
    np.save(tmp_path / "ref.npy", ref.astype(np.float32))
    np.savetxt(tmp_path / "gt.txt", gt)
    png = tmp_path / "reg.png"
    assert tool("register").main([str(tmp_path / "src.npy"), str(tmp_path / "ref.npy"), "--voxel-size", "0.1",
                                  "--gt", str(tmp_path / "gt.txt"), "--render", str(png), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    est = np.array(info["transform"])
    src32 = np.load(tmp_path / "src.npy").astype(np.float64)
    assert info["rre_deg"] == pytest.approx(relative_rotation_error(est, gt))
    assert info["rte_m"] == pytest.approx(relative_translation_error(est, gt))
    assert info["rmse_m"] == pytest.approx(transform_rmse(est, gt, src32))
    assert info["rre_deg"] < 5 and info["rte_m"] < 0.1
    assert Image.open(png).size[0] > 1000  # before / after / correspondences panels
    assert tool("register").main([str(tmp_path / "src.npy"), str(tmp_path / "ref.npy"), "--gt",
                                  str(tmp_path / "src.npy")]) == 2
    assert "4x4" in capsys.readouterr().err


# -- export ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", ["5", "-1", "13", "17", "99"])
def test_export_refuses_opsets_it_cannot_write(tmp_path, capsys, opset):
    pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    assert tool("export").main([str(CONFIG), "--opset", opset, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--opset {opset}" in err and "18 to 25" in err and not out.exists()


def test_export_writes_the_requested_opset(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    assert tool("export").main([str(CONFIG), "--opset", "19", "--out", str(out)]) == 0
    model = onnx.load(str(out))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [19]


def test_nested_train_blocks_are_settable_whole(tmp_path):
    from pc3d.config import load_config
    from pc3d.engine.trainer import TrainSettings
    cfg = load_config(CONFIG, ["train.ema={enabled: true, decay: 0.99}", "train.augment={flip_x: true}"],
                      defaults=tool("train").train_defaults)
    settings = TrainSettings.from_config(cfg["train"])
    assert settings.ema == {"enabled": True, "decay": 0.99} and settings.augment == {"flip_x": True}
