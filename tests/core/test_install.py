"""pc3d.ops is the top-level ops/ folder, installed under pc3d (no top-level `ops` module)."""
import subprocess
import sys
from pathlib import Path


def test_ops_is_installed_as_pc3d_ops():
    import pc3d.ops

    assert Path(pc3d.ops.__file__).resolve().parent.name == "ops"
    assert Path(pc3d.ops.__file__).resolve().parent.parent == Path(__file__).resolve().parents[2]


def test_no_top_level_ops_module_from_elsewhere(tmp_path):
    code = "import importlib.util, pc3d.ops; print(importlib.util.find_spec('ops') is None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
