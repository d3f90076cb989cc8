#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/create_data.py (also installed as `pc3d-create-data`)."""
import sys

from pc3d.cli.create_data import main

if __name__ == "__main__":
    sys.exit(main())
