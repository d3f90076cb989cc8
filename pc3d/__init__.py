"""pc3d: 3D point-cloud and voxel perception.

Data flows one way: points -> voxels -> partitions -> backbone -> BEV -> head -> boxes -> metrics.
Conventions (frames, box layout, class lists): docs/conventions.md.
"""
import os
import sys

# numba's default OpenMP workers keep spinning after a parallel kernel and slow every later torch op in
# the process ~20x on small machines; the workqueue layer does not spin. Set before numba is imported.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")


def _default_numba_cache_dir() -> str:
    """`$XDG_CACHE_HOME/pc3d/numba`, else `~/.cache/pc3d/numba`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pc3d", "numba")


# numba's cache=True otherwise writes compiled kernels next to their source, i.e. into the package
# (`pc3d/ops/__pycache__` of an installed copy). A user cache directory instead, unless the user chose
# one (NUMBA_CACHE_DIR). This runs before any pc3d kernel is decorated (numba picks the cache location
# then); if numba was imported before pc3d it has read its config already, so set that too.
if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = _default_numba_cache_dir()
    _numba_config = sys.modules.get("numba.core.config")
    if _numba_config is not None and not getattr(_numba_config, "CACHE_DIR", ""):
        _numba_config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

__version__ = "0.1.0"
