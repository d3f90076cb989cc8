#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/train.py (also installed as `pc3d-train`)."""
import sys

from pc3d.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
