"""Class-balanced grouping and sampling (CBGS, Zhu et al. 2019) of a training split's frames.

The rule of mmdetection3d's CBGSDataset and OpenPCDet's balanced resampling: list, per class, the frames
that contain it (a frame with several classes is listed under each); with K classes and D the total
length of those lists, class c's share is |F_c| / D, and int(|F_c| * (1/K) / (|F_c| / D)) frames are
drawn from F_c with replacement. Every class then contributes about D / K frames, so rare classes are
seen about as often as common ones. Classes that no frame contains contribute nothing.

Enabled with `dataset.balanced_resampling: true` (training split only). The draw is made once from the
training seed, so every rank and a resumed run see the same resampled list.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch


def class_frames(frame_classes: Sequence[set[str]], class_names: Sequence[str]) -> dict[str, list[int]]:
    """Per class, the indices of the frames that contain it (in frame order)."""
    out = {name: [] for name in class_names}
    for index, present in enumerate(frame_classes):
        for name in class_names:
            if name in present:
                out[name].append(index)
    return out


def cbgs_indices(frame_classes: Sequence[set[str]], class_names: Sequence[str], seed: int) -> np.ndarray:
    """The resampled frame indices (see the module docstring), deterministic in `seed`."""
    per_class = class_frames(frame_classes, class_names)
    total = sum(len(v) for v in per_class.values())
    if total == 0:
        raise ValueError(f"balanced resampling: no training frame contains any of the classes {list(class_names)}")
    rng = np.random.default_rng([seed, zlib.crc32(b"cbgs")])
    share = 1.0 / len(class_names)
    picks = []
    for name in class_names:
        frames = per_class[name]
        if not frames:
            continue
        count = int(len(frames) * share / (len(frames) / total))
        picks.append(rng.choice(np.asarray(frames), size=count, replace=True))
    return np.concatenate(picks).astype(np.int64)


class CBGSDataset(torch.utils.data.Dataset):
    """`dataset` resampled by CBGS; `transform` runs on the drawn frames.

    The base dataset must have no transform of its own and expose `boxes_of(index)` (all pc3d detection
    datasets do). A frame drawn several times gets a distinct frame id for the transform (`<id>#<k>`), so
    its copies see different augmentations and GT samples; the id is restored afterwards.
    """

    def __init__(self, dataset, class_names: Sequence[str], seed: int,
                 transform: Callable | None = None):
        self.dataset = dataset
        self.class_names = tuple(class_names)
        self.split = getattr(dataset, "split", "train")
        self.point_features = getattr(dataset, "point_features", None)
        present = [set(dataset.boxes_of(i).names) for i in range(len(dataset))]
        self.indices = cbgs_indices(present, self.class_names, seed)
        occurrence = {}
        self.copy_number = np.zeros(len(self.indices), np.int64)
        for k, index in enumerate(self.indices.tolist()):
            self.copy_number[k] = occurrence.get(index, 0)
            occurrence[index] = self.copy_number[k] + 1
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def boxes_of(self, index: int):
        return self.dataset.boxes_of(int(self.indices[index]))

    def __getitem__(self, index: int):
        frame = self.dataset[int(self.indices[index])]
        if self.transform is None:
            return frame
        original = frame.frame_id
        copy = int(self.copy_number[index])
        if copy:
            frame = replace(frame, frame_id=f"{original}#{copy}")
        return replace(self.transform(frame), frame_id=original)
