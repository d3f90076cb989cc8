#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/convert_checkpoint.py (also installed as `pc3d-convert-checkpoint`)."""
import sys

from pc3d.cli.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
