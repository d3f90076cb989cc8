#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/eval_waymo.py (also installed as `pc3d-eval-waymo`)."""
import sys

from pc3d.cli.eval_waymo import main

if __name__ == "__main__":
    sys.exit(main())
