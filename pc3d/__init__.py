"""pc3d: 3D point-cloud and voxel perception.

Data flows one way: points -> voxels -> partitions -> backbone -> BEV -> head -> boxes -> metrics.
Conventions (frames, box layout, class lists): docs/conventions.md.
"""
__version__ = "0.1.0"
