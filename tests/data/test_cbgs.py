"""CBGS: class frequencies after resampling follow mmdet3d's CBGSDataset / OpenPCDet's balanced resampling."""
import json

import numpy as np
import pytest
import torch

from pc3d.data.cbgs import CBGSDataset, cbgs_indices, class_frames
from pc3d.data.info_dataset import InfoDataset

CLASSES = ["car", "pedestrian", "bicycle", "bus"]


def skewed_frames(n=400, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        present = {"car"} if rng.random() < 0.9 else set()
        if rng.random() < 0.3:
            present.add("pedestrian")
        if rng.random() < 0.05:
            present.add("bicycle")
        frames.append(present)
    return frames   # "bus" never occurs


def test_counts_follow_the_rule():
    frames = skewed_frames()
    per_class = class_frames(frames, CLASSES)
    total = sum(len(v) for v in per_class.values())
    indices = cbgs_indices(frames, CLASSES, seed=0)
    # the rule, class by class: int(|F_c| * (1/K) / (|F_c| / D)) draws from F_c, with replacement
    expected = {c: int(len(f) * (1 / len(CLASSES)) / (len(f) / total)) if f else 0 for c, f in per_class.items()}
    start = 0
    for name in CLASSES:
        drawn = indices[start:start + expected[name]]
        start += expected[name]
        assert set(drawn.tolist()) <= set(per_class[name]), f"{name}: drew a frame without the class"
        assert len(drawn) == expected[name]
    assert start == len(indices)
    assert expected["bus"] == 0
    # every present class now contributes about D / K frames; the rare class's frames are repeated
    for name in ("car", "pedestrian", "bicycle"):
        assert abs(expected[name] - total / len(CLASSES)) <= 1
    share_before = len(per_class["bicycle"]) / len(frames)
    share_after = np.mean([("bicycle" in frames[i]) for i in indices])
    assert share_after > 3 * share_before


def test_deterministic_in_seed():
    frames = skewed_frames()
    assert np.array_equal(cbgs_indices(frames, CLASSES, 3), cbgs_indices(frames, CLASSES, 3))
    assert not np.array_equal(cbgs_indices(frames, CLASSES, 3), cbgs_indices(frames, CLASSES, 4))
    with pytest.raises(ValueError, match="no training frame contains"):
        cbgs_indices([set(), set()], CLASSES, 0)


def write_info(root, frames):
    (root / "points").mkdir(parents=True)
    infos = []
    for i, present in enumerate(frames):
        np.save(root / "points" / f"{i}.npy", np.zeros((4, 4), np.float32))
        labels = sorted(present)
        infos.append({"frame_id": f"f{i}", "points": f"points/{i}.npy",
                      "boxes": [[3.0 * k, 0, 0, 1, 1, 1, 0] for k in range(len(labels))], "labels": labels})
    (root / "train_infos.json").write_text(json.dumps({"class_names": CLASSES, "point_features": ["x", "y", "z", "intensity"],
                                                       "frames": infos}))


def test_dataset_wrapper_copies_see_distinct_ids(tmp_path):
    frames = skewed_frames(60, seed=1)
    write_info(tmp_path, frames)
    seen = []

    def transform(frame):
        seen.append(frame.frame_id)
        return frame
    base = InfoDataset(tmp_path, "train", CLASSES, ["x", "y", "z", "intensity"])
    data = CBGSDataset(base, CLASSES, seed=0, transform=transform)
    assert np.array_equal(data.indices, cbgs_indices(frames, CLASSES, 0))
    out = [data[i] for i in range(len(data))]
    assert [f.frame_id for f in out] == [f"f{i}" for i in data.indices]      # ids restored
    assert len(set(seen)) == len(seen)                                         # each copy transformed as its own
    assert all(set(data.boxes_of(i).names) == frames[data.indices[i]] for i in range(len(data)))


def test_trainer_uses_balanced_resampling(tmp_path):
    from pc3d.engine.trainer import Trainer
    frames = skewed_frames(30, seed=2)
    write_info(tmp_path / "data", frames)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return (self.w - float(sum(len(b) for b in batch.gt_boxes))) ** 2

    cfg = {"dataset": {"type": "synthetic", "root": str(tmp_path / "data"), "class_names": CLASSES,
                       "point_features": ["x", "y", "z", "intensity"], "balanced_resampling": True},
           "train": {"max_steps": 2, "batch_size": 2, "seed": 0, "optimizer": {"type": "adamw", "lr": 0.01,
                                                                             "weight_decay": 0.0}}}
    trainer = Trainer(cfg, Toy(), tmp_path / "w", progress=False)
    assert isinstance(trainer.dataset, CBGSDataset)
    assert len(trainer.dataset) == len(cbgs_indices(frames, CLASSES, 0))
    trainer.train()
