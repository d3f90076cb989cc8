"""Config helpers for tests: the published configs at tiny widths, so every architecture runs in seconds."""
from __future__ import annotations

import copy


def tiny_widths(cfg: dict) -> dict:
    """Shrink every width / depth of a published config (grid, windows and set sizes are kept)."""
    cfg = copy.deepcopy(cfg)
    model = cfg["model"]
    if "channels" in model.get("vfe", {}):
        model["vfe"]["channels"] = [16, 16]
    b3 = model.get("backbone_3d", {})
    replacements = {"dims": 16, "dim": 16, "num_heads": 2, "pool_heads": 2, "dim_feedforward": 32, "depths": 1,
                    "num_blocks": 1, "num_layers": 1, "channels": [8, 8, 16, 16], "out_channels": 16,
                    "blocks_per_stage": 1}
    for key, value in replacements.items():
        if key in b3:
            b3[key] = value
    b2 = model.get("backbone_2d", {})
    if "num_filters" in b2:
        n = len(b2["num_filters"])
        b2.update(layer_nums=[1] * n, num_filters=[16] * n, num_upsample_filters=[16] * n)
    model["head"]["shared_channels"] = 16
    return cfg
