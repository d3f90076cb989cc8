#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/demo.py (also installed as `pc3d-demo`)."""
import sys

from pc3d.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
