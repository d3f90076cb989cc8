"""The registration trainer's own entry point (the one-file YAML loader, no `_base_`; tools/train.py is the
usual way in):

    python -m pc3d.cli.train_registration --config configs/threedmatch/roitr_synthetic_tiny.yaml \
        --out checkpoints/roitr_synthetic_tiny.pth --minutes 40

Prints one JSON object: the training summary and the train settings used.
"""
import argparse
import json
import sys
from dataclasses import asdict

from pc3d.cli.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the RoITr matcher on synthetic registration pairs (CPU).")
    parser.add_argument("--config", default="configs/threedmatch/roitr_synthetic_tiny.yaml")
    parser.add_argument("--out", default="checkpoints/roitr_synthetic_tiny.pth")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--val-pairs", type=int, default=0, help="validate the final model on this many pairs")
    parser.add_argument("--threads", type=int, default=None, help="default: train.threads of the config")
    parser.add_argument("--load-from", default=None, help="start from this checkpoint's weights")
    return parser


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    from pc3d.models.registration.training import load_config_yaml, train

    args = build_parser().parse_args(argv)
    model_cfg, train_cfg = load_config_yaml(args.config)
    if args.threads is not None:
        train_cfg.threads = args.threads
    if args.minutes is not None:
        train_cfg.minutes = args.minutes
    if args.iterations is not None:
        train_cfg.iterations = args.iterations
    _, summary = train(model_cfg, train_cfg, args.out, args.val_pairs, log=lambda msg: print(msg, flush=True),
                       load_from=args.load_from)
    print(json.dumps({**summary, "train": asdict(train_cfg)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
