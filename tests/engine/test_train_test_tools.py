"""tools/train.py and tools/test.py end to end on a tiny synthetic dataset: single process and torchrun DDP (gloo, 2 CPU processes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pc3d.data.synthetic import LidarConfig, SceneConfig, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    for split, frames in (("train", 4), ("val", 2)):
        write_synthetic_dataset(root, frames, seed=11, split=split, scene_config=SceneConfig.preset("small"),
                                lidar_config=LidarConfig.preset("tiny16"), progress=False)
    return root


def tiny_config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""_base_: [{REPO / 'configs/synthetic/pointpillars_tiny.yaml'}]
dataset: {{root: {root}}}
model:
  backbone_2d: {{layer_nums: [1, 1], num_filters: [16, 16], num_upsample_filters: [16, 16]}}
  head: {{shared_channels: 16}}
train: {{max_steps: 2, batch_size: 1, seed: 0, log_every: 1,
         optimizer: {{type: adamw, lr: 0.001, weight_decay: 0.01}}}}
""")
    return path


def run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def test_train_then_test_single_process(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path, tiny_dataset)
    work = tmp_path / "work"
    out = run([sys.executable, "tools/train.py", str(cfg), "--work-dir", str(work), "--no-progress", "--json"])
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["frames_per_second"] > 0
    assert (work / "latest.pth").exists() and (work / "config.yaml").exists() and (work / "train.log").exists()
    test = run([sys.executable, "tools/test.py", str(cfg), str(work / "latest.pth"), "--json", "--no-progress",
                "--visualize", "1", "--out-dir", str(tmp_path / "eval")])
    metrics = json.loads(test.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["frames"] == 2
    assert len(list((tmp_path / "eval").glob("0000_*.png"))) == 1
    assert "OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP" in metrics and metrics["frames"] == 2
    assert 0.0 <= metrics["OBJECT_TYPE_TYPE_VEHICLE_LEVEL_2/APH"] <= 1.0
    # fine-tuning: weights from the checkpoint, fresh optimizer and schedule
    tuned = run([sys.executable, "tools/train.py", str(cfg), "--work-dir", str(tmp_path / "ft"), "--no-progress", "--json",
                 "--load-from", str(work / "latest.pth")])
    assert json.loads(tuned.stdout.strip().splitlines()[-1])["steps"] == 2


def test_torchrun_two_cpu_processes_train_and_evaluate(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path, tiny_dataset)
    work = tmp_path / "ddp"
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tools/train.py",
               str(cfg), "--work-dir", str(work), "--no-progress", "--json", "--eval"])
    summaries = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only rank 0 prints and writes"
    assert summaries[0]["steps"] == 2 and "OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP" in summaries[0]["metrics"]
    assert sorted(p.name for p in work.glob("*.pth")) == ["latest.pth", "step_0000002.pth"]


def test_clear_errors(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path, tmp_path / "does_not_exist")
    proc = subprocess.run([sys.executable, "tools/train.py", str(cfg), "--work-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode != 0 and "does_not_exist" in proc.stderr and "does not exist" in proc.stderr
    good = tiny_config(tmp_path, tiny_dataset)
    proc = subprocess.run([sys.executable, "tools/train.py", str(good), "--set", "train.max_stepz=3"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode != 0 and "max_stepz" in proc.stderr and "did you mean 'max_steps'" in proc.stderr
