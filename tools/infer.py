#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/infer.py (also installed as `pc3d-infer`)."""
import sys

from pc3d.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
