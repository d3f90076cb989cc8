"""Detection training loop: AdamW + one-cycle, gradient clipping, AMP on CUDA, EMA, DDP, exact resume.

Everything that decides the next step is in the checkpoint (weights, optimizer, scheduler, scaler,
EMA, RNG states, epoch/step), and the data order and augmentations are functions of
(seed, epoch), so `--resume` continues bit-exactly on the CPU.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from pc3d.config import ConfigError, dump_config, require_keys
from pc3d.data.augment import GlobalAugmentation
from pc3d.data.build import build_dataset
from pc3d.checkpoint import (load_checkpoint, load_model_weights, restore_rng_state, rng_state,
                             save_checkpoint)
from pc3d.data.gt_sampling import GTSampler
from pc3d.engine.distributed import DistInfo
from pc3d.structures import collate

TRAIN_KEYS = ("epochs", "max_steps", "batch_size", "num_workers", "optimizer", "schedule", "grad_clip", "amp",
              "ema", "augment", "seed", "deterministic", "log_every", "checkpoint_every_steps", "keep_checkpoints",
              "min_box_points", "gt_sampling")


@dataclass
class TrainSettings:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 2
    num_workers: int = 0
    optimizer: dict = field(default_factory=lambda: {"type": "adamw", "lr": 1e-3, "weight_decay": 0.01})
    schedule: dict = field(default_factory=lambda: {"type": "onecycle"})
    grad_clip: float | None = 10.0
    amp: str = "none"
    ema: dict = field(default_factory=dict)
    augment: dict | None = None
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 3
    # Boxes with fewer LiDAR points are dropped from training targets: a box with no points (fully
    # occluded) asks the network for a peak where there is no evidence (OpenPCDet drops them too).
    min_box_points: int = 1
    # OpenPCDet-style GT sampling (pc3d.data.gt_sampling), applied before the global augmentation
    gt_sampling: dict | None = None

    def __post_init__(self):
        # A zero or negative count would divide by zero or train nothing; each error names the key.
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("num_workers", 0), ("log_every", 1),
                              ("keep_checkpoints", 1), ("min_box_points", 0), ("max_steps", 1),
                              ("checkpoint_every_steps", 1)):
            value = getattr(self, name)
            if value is None and name in ("max_steps", "checkpoint_every_steps"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"train.{name}: expected an int >= {minimum}, got {value!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp: expected 'none', 'bf16' or 'fp16', got {self.amp!r}")

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainSettings":
        require_keys(cfg, TRAIN_KEYS, "train")
        return cls(**cfg)


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed every generator; with `deterministic`, also force deterministic kernels."""
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


class SkipFirst(Sampler):
    """Yields a sampler's indices after skipping the first `skip` (to resume mid-epoch)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self):
        return max(0, len(self.sampler) - self.skip)


def build_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    kind = cfg.pop("type", "adamw")
    if kind != "adamw":
        raise ValueError(f"train.optimizer.type: only 'adamw' is supported, got {kind!r}")
    require_keys(cfg, ("lr", "weight_decay", "betas"), "train.optimizer")
    return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.01),
                             betas=tuple(cfg.get("betas", (0.9, 0.99))))


def build_scheduler(optimizer, cfg: dict, total_steps: int):
    cfg = dict(cfg)
    kind = cfg.pop("type", "onecycle")
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind != "onecycle":
        raise ValueError(f"train.schedule.type: 'onecycle' or 'constant', got {kind!r}")
    require_keys(cfg, ("pct_start", "div_factor", "final_div_factor", "base_momentum", "max_momentum"), "train.schedule")
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(1, total_steps),
        pct_start=cfg.get("pct_start", 0.4), div_factor=cfg.get("div_factor", 10.0),
        final_div_factor=cfg.get("final_div_factor", 1000.0), anneal_strategy="cos",
        base_momentum=cfg.get("base_momentum", 0.85), max_momentum=cfg.get("max_momentum", 0.95), cycle_momentum=True)


class ModelEMA:
    """Exponential moving average of the weights (buffers copied), used for evaluation when enabled."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                ema_v.copy_(v)


