#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/test.py (also installed as `pc3d-test`)."""
import sys

from pc3d.cli.test import main

if __name__ == "__main__":
    sys.exit(main())
