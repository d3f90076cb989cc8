"""Score a registration method on a 3DMatch-layout benchmark: IR / FMR / RR (tools/test.py, `dataset.type:
threedmatch`).

    dataset: {type: threedmatch, root: DIR, benchmark: 3DMatch | 3DLoMatch | SynMatch | SynLoMatch,
              rotated: false, scenes: null}
    eval:    {protocol: pc3d | roitr, max_pairs: null}

`protocol: pc3d` scores every pair with `pc3d.evaluation.registration_metrics` (IR / FMR on the method's
correspondences at 0.1 m / 5 %, RR from the gt.info information matrix, averaged per scene then over scenes).
`protocol: roitr` scores with RoITr's own scripts (`pc3d.evaluation.roitr_protocol`: up to 1000 sampled
correspondences, float32 inlier ratio; rotated: mean point distance). The registration API reports no match
confidence, so the protocol samples the correspondences uniformly; it needs every pair of the benchmark.
"""
from __future__ import annotations

import numpy as np

from pc3d.config import ConfigError, require_keys, require_sections

DATASET_KEYS = ("type", "root", "benchmark", "rotated", "scenes", "seed", "rotation_protocol")
EVAL_KEYS = ("protocol", "max_pairs")
PROTOCOLS = ("pc3d", "roitr")
# model.type -> registration method name of `pc3d.models.registration.build.build_registration`
METHODS = {"fpfh_ransac": "fpfh", "roitr": "roitr"}
FPFH_KEYS = ("type", "voxel_size", "max_iterations", "confidence", "icp", "mutual_filter", "seed", "restarts")


def needs_checkpoint(cfg: dict) -> bool:
    """Whether the config's method has learned weights (a checkpoint must be given)."""
    return cfg["model"].get("type") != "fpfh_ransac"


def build_method(cfg: dict, checkpoint=None):
    """The `Registration` a config describes: FPFH + RANSAC from its `model:` options, or RoITr from `checkpoint`."""
    from pc3d.models.registration.build import build_registration

    model = cfg["model"]
    source = cfg.get("_source_", "config")
    kind = model.get("type")
    if kind not in METHODS:
        raise ConfigError(f"{source}: model.type {kind!r} is not a registration method; known: {sorted(METHODS)}")
    if kind == "fpfh_ransac":
        require_keys(model, FPFH_KEYS, f"{source}: model")
        return build_registration("fpfh", **{k: v for k, v in model.items() if k != "type" and not k.startswith("_")})
    if checkpoint is None:
        raise ConfigError(f"{source}: model.type roitr needs a checkpoint")
    return build_registration("roitr", ckpt=checkpoint)


def build_benchmark(cfg: dict, data_root=None):
    """The `ThreeDMatchBenchmark` of a config's `dataset:` block (`data_root` overrides `dataset.root`)."""
    from pathlib import Path

    from pc3d.data.threedmatch import ThreeDMatchBenchmark

    dataset = cfg["dataset"]
    require_keys(dataset, DATASET_KEYS, f"{cfg.get('_source_', 'config')}: dataset", required=("type", "root"))
    root = Path(data_root or dataset["root"]).expanduser()
    return ThreeDMatchBenchmark(root, dataset.get("benchmark", "3DMatch"), scenes=dataset.get("scenes"),
                                rotated=bool(dataset.get("rotated", False)), seed=int(dataset.get("seed", 0)),
                                rotation_protocol=dataset.get("rotation_protocol", "haar"))


def benchmark_metrics(cfg: dict, checkpoint=None, data_root=None, progress: bool = False) -> dict:
    """Register every pair of the config's benchmark and score it (see the module docstring).

    Returns `{"inlier_ratio", "feature_matching_recall", "registration_recall", ..., "num_pairs",
    "seconds_per_pair", "protocol", "scenes": {scene: {...}}}`."""
    import time

    from tqdm import tqdm

    require_sections(cfg, ("model", "dataset"))
    source = cfg.get("_source_", "config")
    eval_cfg = cfg.get("eval") or {}
    require_keys(eval_cfg, EVAL_KEYS, f"{source}: eval")
    protocol = eval_cfg.get("protocol", "pc3d")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{source}: eval.protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    max_pairs = eval_cfg.get("max_pairs")
    method = build_method(cfg, checkpoint)
    bench = build_benchmark(cfg, data_root)
    count = len(bench) if max_pairs is None else min(int(max_pairs), len(bench))
    if protocol == "roitr" and count != len(bench):
        raise ConfigError(f"{source}: eval.protocol roitr scores whole benchmarks; drop eval.max_pairs")
    records, protocol_pairs, seconds = [], [], 0.0
    for index in tqdm(range(count), desc="pairs", disable=not progress, dynamic_ncols=True):
        src, ref, pair = bench.load_pair(index)
        result = method.register(src, ref)
        seconds += result.seconds
        corr = np.asarray(result.correspondences, dtype=np.int64).reshape(-1, 2)
        if protocol == "pc3d":
            from pc3d.evaluation.registration_metrics import evaluate_pair
            records.append({"scene": pair.scene, "frag_i": pair.frag_i, "frag_j": pair.frag_j,
                            **evaluate_pair(result.transform, pair.transform, information=pair.information,
                                            src_corr=src[corr[:, 0]], ref_corr=ref[corr[:, 1]], src_points=src)})
        else:
            from pc3d.evaluation.roitr_protocol import ProtocolPair
            protocol_pairs.append(ProtocolPair(
                pair.scene, src[corr[:, 0]].astype(np.float32), ref[corr[:, 1]].astype(np.float32),
                np.ones(len(corr), np.float32), result.transform, pair.transform[:3, :3], pair.transform[:3, 3],
                src_points=src))
    if protocol == "pc3d":
        from pc3d.evaluation.registration_metrics import summarize_by_scene
        summary = summarize_by_scene(records)
        metrics = {**summary["mean"], "scenes": summary["scenes"]}
    else:
        from pc3d.evaluation.roitr_protocol import evaluate
        try:
            scored = evaluate(protocol_pairs, bench.root / "benchmarks" / bench.benchmark, rotated=bench.rotated)
        except ZeroDivisionError:  # RoITr's recall divides by the pairs it counts: never a scene's first pair
            raise ValueError(f"{bench.root}: a scene of {bench.benchmark} has no pair RoITr's protocol counts "
                             "(non-consecutive and not the scene's first); use eval.protocol: pc3d") from None
        metrics = {"inlier_ratio": scored.inlier_ratio, "feature_matching_recall": scored.feature_matching_recall,
                   "registration_recall": scored.registration_recall, "num_pairs": count, "scenes": scored.scenes}
    metrics.update(protocol=protocol, benchmark=bench.benchmark, rotated=bench.rotated, method=method.name,
                   seconds_per_pair=seconds / max(count, 1))
    return metrics


def format_benchmark_metrics(metrics: dict) -> str:
    """One table: a row per scene, then the mean."""
    keys = ("inlier_ratio", "feature_matching_recall", "registration_recall")
    lines = [f"{'scene':45s} {'IR':>7s} {'FMR':>7s} {'RR':>7s} {'pairs':>6s}"]
    for scene, row in {**metrics["scenes"], "mean": metrics}.items():
        lines.append(f"{scene:45s} " + " ".join(f"{row[k]:7.4f}" for k in keys) + f" {row['num_pairs']:6d}")
    return "\n".join(lines)
