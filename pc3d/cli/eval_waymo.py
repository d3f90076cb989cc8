"""pc3d-eval-waymo / tools/eval_waymo.py: Waymo AP/APH of a submission file (see pc3d.evaluation.waymo_metric).

    tools/eval_waymo.py PRED.bin GT.bin [--json] [--sign]

AP / APH per class and level of two metrics_pb2.Objects files; `--json` prints one object keyed by the
official breakdown names. Exit code 2 on an unreadable file.
"""
import argparse
import json
import sys
from pathlib import Path

from pc3d.cli.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval_waymo", description="Waymo 3D detection AP / APH of two "
                                     "metrics_pb2.Objects files (predictions, ground truth), without TensorFlow.")
    parser.add_argument("predictions", type=Path, help="metrics_pb2.Objects file with scored predictions")
    parser.add_argument("ground_truth", type=Path, help="metrics_pb2.Objects file with the ground truth")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by the official names")
    parser.add_argument("--sign", action="store_true", help="also evaluate the SIGN class")
    return parser


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    from pc3d.evaluation.waymo_metric import evaluate_objects_files, format_metrics

    args = build_parser().parse_args(argv)
    classes = ("Vehicle", "Pedestrian", "Cyclist") + (("Sign",) if args.sign else ())
    try:
        metrics = evaluate_objects_files(args.predictions, args.ground_truth, classes)
    except (FileNotFoundError, ValueError) as err:
        print(f"eval_waymo: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics) if args.json else format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
