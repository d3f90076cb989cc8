"""Small CPU training loop for the RoITr matcher on synthetic registration pairs.

    tools/train.py configs/threedmatch/roitr_synthetic_tiny.yaml --work-dir DIR [--set train.minutes=40]
    python -m pc3d.cli.train_registration --config configs/threedmatch/roitr_synthetic_tiny.yaml \
        --out checkpoints/roitr_synthetic_tiny.pth --minutes 40

Pairs come from `pc3d.data.synthetic.registration_pairs.make_registration_pair` (ray-cast depth-camera
scans of furnished rooms; validation seeds start at `VAL_SEED` and are never used for training).
Generating a pair and estimating its normals costs about half a training step on the CPU (~0.3 s vs ~0.5 s
with the shipped config), so a pool of prepared pairs is kept and each step re-samples one (a fresh random
subset before farthest point sampling gives a different point set every time); a new pair enters the pool
every `new_pair_every` steps. `validate` reports coarse precision (superpoint matches with patch overlap
> 0.1), inlier ratio (tau 0.1 m) and registration recall (RMSE < 0.2 m) on held-out pairs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from pc3d.ops.point_ops import estimate_normals

from .losses import (fine_matching_targets, optimal_transport_nll, overlap_aware_circle_loss, patch_overlaps,
                     transform_points)
from .roitr import RoITr, RoITrConfig, build_pyramid, save_checkpoint
from .sampling import farthest_point_sample

VAL_SEED = 100000  # validation pairs: seeds VAL_SEED + k (benchmarks/bench_registration.py uses the same)


@dataclass
class SyntheticPair:
    src: np.ndarray        # (N, 3) in the src sensor frame
    ref: np.ndarray        # (M, 3) in the ref sensor frame
    transform: np.ndarray  # (4, 4) maps src into ref
    overlap: float


def make_pair(seed: int, overlap: str = "high") -> SyntheticPair:
    """One ray-cast depth-camera pair (`pc3d.data.synthetic.registration_pairs`), float64."""
    from pc3d.data.synthetic.registration_pairs import make_registration_pair
    p = make_registration_pair(seed, overlap=overlap)
    return SyntheticPair(np.asarray(p.src_points, np.float64), np.asarray(p.ref_points, np.float64),
                         np.asarray(p.transform, np.float64), float(p.overlap))


def subsample_pair(pair: SyntheticPair, max_points: int, rng: np.random.Generator) -> SyntheticPair:
    """Random subset of at most `max_points` per cloud."""
    def pick(points):
        if len(points) <= max_points:
            return points
        return points[rng.choice(len(points), max_points, replace=False)]
    return SyntheticPair(pick(pair.src), pick(pair.ref), pair.transform, pair.overlap)


@dataclass
class PreparedPair:
    """A pair with normals estimated once on (at most `RoITrConfig.max_input_points` of) each scan."""

    src: np.ndarray
    src_normals: np.ndarray
    ref: np.ndarray
    ref_normals: np.ndarray
    transform: np.ndarray
    overlap: float


def prepare_pair(pair: SyntheticPair, max_input_points: int, rng: np.random.Generator, normal_k: int = 33) -> PreparedPair:
    """Random subset of `max_input_points` per cloud (as `roitr.prepare_cloud` does at inference) + normals."""
    pair = subsample_pair(pair, max_input_points, rng)
    return PreparedPair(pair.src, estimate_normals(pair.src, normal_k), pair.ref, estimate_normals(pair.ref, normal_k),
                        pair.transform, pair.overlap)


def sample_clouds(prepared: PreparedPair, num_points: int, rng: np.random.Generator, keep_fraction=(0.7, 1.0),
                  dtype=torch.float32):
    """FPS `num_points` from a random `keep_fraction` subset of each cloud -> (sx, sn, rx, rn) tensors."""
    out = []
    for xyz, normals in ((prepared.src, prepared.src_normals), (prepared.ref, prepared.ref_normals)):
        keep = max(int(len(xyz) * rng.uniform(*keep_fraction)), min(num_points, len(xyz)))
        subset = rng.choice(len(xyz), keep, replace=False)
        pts = torch.from_numpy(np.ascontiguousarray(xyz[subset])).to(dtype)
        idx = farthest_point_sample(pts, num_points)
        out += [pts[idx], torch.from_numpy(normals[subset]).to(dtype)[idx]]
    return tuple(out)


@dataclass
class TrainConfig:
    iterations: int = 100000
    minutes: float = 15.0
    lr: float = 1e-3
    lr_final_fraction: float = 0.1       # cosine decay of the learning rate to lr * this over `minutes`
    overlap_radius: float = 0.15
    matching_radius: float = 0.1
    num_gt_patch_pairs: int = 32
    fine_loss_weight: float = 1.0
    seed: int = 0
    low_overlap_fraction: float = 0.25   # share of 3DLoMatch-like (10-30 %) pairs
    pool_size: int = 256                 # prepared pairs kept in memory
    new_pair_every: int = 3              # steps between two freshly generated pairs
    checkpoint_every: int = 200
    log_every: int = 20
    threads: int = 1                     # torch intra-op threads (per-pair tensors are small)


def pair_losses(model: RoITr, clouds, transform_np: np.ndarray, train: TrainConfig, stats: dict | None = None):
    """(total, coarse, fine) losses of one pair given `clouds = (sx, sn, rx, rn)` tensors.

    When `stats` is a dict it receives ground-truth statistics (positive patch pairs, matches per patch
    pair, dustbin share) for diagnosing the targets."""
    cfg = model.config
    sx, sn, rx, rn = clouds
    dtype = sx.dtype
    out = model(sx, sn, rx, rn, build_pyramid(sx, sn, cfg), build_pyramid(rx, rn, cfg))
    transform = torch.as_tensor(transform_np, dtype=dtype)
    fl = cfg.fine_level
    s_patch_xyz = out.src_pyramid.xyz[fl][out.src_patches]
    r_patch_xyz = out.ref_pyramid.xyz[fl][out.ref_patches]
    overlaps = patch_overlaps(s_patch_xyz, r_patch_xyz, transform, train.overlap_radius)
    coarse = overlap_aware_circle_loss(out.src_coarse, out.ref_coarse, overlaps)
    flat = overlaps.flatten()
    k = int(min(train.num_gt_patch_pairs, int((flat > 0.1).sum())))
    if stats is not None:
        stats["positive_patch_pairs"] = int((flat > 0.1).sum())
    if k == 0:
        return coarse, coarse.detach(), torch.zeros(())
    top = torch.topk(flat, k).indices
    s_nodes, r_nodes = top // overlaps.shape[1], top % overlaps.shape[1]
    plans = model.patch_log_plans(out, s_nodes, r_nodes)
    targets = fine_matching_targets(s_patch_xyz[s_nodes], r_patch_xyz[r_nodes], transform, train.matching_radius)
    if stats is not None:
        p = targets.shape[1] - 1
        stats["matches_per_patch_pair"] = float(targets[:, :p, :-1].sum((1, 2)).float().mean())
        stats["dustbin_rows"] = float(targets[:, :p, -1].float().mean())
    fine = optimal_transport_nll(plans, targets)
    return coarse + train.fine_loss_weight * fine, coarse.detach(), fine.detach()


@torch.no_grad()
def validate(model: RoITr, pairs: list, pose: str = "lgr") -> dict:
    """Coarse precision, inlier ratio and registration recall (RMSE < 0.2 m) of `model` on prepared pairs."""
    from pc3d.evaluation.registration_metrics import RMSE_THRESHOLD, transform_rmse
    was_training = model.training
    model.eval()
    precision, ratios, hits = [], [], []
    for k, prepared in enumerate(pairs):
        clouds = sample_clouds(prepared, model.config.num_points, np.random.default_rng(k), (1.0, 1.0))
        out = model(*clouds)
        matches = model.match(out)
        gt = torch.as_tensor(prepared.transform, dtype=clouds[0].dtype)
        fl = model.config.fine_level
        overlaps = patch_overlaps(out.src_pyramid.xyz[fl][out.src_patches], out.ref_pyramid.xyz[fl][out.ref_patches],
                                  gt, 0.15)
        sp = matches["superpoint_pairs"]
        precision.append(float((overlaps[sp[:, 0], sp[:, 1]] > 0.1).float().mean()))
        res = torch.linalg.norm(transform_points(matches["src_points"], gt) - matches["ref_points"], dim=1)
        ratios.append(float((res < 0.1).float().mean()) if len(res) else 0.0)
        transform, _ = model.estimate(matches, pose)
        hits.append(transform_rmse(transform, prepared.transform, prepared.src) < RMSE_THRESHOLD)
    model.train(was_training)
    return {"coarse_precision": float(np.mean(precision)), "inlier_ratio": float(np.mean(ratios)),
            "registration_recall": float(np.mean(hits))}


def validation_pairs(count: int, max_input_points: int, normal_k: int = 33) -> list:
    """`count` prepared validation pairs (seeds VAL_SEED + k, every other one low-overlap)."""
    return [prepare_pair(make_pair(VAL_SEED + k, "low" if k % 2 else "high"), max_input_points,
                         np.random.default_rng(k), normal_k) for k in range(count)]


def train(config: RoITrConfig, train_cfg: TrainConfig, out_path, val_pairs: int = 0, log=print,
          load_from=None) -> tuple[RoITr, dict]:
    """Train for `train_cfg.minutes` (or `iterations` steps), checkpointing to `out_path`; `load_from`: start
    from that checkpoint's weights (fresh optimizer and schedule).

    Returns (model in eval mode, summary dict with steps, seconds, pairs seen, last losses and,
    when `val_pairs > 0`, validation metrics of the final model)."""
    torch.manual_seed(train_cfg.seed)
    torch.set_num_threads(max(int(train_cfg.threads), 1))
    rng = np.random.default_rng(train_cfg.seed)
    model = RoITr(config).train()
    if load_from is not None:
        from .roitr import load_checkpoint
        loaded = load_checkpoint(load_from)
        if loaded.config != config:
            raise ValueError(f"load_from: {load_from} was trained with a different model config")
        model.load_state_dict(loaded.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    budget = train_cfg.minutes * 60
    start = time.time()
    pool: list[PreparedPair] = []
    generated = 0
    history = []
    it = 0

    def new_pair():
        nonlocal generated
        seed = train_cfg.seed * 1_000_003 + generated
        kind = "low" if rng.random() < train_cfg.low_overlap_fraction else "high"
        generated += 1
        prepared = prepare_pair(make_pair(seed, kind), config.max_input_points, rng, config.normal_k)
        if len(pool) < train_cfg.pool_size:
            pool.append(prepared)
        else:
            pool[int(rng.integers(len(pool)))] = prepared
        return prepared

    while it < train_cfg.iterations and time.time() - start < budget:
        progress = min((time.time() - start) / budget, 1.0) if budget > 0 else 1.0
        lr = train_cfg.lr * (train_cfg.lr_final_fraction + (1 - train_cfg.lr_final_fraction) * 0.5 * (1 + np.cos(np.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        prepared = new_pair() if it % train_cfg.new_pair_every == 0 or not pool else pool[int(rng.integers(len(pool)))]
        clouds = sample_clouds(prepared, config.num_points, rng)
        loss, coarse, fine = pair_losses(model, clouds, prepared.transform, train_cfg)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        history.append((float(coarse), float(fine)))
        if it % train_cfg.log_every == 0:
            c, f = np.mean(history[-train_cfg.log_every:], axis=0)
            log(f"it {it} t={time.time() - start:.0f}s lr={lr:.2e} pairs={generated} coarse={c:.3f} fine={f:.3f}")
        if it % train_cfg.checkpoint_every == 0 and it:
            save_checkpoint(model, out_path, {"iterations": it})
        it += 1
    seconds = time.time() - start
    save_checkpoint(model, out_path, {"iterations": it, "seconds": seconds})
    model.eval()
    tail = np.mean(history[-50:], axis=0) if history else (float("nan"), float("nan"))
    summary = {"steps": it, "seconds": seconds, "pairs_generated": generated, "coarse_loss": float(tail[0]),
               "fine_loss": float(tail[1]), "checkpoint": str(out_path)}
    if val_pairs:
        summary["val"] = validate(model, validation_pairs(val_pairs, config.max_input_points, config.normal_k))
    return model, summary


def is_registration_config(cfg: dict) -> bool:
    """True for a RoITr config (`model.type: roitr`), which `tools/train.py` / `tools/test.py` dispatch here."""
    return isinstance(cfg.get("model"), dict) and cfg["model"].get("type") == "roitr"


def configs_from_dict(data: dict) -> tuple[RoITrConfig, TrainConfig]:
    model = {k: v for k, v in (data.get("model") or {}).items() if k != "type"}
    train_section = data.get("train") or {}
    known = set(TrainConfig.__dataclass_fields__)
    unknown = set(train_section) - known
    if unknown:
        raise ValueError(f"train: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    return RoITrConfig.from_dict(model), TrainConfig(**train_section)


def train_from_config(cfg: dict, work_dir, log=print, load_from=None) -> dict:
    """`tools/train.py` entry for registration configs: trains, writes `WORK_DIR/latest.pth`, `config.yaml`
    and `train.log`, returns the summary (validated on `eval.pairs` synthetic pairs when given)."""
    from pc3d.config import dump_config
    model_cfg, train_cfg = configs_from_dict(cfg)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dump_config({k: v for k, v in cfg.items() if not k.startswith("_")}, work_dir / "config.yaml")
    with open(work_dir / "train.log", "w") as log_file:
        def both(msg):
            log(msg)
            log_file.write(msg + "\n")
            log_file.flush()
        _, summary = train(model_cfg, train_cfg, work_dir / "latest.pth", int((cfg.get("eval") or {}).get("pairs", 0)), both,
                           load_from)
    return summary


def evaluate_checkpoint(cfg: dict, checkpoint, pairs: int | None = None) -> dict:
    """`tools/test.py` entry for registration configs: coarse precision, inlier ratio (tau 0.1 m) and
    registration recall (RMSE < 0.2 m) with LGR and SVD on `pairs` (default `eval.pairs`, else 6) synthetic
    validation pairs (seeds VAL_SEED + k, every other one low-overlap)."""
    from .roitr import load_checkpoint
    model = load_checkpoint(checkpoint)
    model_cfg, _ = configs_from_dict(cfg)
    if model.config != model_cfg:
        raise ValueError(f"checkpoint {checkpoint}: its model config differs from the config's model section")
    count = int(pairs if pairs is not None else (cfg.get("eval") or {}).get("pairs", 6))
    val = validation_pairs(count, model_cfg.max_input_points, model_cfg.normal_k)
    start = time.time()
    metrics = {"pairs": count}
    for pose in ("lgr", "svd"):
        for key, value in validate(model, val, pose).items():
            metrics[f"{pose}/{key}"] = value
    metrics["seconds_per_pair"] = (time.time() - start) / max(count, 1) / 2
    return metrics


def load_config_yaml(path) -> tuple[RoITrConfig, TrainConfig]:
    return configs_from_dict(yaml.safe_load(Path(path).read_text()) or {})
