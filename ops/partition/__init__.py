"""Window partition ops for sparse voxel transformers (pure PyTorch, ONNX-exportable where the graph allows).

- `flattened_windows`: FlatFormer's serpentine flattened windows and equal-size groups.
- `rotated_sets`: DSVT's window-bounded, equal-size rotated sets.
- `scattered_windows`: ScatterFormer's variable-length window segments.
- `sst_regions`: SST's window buckets with token budgets and drop policy.
- `windows`: shared window-coordinate helpers.
"""
