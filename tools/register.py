#!/usr/bin/env python
"""Thin wrapper: see pc3d/cli/register.py (also installed as `pc3d-register`)."""
import sys

from pc3d.cli.register import main

if __name__ == "__main__":
    sys.exit(main())
