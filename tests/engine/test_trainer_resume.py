"""Checkpoints are atomic, errors are clear and --resume continues bit-exactly (toy model, fast)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from pc3d.engine.trainer import Trainer


class ToyDetector(torch.nn.Module):
    """Predicts the number of boxes from pooled point features; has dropout to exercise the RNG."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def forward(self, batch):
        losses = []
        for i in range(batch.batch_size):
            pts = batch.points_of(i)
            target = torch.tensor(float(len(batch.gt_boxes[i])))
            losses.append((self.mlp(pts).mean() - target) ** 2)
        return torch.stack(losses).mean()


def write_toy_dataset(root: Path, frames: int = 6):
    rng = np.random.default_rng(0)
    (root / "points").mkdir(parents=True)
    infos = []
    for i in range(frames):
        np.save(root / "points" / f"{i:03d}.npy", rng.normal(size=(50, 4)).astype(np.float32))
        n = int(rng.integers(0, 3))
        boxes = rng.normal(size=(n, 7))
        boxes[:, 3:6] = np.abs(boxes[:, 3:6]) + 0.1  # valid sizes: ground truth with size <= 0 is refused
        infos.append({"frame_id": f"{i:03d}", "points": f"points/{i:03d}.npy",
                      "boxes": boxes.tolist(), "labels": ["Vehicle"] * n})
    (root / "train_infos.json").write_text(json.dumps({"class_names": ["Vehicle"], "point_features": ["x", "y", "z", "intensity"],
                                                       "frames": infos}))


def toy_config(root, max_steps):
    return {"dataset": {"type": "synthetic", "root": str(root), "class_names": ["Vehicle"],
                        "point_features": ["x", "y", "z", "intensity"]},
            "train": {"max_steps": max_steps, "batch_size": 2, "seed": 3, "log_every": 1,
                      "optimizer": {"type": "adamw", "lr": 0.01, "weight_decay": 0.01},
                      "augment": {"rotation": [-0.5, 0.5], "scale": [0.9, 1.1], "flip_x": True, "flip_y": True},
                      "ema": {"enabled": True, "decay": 0.9}}}


def run(cfg, work_dir, resume=None):
    torch.manual_seed(0)
    trainer = Trainer(cfg, ToyDetector(), work_dir, progress=False)
    if resume:
        trainer.resume(resume)
    trainer.train()
    return trainer


def test_resume_is_bit_exact(tmp_path):
    write_toy_dataset(tmp_path / "data")
    straight = run(toy_config(tmp_path / "data", 14), tmp_path / "a")  # 14 steps = 4 epochs + 2 (mid-epoch stop)
    half = run(toy_config(tmp_path / "data", 14) | {"train": toy_config(tmp_path / "data", 14)["train"] | {"checkpoint_every_steps": 7}},
               tmp_path / "b")
    # a run that stops at step 7 (mid-epoch: 3 steps per epoch) then resumes from that checkpoint
    resumed = run(toy_config(tmp_path / "data", 14), tmp_path / "c", resume=tmp_path / "b" / "step_0000007.pth")
    for a, c in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, c)
    for a, c in zip(straight.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()):
        assert torch.equal(a, c)
    assert resumed.step == 14 and half.step == 14
    assert (tmp_path / "a" / "config.yaml").exists() and (tmp_path / "a" / "train.log").read_text()
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))


def test_atomic_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    def exploding_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # interrupted mid-write
    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no temp files left behind


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pth.*corrupt"):
        load_checkpoint(tmp_path / "bad.pth")
    save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "truncated.pth")
    model = ToyDetector()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mlp.3")}
    state["mlp.0.weight"] = torch.zeros(8, 4)
    state["extra.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, state, "other.pth")
    text = str(err.value)
    assert "mlp.3.weight" in text and "extra.bias" in text and "mlp.0.weight: checkpoint (8, 4) vs model (16, 4)" in text


def test_missing_dataset_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root .*nowhere.* does not exist"):
        Trainer(toy_config(tmp_path / "nowhere", 2), ToyDetector(), tmp_path / "w", progress=False)


def test_unknown_train_key(tmp_path):
    write_toy_dataset(tmp_path / "data")
    cfg = toy_config(tmp_path / "data", 2)
    cfg["train"]["epohcs"] = 3
    with pytest.raises(ValueError, match="epohcs.*did you mean 'epochs'"):
        Trainer(cfg, ToyDetector(), tmp_path / "w", progress=False)


@pytest.mark.slow
def test_resume_2k_steps_is_bit_exact(tmp_path):
    """The issue's protocol at full length: 2k steps straight == 1k + resume + 1k (toy detector, CPU)."""
    write_toy_dataset(tmp_path / "data")
    cfg = toy_config(tmp_path / "data", 2000)
    cfg["train"]["log_every"] = 500
    straight = run(cfg, tmp_path / "a")
    cfg_b = toy_config(tmp_path / "data", 2000)
    cfg_b["train"].update(log_every=500, checkpoint_every_steps=1000)
    run(cfg_b, tmp_path / "b")
    resumed = run(cfg, tmp_path / "c", resume=tmp_path / "b" / "step_0001000.pth")
    for a, c in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, c)