def loss_parts(output) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, named scalar parts) of a detector's training output."""
    total = output.total if hasattr(output, "total") else output
    parts = {}
    raw = getattr(output, "parts", None)
    if isinstance(raw, dict):
        parts = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in raw.items()}
    return total, parts


class Trainer:
    def __init__(self, cfg: dict, model: torch.nn.Module, work_dir, dist_info: DistInfo = DistInfo(),
                 data_root: str | None = None, progress: bool = True):
        self.cfg = cfg
        self.settings = TrainSettings.from_config(cfg.get("train", {}))
        self.dist = dist_info
        self.work_dir = Path(work_dir)
        self.progress = progress and dist_info.is_main
        s = self.settings
        set_determinism(s.seed, s.deterministic)
        self.augment = GlobalAugmentation.from_config(s.augment, s.seed)
        self.gt_sampler = GTSampler.from_config(s.gt_sampling, s.seed, data_root or cfg["dataset"].get("root") or ".")
        transform = _TrainingTransform(s.min_box_points, self.augment, self.gt_sampler)
        split = cfg["dataset"].get("train_split", "train")
        if cfg["dataset"].get("balanced_resampling"):  # CBGS: the wrapper applies the transform to its draws
            from pc3d.data.cbgs import CBGSDataset
            self.dataset = CBGSDataset(build_dataset(cfg["dataset"], split, None, data_root),
                                       cfg["dataset"]["class_names"], s.seed, transform)
        else:
            self.dataset = build_dataset(cfg["dataset"], split, transform, data_root)
        if len(self.dataset) == 0:
            raise ValueError(f"training split of {cfg['dataset']['root']} has no frames")
        self.sampler = DistributedSampler(self.dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                          shuffle=True, seed=s.seed, drop_last=True)
        self.steps_per_epoch = max(1, len(self.sampler) // s.batch_size)
        self.total_steps = s.max_steps or s.epochs * self.steps_per_epoch
        self.model = model.to(dist_info.device)
        self.optimizer = build_optimizer(self.model, s.optimizer)
        self.scheduler = build_scheduler(self.optimizer, s.schedule, self.total_steps)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[s.amp]
        use_amp = self.amp_dtype is not None and dist_info.device.type == "cuda"
        self.amp_enabled = use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp_dtype == torch.float16)
        self.ema = ModelEMA(self.model, s.ema.get("decay", 0.999)) if s.ema.get("enabled") else None
        self.ddp_model = self.model
        if dist_info.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.epoch = 0
        self.step = 0
        self.step_in_epoch = 0
        self.log = _make_logger(self.work_dir, dist_info.is_main)
        self.writer = None

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema else None, "epoch": self.epoch, "step": self.step,
                "step_in_epoch": self.step_in_epoch, "rng": rng_state(),
                "config": {k: v for k, v in self.cfg.items() if k != "_source_"}}

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        path = save_checkpoint(self.state(), self.work_dir / f"step_{self.step:07d}.pth")
        save_checkpoint(self.state(), self.work_dir / "latest.pth")
        old = sorted(self.work_dir.glob("step_*.pth"))[:-self.settings.keep_checkpoints]
        for p in old:
            p.unlink()
        return path

    def resume(self, path) -> None:
        state = load_checkpoint(path)
        load_model_weights(self.model, state["model"], str(path))
        for key in ("optimizer", "scheduler", "rng", "step", "epoch"):
            if key not in state:
                raise ValueError(f"{path}: has no '{key}'; it is a weights-only checkpoint, not a training state to resume")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        restore_rng_state(state["rng"])
        self.log.info(f"resumed from {path} at epoch {self.epoch}, step {self.step}")

    # -- loop ----------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch)
        if self.augment is not None:
            self.augment.epoch = self.epoch
        if self.gt_sampler is not None:
            self.gt_sampler.epoch = self.epoch
            if not self.gt_sampler.active and self.step_in_epoch == 0:
                self.log.info(f"epoch {self.epoch}: GT sampling off (train.gt_sampling.disable_after_epoch)")
        sampler = SkipFirst(self.sampler, self.step_in_epoch * self.settings.batch_size)
        # A private generator keeps the loader from drawing on the global RNG (exact resume).
        return DataLoader(self.dataset, batch_size=self.settings.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.settings.num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.settings.seed))

    def train(self) -> dict:
        from tqdm import tqdm

        s = self.settings
        if self.dist.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.work_dir / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        self.log.info(f"training {sum(p.numel() for p in self.model.parameters()):,} parameters for "
                      f"{self.total_steps} steps ({self.steps_per_epoch} per epoch) on {self.dist.device}, "
                      f"world size {self.dist.world_size}")
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, desc="train", dynamic_ncols=True)
        last = {}
        start, frames = time.perf_counter(), 0
        self.ddp_model.train()
        while self.step < self.total_steps:
            for batch in self._loader():
                last = self._train_step(batch)
                frames += batch.batch_size * self.dist.world_size
                self.step += 1
                self.step_in_epoch += 1
                rate = frames / max(time.perf_counter() - start, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", fps=f"{rate:.1f}")
                if self.dist.is_main and (self.step % s.log_every == 0 or self.step == self.total_steps):
                    self._log_scalars(last, rate)
                if s.checkpoint_every_steps and self.step % s.checkpoint_every_steps == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
            else:
                self.epoch += 1
                self.step_in_epoch = 0
                continue
            if self.step_in_epoch >= self.steps_per_epoch:
                self.epoch += 1
                self.step_in_epoch = 0
        bar.close()
        self.save()
        if self.writer is not None:
            self.writer.flush()
        seconds = time.perf_counter() - start
        summary = {"steps": self.step, "seconds": seconds, "frames_per_second": frames / max(seconds, 1e-9), **last}
        self.log.info(f"done: {summary}")
        return summary

    def _train_step(self, batch) -> dict:
        batch = batch.to(self.dist.device)
        with torch.autocast(self.dist.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_enabled):
            output = self.ddp_model(batch)
        total, parts = loss_parts(output)
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss is {float(total)} at step {self.step} (frames {batch.frame_ids}); "
                                     "lower the learning rate or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        grad_norm = float("nan")
        if self.settings.grad_clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {"loss": float(total.detach()), "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"], **parts}

    def _log_scalars(self, values: dict, rate: float) -> None:
        for key, value in values.items():
            if isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(f"train/{key}", value, self.step)
        self.writer.add_scalar("train/frames_per_second", rate, self.step)
        self.log.info(f"step {self.step}/{self.total_steps} epoch {self.epoch} "
                      + " ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float)))

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


class _TrainingTransform:
    """Drops boxes with fewer than `min_points` points (when counts are known), pastes database objects
    (GT sampling, as OpenPCDet: before the global augmentation), then augments."""

    def __init__(self, min_points: int, augment: GlobalAugmentation | None, gt_sampler: GTSampler | None = None):
        self.min_points, self.augment, self.gt_sampler = min_points, augment, gt_sampler

    def __call__(self, frame):
        boxes = frame.gt_boxes
        if boxes is not None and boxes.num_points is not None and self.min_points > 0:
            frame = replace(frame, gt_boxes=boxes[boxes.num_points >= self.min_points])
        if self.gt_sampler is not None and frame.gt_boxes is not None:
            frame = self.gt_sampler(frame)
        return self.augment(frame) if self.augment is not None else frame


def _make_logger(work_dir: Path, is_main: bool) -> logging.Logger:
    log = logging.getLogger(f"pc3d.train.{work_dir}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if is_main and not log.handlers:
        work_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(work_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    if not is_main:
        log.addHandler(logging.NullHandler())
    return log
