"""Parity-fixture helpers for tests/compat.

A test that takes a `reference_fixture` argument runs once per `*.pt` file in tests/fixtures/reference/
(ids = file stems), so a new fixture is tested by dropping the file there. `verify_cli(path)` runs
`tools/convert_checkpoint.py --verify-fixture path --json` in-process and returns its report dict plus
`exit_code`.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def reference_fixture_files(pattern: str = "*.pt") -> list[Path]:
    return sorted(FIXTURE_DIR.glob(pattern))


def pytest_generate_tests(metafunc):
    if "reference_fixture" in metafunc.fixturenames:
        files = reference_fixture_files()
        metafunc.parametrize("reference_fixture", files, ids=[p.stem for p in files])


def _verify_cli(path) -> dict:
    from pc3d.cli.convert_checkpoint import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["--verify-fixture", str(path), "--json"])
    lines = stdout.getvalue().strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    report["exit_code"] = code
    return report


@pytest.fixture
def verify_cli():
    return _verify_cli
