#!/usr/bin/env python
"""Waymo 3D detection AP / APH of a submission file against a ground-truth file (no TensorFlow).

    tools/eval_waymo.py PRED.bin GT.bin [--json] [--sign]

Both files are `waymo_open_dataset.protos.metrics_pb2.Objects` protos (the official submission
format; `pc3d.evaluation.waymo_io.write_objects` writes one from pc3d predictions). Prints one line per
class and difficulty level, or with `--json` one object keyed by the official breakdown names
(`"OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP"`, ...). Ground-truth boxes with no lidar point are ignored and
UNKNOWN difficulty is decided by the point count, as the official `compute_detection_metrics_main`.
"""
import sys


def main(argv=None) -> int:
    from pc3d.evaluation.waymo_metric import cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
