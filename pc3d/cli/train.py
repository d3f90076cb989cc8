"""pc3d-train / tools/train.py: train a model from a config (single process or torchrun DDP).

    tools/train.py CONFIG [--set key.path=value ...] [--work-dir DIR] [--resume [CKPT]] [--load-from CKPT]
                          [--data-root DIR] [--threads N] [--device auto|cpu|cuda]
    torchrun --nproc_per_node 2 tools/train.py CONFIG ...

Every key of the config's `train:` section is settable with `--set train.KEY=VALUE`, including keys the
config leaves at their default (the trainer's keys: `pc3d.engine.trainer.TRAIN_KEYS`, documented in
docs/training.md), e.g. `--set train.max_steps=100`.
`--resume` continues a training state bit-exactly; `--load-from` starts from a checkpoint's weights (its EMA
weights when it has them, like OpenPCDet's `--pretrained_model`) with a fresh optimizer and schedule.
Both read checkpoints through `pc3d.checkpoint` (tensors only: a file that would run code is refused).
`--threads N` (default 1): torch CPU threads. On a 2-core machine one thread measured faster than torch's
default (see docs/training.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pc3d.cli.errors import UserError, positive, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--work-dir", type=Path, help="default: work_dirs/<config stem>")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from CKPT, or from WORK_DIR/latest.pth when no path is given")
    p.add_argument("--load-from", type=Path, metavar="CKPT",
                   help="start from these weights (fine-tuning); optimizer and schedule start fresh")
    p.add_argument("--data-root", help="use this copy of the config's dataset")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU intra-op threads (default 1: faster than torch's default on small machines; "
                        "registration configs: train.threads)")
    p.add_argument("--eval", action="store_true", help="evaluate on the validation split after training")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the training summary (and metrics) as JSON")
    return p


def main(argv=None) -> int:
    return run_cli(_main, argv)


def train_defaults(cfg: dict) -> None:
    """Fill the detection `train:` section with every key the trainer reads, at its default, so that each is
    settable with `--set` (an override must name an existing key). Registration configs are left alone."""
    import dataclasses

    from pc3d.engine.trainer import TrainSettings
    from pc3d.models.registration.training import is_registration_config

    if is_registration_config(cfg):
        return
    section = cfg.setdefault("train", {})
    if not isinstance(section, dict):
        raise UserError(f"{cfg.get('_source_', 'config')}: 'train' must be a mapping, got {type(section).__name__}")
    for f in dataclasses.fields(TrainSettings):
        if f.name not in section:
            section[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from pc3d.config import load_config
    from pc3d.engine.distributed import cleanup, init_distributed
    from pc3d.engine.trainer import Trainer
    from pc3d.models.build import build_model

    torch.set_num_threads(positive(1 if args.threads is None else args.threads, "--threads"))
    cfg = load_config(args.config, args.overrides, defaults=train_defaults)
    work_dir = args.work_dir or Path("work_dirs") / args.config.stem
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"{work_dir}: --work-dir is a file, not a directory")
    from pc3d.models.registration.training import is_registration_config
    if is_registration_config(cfg):  # model.type: roitr -> the registration trainer (single process, CPU)
        return _train_registration(cfg, work_dir, args)
    dist_info = init_distributed(args.device)
    try:
        model = build_model(cfg)
        if args.load_from:
            from pc3d.models.build import load_weights
            load_weights(model, args.load_from)
        trainer = Trainer(cfg, model, work_dir, dist_info, args.data_root, progress=not args.no_progress)
        if args.resume:
            ckpt = Path(work_dir) / "latest.pth" if args.resume == "latest" else Path(args.resume)
            trainer.resume(ckpt)
        summary = trainer.train()
        if args.eval:
            from pc3d.engine.evaluate import config_metrics, predict_dataset
            from pc3d.data.build import build_dataset
            val = build_dataset(cfg["dataset"], cfg["dataset"].get("val_split", "val"), None, args.data_root)
            result = predict_dataset(trainer.eval_model(), val, dist_info)
            if result is not None:
                summary["metrics"] = config_metrics(cfg, result[0], result[1])
        if dist_info.is_main:
            print(json.dumps(summary, indent=None if args.json else 2))
            print(f"checkpoints and logs: {work_dir}", file=sys.stderr)
    finally:
        cleanup(dist_info)
    return 0


def _train_registration(cfg: dict, work_dir: Path, args) -> int:
    from pc3d.models.registration.training import train_from_config
    if args.resume or args.eval:
        raise UserError("--resume/--eval: registration configs support --work-dir, --set, --load-from and --json (no --resume/--eval;"
                         " evaluate with tools/test.py CONFIG WORK_DIR/latest.pth)")
    if args.threads is not None:  # the registration trainer sets its threads from train.threads
        cfg.setdefault("train", {})["threads"] = args.threads
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    summary = train_from_config(cfg, work_dir, log=log, load_from=args.load_from)
    print(json.dumps(summary, indent=None if args.json else 2))
    print(f"checkpoints and logs: {work_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
