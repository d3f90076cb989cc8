"""numba's compiled-kernel cache goes to a user cache directory, never into the (installed) package."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pc3d
import pc3d.ops

PACKAGE_DIRS = sorted({Path(pc3d.__file__).resolve().parent, Path(pc3d.ops.__file__).resolve().parent})

# Imports pc3d, runs a numba op (radix_argsort: one small kernel, ~2 s to compile cold) and reports where
# numba caches. `{before}` runs first (e.g. importing numba ahead of pc3d).
SNIPPET = """
import json, os
{before}
import numpy as np
from pc3d.ops._radix_sort_numba import radix_argsort
assert radix_argsort(np.array([3, 1, 2, 1], np.int64)).tolist() == [1, 3, 2, 0]
import numba
print(json.dumps({{"config": numba.config.CACHE_DIR, "env": os.environ.get("NUMBA_CACHE_DIR")}}))
"""


def snapshot() -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size)
            for root in PACKAGE_DIRS for p in root.rglob("*") if p.is_file()}


def run_op(tmp_path: Path, before: str = "", **env) -> dict:
    child_env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    # no .pyc either: only numba may write, and the test must see that it does not write in the package
    child_env.update(HOME=str(tmp_path / "home"), PYTHONDONTWRITEBYTECODE="1", **env)
    (tmp_path / "home").mkdir(exist_ok=True)
    files_before = snapshot()
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(before=before)], cwd=tmp_path, env=child_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    changed = {p for p, stamp in snapshot().items() if files_before.get(p) != stamp}
    assert not changed, f"numba wrote into the package: {sorted(changed)[:5]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def cache_files(directory: Path) -> list:
    return sorted(p.name for p in directory.rglob("*") if p.suffix in (".nbi", ".nbc"))


def test_cache_goes_to_xdg_cache_home(tmp_path):
    where = run_op(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "pc3d" / "numba"
    assert where == {"config": str(expected), "env": str(expected)}
    assert any(name.startswith("_radix_sort_numba.radix_argsort") for name in cache_files(expected))


def test_cache_defaults_to_home_cache_and_survives_numba_imported_first(tmp_path):
    where = run_op(tmp_path, before="import numba")
    expected = tmp_path / "home" / ".cache" / "pc3d" / "numba"
    assert where["config"] == str(expected)
    assert cache_files(expected)


def test_user_numba_cache_dir_is_respected(tmp_path):
    where = run_op(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "mine"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert where["config"] == str(tmp_path / "mine")
    assert cache_files(tmp_path / "mine") and not (tmp_path / "xdg").exists()


@pytest.mark.slow
def test_voxelize_writes_nothing_in_the_package(tmp_path):
    """Every voxelization kernel (~10-30 s to compile cold)."""
    before = ("import numpy as np\n"
              "from pc3d.ops.voxelize import dynamic_voxelize, hard_voxelize\n"
              "p = np.random.default_rng(0).uniform(-5, 5, (500, 4)).astype(np.float32)\n"
              "hard_voxelize(p, [0.5] * 3, [-5, -5, -5, 5, 5, 5], 5, 100)\n"
              "dynamic_voxelize(p, [0.5] * 3, [-5, -5, -5, 5, 5, 5])\n"
              "dynamic_voxelize(p, [0.5] * 3, [-5, -5, -5, 5, 5, 5], order='first_come')")
    run_op(tmp_path, before=before, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert len(cache_files(tmp_path / "xdg" / "pc3d" / "numba")) > 4
