"""Reference checkpoints and configs in, pc3d models out (OpenPCDet, RoITr; see `registry` for adding one).

`fixture` loads the one parity-fixture layout, `registry` maps a reference module NAME to its converter,
`verify` runs `--verify-fixture`, `openpcdet` converts OpenPCDet YAMLs and checkpoints, `roitr` converts
haoyu94/RoITr state_dicts into pc3d's RoITr in reference mode.
"""
