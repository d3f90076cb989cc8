"""pc3d.ops: low-level kernels (numba on the CPU, plain PyTorch anywhere).

Ops know nothing of models or datasets. Import submodules directly, e.g.
`from pc3d.ops.voxelize import hard_voxelize`.
"""
