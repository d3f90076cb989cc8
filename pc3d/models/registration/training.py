"""Small CPU training loop for the RoITr matcher on synthetic registration pairs.

`python -m pc3d.models.registration.training --config configs/threedmatch/roitr_synthetic_tiny.yaml
 --out checkpoints/roitr_synthetic_tiny.pth --minutes 15`

Pairs come from `pc3d.data.synthetic.registration_pairs` when that module provides
`make_registration_pair(seed)`; otherwise from `synthetic_room_pair` below (two partial views of a
random box-room, each in its own sensor frame, `T_gt` mapping src into ref).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .losses import (fine_matching_targets, optimal_transport_nll, overlap_aware_circle_loss, patch_overlaps)
from .roitr import RoITr, RoITrConfig, build_pyramid, prepare_cloud, save_checkpoint


@dataclass
class SyntheticPair:
    src: np.ndarray        # (N, 3) in the src sensor frame
    ref: np.ndarray        # (M, 3) in the ref sensor frame
    transform: np.ndarray  # (4, 4) maps src into ref
    overlap: float


def _sample_rect(rng, origin, u, v, density):
    area = np.linalg.norm(u) * np.linalg.norm(v)
    n = max(int(area * density), 1)
    a, b = rng.random((2, n, 1))
    return origin + a * u + b * v


def _room_points(rng, density: float = 250.0) -> np.ndarray:
    w, d, h = rng.uniform(4, 7), rng.uniform(4, 7), 2.6
    surfaces = [
        ((0, 0, 0), (w, 0, 0), (0, d, 0)),                       # floor
        ((0, 0, 0), (w, 0, 0), (0, 0, h)), ((0, d, 0), (w, 0, 0), (0, 0, h)),
        ((0, 0, 0), (0, d, 0), (0, 0, h)), ((w, 0, 0), (0, d, 0), (0, 0, h)),
    ]
    pts = [_sample_rect(rng, np.array(o, float), np.array(u, float), np.array(v, float), density) for o, u, v in surfaces]
    for _ in range(rng.integers(5, 10)):  # furniture boxes with random yaw
        size = rng.uniform([0.3, 0.3, 0.3], [1.6, 1.0, 1.8])
        centre = np.array([rng.uniform(0.5, w - 0.5), rng.uniform(0.5, d - 0.5), size[2] / 2])
        yaw = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        half = size / 2
        for axis in range(3):
            for sign in (-1, 1):
                o = -half.copy()
                o[axis] = sign * half[axis]
                u = np.zeros(3)
                v = np.zeros(3)
                a1, a2 = [a for a in range(3) if a != axis]
                u[a1] = size[a1]
                v[a2] = size[a2]
                face = _sample_rect(rng, o, u, v, density)
                pts.append(face @ rot.T + centre)
    for _ in range(rng.integers(1, 4)):  # cylinders (lamps, bins)
        r, hh = rng.uniform(0.1, 0.4), rng.uniform(0.5, 2.0)
        c = np.array([rng.uniform(0.5, w - 0.5), rng.uniform(0.5, d - 0.5)])
        n = int(2 * np.pi * r * hh * density)
        t = rng.uniform(0, 2 * np.pi, n)
        pts.append(np.c_[c[0] + r * np.cos(t), c[1] + r * np.sin(t), rng.uniform(0, hh, n)])
    return np.concatenate(pts), np.array([w, d, h])


def _sensor_pose(rng, room, yaw):
    pos = np.array([rng.uniform(0.8, room[0] - 0.8), rng.uniform(0.8, room[1] - 0.8), rng.uniform(1.2, 1.8)])
    pitch, roll = rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.1)
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ ry @ rx
    pose[:3, 3] = pos
    return pose


def _view(rng, world, pose, fov=np.radians(70), max_range=4.5, noise=0.005):
    local = (world - pose[:3, 3]) @ pose[:3, :3]              # sensor frame, x forward
    rng_ = np.linalg.norm(local, axis=1)
    ang = np.arccos(np.clip(local[:, 0] / np.maximum(rng_, 1e-9), -1, 1))
    keep = (ang < fov) & (rng_ < max_range) & (rng_ > 0.3)
    return local[keep] + noise * rng.normal(size=(int(keep.sum()), 3)), keep


def synthetic_room_pair(seed: int, min_overlap: float = 0.2) -> SyntheticPair:
    """Two partial views of a random room; retries until the overlap (fraction of the src view also seen
    by ref) is at least `min_overlap`."""
    rng = np.random.default_rng(seed)
    world, room = _room_points(rng)
    for _ in range(50):
        yaw = rng.uniform(-np.pi, np.pi)
        p_src = _sensor_pose(rng, room, yaw)
        p_ref = _sensor_pose(rng, room, yaw + rng.uniform(-0.8, 0.8))
        src, ks = _view(rng, world, p_src)
        ref, kr = _view(rng, world, p_ref)
        overlap = float((ks & kr).sum() / max(ks.sum(), 1))
        if overlap >= min_overlap and len(src) > 500 and len(ref) > 500:
            return SyntheticPair(src, ref, np.linalg.inv(p_ref) @ p_src, overlap)
    raise RuntimeError(f"seed {seed}: no pair with overlap >= {min_overlap}")


def make_pair(seed: int, overlap: str = "high") -> SyntheticPair:
    """Prefer the shared ray-cast depth-camera pairs (`pc3d.data.synthetic.registration_pairs`); fall back to
    `synthetic_room_pair` when that module is unavailable."""
    try:
        from pc3d.data.synthetic.registration_pairs import make_registration_pair
    except ImportError:
        return synthetic_room_pair(seed)
    p = make_registration_pair(seed, overlap=overlap)
    return SyntheticPair(np.asarray(p.src_points, np.float64), np.asarray(p.ref_points, np.float64),
                         np.asarray(p.transform, np.float64), float(p.overlap))


def subsample_pair(pair: SyntheticPair, max_points: int, rng: np.random.Generator) -> SyntheticPair:
    """Random subset of at most `max_points` per cloud (normals + FPS on 18k-point scans dominate a step)."""
    def pick(points):
        if len(points) <= max_points:
            return points
        return points[rng.choice(len(points), max_points, replace=False)]
    return SyntheticPair(pick(pair.src), pick(pair.ref), pair.transform, pair.overlap)


@dataclass
class TrainConfig:
    iterations: int = 100000
    minutes: float = 15.0
    lr: float = 1e-3
    overlap_radius: float = 0.15
    matching_radius: float = 0.1
    num_gt_patch_pairs: int = 32
    fine_loss_weight: float = 1.0
    seed: int = 0
    max_raw_points: int = 8000


def pair_losses(model: RoITr, pair: SyntheticPair, train: TrainConfig, dtype=torch.float32):
    """(total, coarse, fine) losses of one pair."""
    cfg = model.config
    sx, sn, _ = prepare_cloud(pair.src, cfg.num_points, cfg.normal_k, dtype)
    rx, rn, _ = prepare_cloud(pair.ref, cfg.num_points, cfg.normal_k, dtype)
    out = model(sx, sn, rx, rn, build_pyramid(sx, sn, cfg), build_pyramid(rx, rn, cfg))
    transform = torch.as_tensor(pair.transform, dtype=dtype)
    fl = cfg.fine_level
    s_patch_xyz = out.src_pyramid.xyz[fl][out.src_patches]
    r_patch_xyz = out.ref_pyramid.xyz[fl][out.ref_patches]
    overlaps = patch_overlaps(s_patch_xyz, r_patch_xyz, transform, train.overlap_radius)
    coarse = overlap_aware_circle_loss(out.src_coarse, out.ref_coarse, overlaps)
    flat = overlaps.flatten()
    k = int(min(train.num_gt_patch_pairs, int((flat > 0.1).sum())))
    if k == 0:
        return coarse, coarse.detach(), torch.zeros(())
    top = torch.topk(flat, k).indices
    s_nodes, r_nodes = top // overlaps.shape[1], top % overlaps.shape[1]
    plans = model.patch_log_plans(out, s_nodes, r_nodes)
    targets = fine_matching_targets(s_patch_xyz[s_nodes], r_patch_xyz[r_nodes], transform, train.matching_radius)
    fine = optimal_transport_nll(plans, targets)
    return coarse + train.fine_loss_weight * fine, coarse.detach(), fine.detach()


def train(config: RoITrConfig, train_cfg: TrainConfig, out_path, log_every: int = 20) -> RoITr:
    torch.manual_seed(train_cfg.seed)
    model = RoITr(config).train()
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    start = time.time()
    history = []
    it = 0
    while it < train_cfg.iterations and time.time() - start < train_cfg.minutes * 60:
        pair = make_pair(train_cfg.seed * 1_000_003 + it, "low" if it % 4 == 3 else "high")
        pair = subsample_pair(pair, train_cfg.max_raw_points, np.random.default_rng(it))
        loss, coarse, fine = pair_losses(model, pair, train_cfg)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        history.append((float(coarse), float(fine)))
        if it % log_every == 0:
            c, f = np.mean(history[-log_every:], axis=0)
            print(f"it {it} t={time.time() - start:.0f}s coarse={c:.3f} fine={f:.3f}", flush=True)
        if it % 200 == 0 and it:
            save_checkpoint(model, out_path, {"iterations": it})
        it += 1
    save_checkpoint(model, out_path, {"iterations": it, "seconds": time.time() - start})
    return model.eval()


def load_config_yaml(path) -> tuple[RoITrConfig, TrainConfig]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    return RoITrConfig.from_dict(data.get("model", {})), TrainConfig(**data.get("train", {}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/threedmatch/roitr_synthetic_tiny.yaml")
    parser.add_argument("--out", default="checkpoints/roitr_synthetic_tiny.pth")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_cfg, train_cfg = load_config_yaml(args.config)
    if args.minutes is not None:
        train_cfg.minutes = args.minutes
    train(model_cfg, train_cfg, args.out)


if __name__ == "__main__":
    main()
