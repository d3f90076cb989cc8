"""Reference checkpoints and configs in, pc3d models out (OpenPCDet today; see `registry` for adding one).

`fixture` loads the one parity-fixture layout, `registry` maps a reference module NAME to its converter,
`verify` runs `--verify-fixture`, `openpcdet` converts OpenPCDet YAMLs and checkpoints.
"""
