"""tools/train.py / tools/test.py dispatch registration configs (`model.type: roitr`) to the RoITr trainer
and evaluator; a few steps on tiny synthetic pairs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "roitr_tiny.yaml"
    path.write_text("""model:
  type: roitr
  num_points: 192
  strides: [1, 4, 2, 2]
  widths: [8, 16, 16, 16]
  knn: [8, 8, 8, 8]
  fine_level: 0
  global_dim: 16
  num_heads: 2
  num_blocks: 1
  position_k: 4
  patch_size: 8
  num_superpoint_matches: 6
  sinkhorn_iterations: 10
  max_input_points: 1500
train: {iterations: 3, minutes: 5.0, pool_size: 2, new_pair_every: 2, log_every: 1}
eval: {pairs: 1}
""")
    return path


def _run(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{args}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def test_train_and_test_tools_dispatch_roitr_configs(tmp_path):
    cfg = _tiny_config(tmp_path)
    work = tmp_path / "work"
    out = _run(["tools/train.py", str(cfg), "--work-dir", str(work), "--json", "--set", "train.iterations=2"])
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["pairs_generated"] >= 1 and summary["seconds"] > 0
    assert set(summary["val"]) == {"coarse_precision", "inlier_ratio", "registration_recall"}
    assert (work / "latest.pth").is_file() and (work / "config.yaml").is_file()
    assert "it 1 " in (work / "train.log").read_text()
    payload = torch.load(str(work / "latest.pth"), weights_only=True)
    assert payload["iterations"] == 2 and payload["config"]["num_points"] == 192

    test = _run(["tools/test.py", str(cfg), str(work / "latest.pth"), "--json", "--out-dir", str(tmp_path / "eval")])
    metrics = json.loads(test.stdout.strip().splitlines()[-1])
    assert metrics["pairs"] == 1 and json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    for key in ("lgr/registration_recall", "svd/registration_recall", "lgr/inlier_ratio", "lgr/coarse_precision"):
        assert 0.0 <= metrics[key] <= 1.0


def test_registration_config_errors(tmp_path):
    from pc3d.config import load_config
    from pc3d.models.registration.training import configs_from_dict, is_registration_config
    cfg = load_config(_tiny_config(tmp_path))
    assert is_registration_config(cfg)
    assert not is_registration_config({"model": {"type": "centerpoint"}})
    model_cfg, train_cfg = configs_from_dict(cfg)
    assert model_cfg.num_points == 192 and train_cfg.iterations == 3
    with pytest.raises(ValueError, match="train: unknown keys"):
        configs_from_dict({"model": {"type": "roitr"}, "train": {"epochs": 3}})
    with pytest.raises(ValueError, match="unknown keys"):
        configs_from_dict({"model": {"type": "roitr", "widht": 3}})
    # the shipped configs are registration configs
    for name in ("roitr_synthetic_tiny.yaml", "roitr_3dmatch.yaml"):
        assert is_registration_config(load_config(REPO / "configs/threedmatch" / name))
