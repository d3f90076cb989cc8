"""Run a detector over a dataset split (sharded under torchrun) and compute metrics on rank 0."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler

from pc3d.engine.distributed import DistInfo, gather_to_main
from pc3d.structures import Boxes3D, collate


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return i, self.dataset[i]


def _collate_indexed(items):
    return [i for i, _ in items], collate([f for _, f in items])


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset, dist_info: DistInfo = DistInfo(), batch_size: int = 1,
                    num_workers: int = 0, progress: bool = True) -> tuple[list[Boxes3D], list[Boxes3D], float] | None:
    """Predictions and ground truths for every frame, in dataset order, on rank 0 (None elsewhere).

    Returns `(predictions, ground_truths, seconds_per_frame)`.
    """
    from tqdm import tqdm

    model.eval()
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=False)
    loader = DataLoader(_Indexed(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=_collate_indexed)
    local = {}
    start = time.perf_counter()
    for indices, batch in tqdm(loader, desc="eval", disable=not (progress and dist_info.is_main), dynamic_ncols=True):
        outputs = model(batch.to(dist_info.device))
        for index, boxes, gt in zip(indices, outputs, batch.gt_boxes):
            local[index] = (boxes.to("cpu"), gt.to("cpu") if gt is not None else None)
    seconds = (time.perf_counter() - start) / max(1, len(local))
    gathered = gather_to_main(local, dist_info)
    if gathered is None:
        return None
    merged = {}
    for part in gathered:
        merged.update(part)  # the sampler pads with repeats; keys dedupe them
    order = sorted(merged)
    return [merged[i][0] for i in order], [merged[i][1] for i in order], seconds


def within_range(boxes: Boxes3D, point_range) -> Boxes3D:
    """Boxes whose centre lies inside the (x, y) extent of `point_range`."""
    if boxes is None or point_range is None or len(boxes) == 0:
        return boxes
    x0, y0, _, x1, y1, _ = point_range
    c = boxes.boxes
    return boxes[(c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)]


def detection_metrics(predictions: list[Boxes3D], ground_truths: list[Boxes3D], class_names,
                      point_range=None) -> dict:
    """Waymo-style AP/APH (LEVEL_1/LEVEL_2) keyed by the official breakdown names.

    With `point_range`, ground truths (and predictions) whose centre lies outside the detector's x/y
    range are left out, as nuScenes' class ranges do: a detector cannot see past its grid, and the
    synthetic scenes extend beyond it. The range used is reported as `eval_range`.
    """
    from pc3d.evaluation.waymo_metric import waymo_metrics

    if point_range is not None:
        predictions = [within_range(b, point_range) for b in predictions]
        ground_truths = [within_range(b, point_range) for b in ground_truths]
    metrics = waymo_metrics(predictions, ground_truths, class_names)
    if point_range is not None:
        metrics["eval_range"] = list(point_range)
    return metrics


def config_metrics(cfg: dict, predictions: list[Boxes3D], ground_truths: list[Boxes3D]) -> dict:
    """`detection_metrics` as a config asks: `eval.filter_to_point_range` limits it to `dataset.point_range`."""
    from pc3d.config import require_keys

    eval_cfg = cfg.get("eval") or {}
    require_keys(eval_cfg, ("filter_to_point_range",), "eval")
    point_range = cfg["dataset"].get("point_range") if eval_cfg.get("filter_to_point_range") else None
    return detection_metrics(predictions, ground_truths, cfg["dataset"]["class_names"], point_range)


def kitti_dataset_metrics(dataset, predictions: list[Boxes3D]) -> dict:
    """The KITTI benchmark's 3D / BEV AP (R40, R11; easy / moderate / hard) of `predictions` on a
    `KittiDataset`, frames in dataset order: label_2 ground truth as read by the devkit, predictions
    converted to camera boxes and projected to the image (see `KittiDataset.kitti_detections`)."""
    from pc3d.evaluation.kitti_metric import kitti_metrics

    if len(predictions) != len(dataset):
        raise ValueError(f"KITTI metric: {len(predictions)} predictions for {len(dataset)} frames")
    classes = dataset.kitti_eval_classes
    if not classes:
        return {}
    ground_truths = [dataset.kitti_ground_truth(i) for i in range(len(dataset))]
    detections = [dataset.kitti_detections(i, p) for i, p in enumerate(predictions)]
    return kitti_metrics(ground_truths, detections, classes)


def nuscenes_dataset_metrics(dataset, predictions: list[Boxes3D], out_dir) -> dict:
    """The nuScenes devkit's mAP / NDS (and TP errors, per-class AP) of `predictions` on a `NuScenesDataset`
    split, frames in dataset order. The devkit averages over the dataset's classes, which must be nuScenes
    detection classes; its submission and summary files go to `out_dir/nuscenes_eval`."""
    from pc3d.evaluation.nuscenes_eval import evaluate_nuscenes

    if len(predictions) != len(dataset):
        raise ValueError(f"nuScenes metric: {len(predictions)} predictions for {len(dataset)} frames")
    by_token = dict(zip(dataset.sample_tokens, predictions))
    return evaluate_nuscenes(dataset.nusc, by_token, dataset.split, Path(out_dir) / "nuscenes_eval",
                             classes=dataset.class_names)


@dataclass(frozen=True)
class MetricFamily:
    """How `tools/test.py` scores one kind of dataset.

    `detection`: the detector runs over the split (`predict_dataset`) and `compute(cfg, dataset, predictions,
    ground_truths, out_dir)` scores it; otherwise the family is a registration benchmark, which
    `pc3d.engine.registration_benchmark.benchmark_metrics` runs pair by pair.
    """

    name: str
    detection: bool
    compute: Callable[..., dict] | None = None


def _waymo(cfg, dataset, predictions, ground_truths, out_dir) -> dict:
    return config_metrics(cfg, predictions, ground_truths)


def _kitti(cfg, dataset, predictions, ground_truths, out_dir) -> dict:
    # the benchmark's own AP next to the Waymo-style one (as tools/test.py always reported it)
    return {**config_metrics(cfg, predictions, ground_truths), **kitti_dataset_metrics(dataset, predictions)}


def _nuscenes(cfg, dataset, predictions, ground_truths, out_dir) -> dict:
    return nuscenes_dataset_metrics(dataset, predictions, out_dir)


WAYMO = MetricFamily("waymo", True, _waymo)
KITTI = MetricFamily("kitti", True, _kitti)
NUSCENES = MetricFamily("nuscenes", True, _nuscenes)
THREEDMATCH = MetricFamily("threedmatch", False)

# dataset.type -> its metric: the one place tools/test.py chooses what to report
METRICS_BY_DATASET = {"synthetic": WAYMO, "waymo": WAYMO, "info": WAYMO, "kitti": KITTI, "nuscenes": NUSCENES,
                      "lyft": NUSCENES, "threedmatch": THREEDMATCH}


def metric_family(cfg: dict) -> MetricFamily:
    """The `MetricFamily` of a config's `dataset.type` (a `ConfigError` naming the file for an unknown one)."""
    from pc3d.config import ConfigError, require_sections

    kind = require_sections(cfg, ("dataset",))["dataset"].get("type")
    if kind not in METRICS_BY_DATASET:
        raise ConfigError(f"{cfg.get('_source_', 'config')}: dataset.type {kind!r} has no metric; "
                          f"known: {sorted(METRICS_BY_DATASET)}")
    return METRICS_BY_DATASET[kind]


def dataset_metrics(cfg: dict, dataset, predictions: list[Boxes3D], ground_truths: list[Boxes3D], out_dir) -> dict:
    """The metrics of a detection config's dataset type (`METRICS_BY_DATASET`)."""
    family = metric_family(cfg)
    if not family.detection:
        raise ValueError(f"dataset.type {cfg['dataset']['type']!r} is a registration benchmark, not a detection split")
    return family.compute(cfg, dataset, predictions, ground_truths, out_dir)
