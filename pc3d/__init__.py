"""pc3d: 3D point-cloud and voxel perception.

Data flows one way: points -> voxels -> partitions -> backbone -> BEV -> head -> boxes -> metrics.
Conventions (frames, box layout, class lists): docs/conventions.md.
"""
import os

# numba's default OpenMP workers keep spinning after a parallel kernel and slow every later torch op in
# the process ~20x on small machines; the workqueue layer does not spin. Set before numba is imported.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

__version__ = "0.1.0"
