#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/visualize.py (also installed as `pc3d-visualize`)."""
import sys

from pc3d.cli.visualize import main

if __name__ == "__main__":
    sys.exit(main())
