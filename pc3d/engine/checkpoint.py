"""Moved to `pc3d.checkpoint` (the one checkpoint module); kept so `pc3d.engine.checkpoint` imports still work."""
from pc3d.checkpoint import (CheckpointError, CheckpointNotFound, inference_weights, load_checkpoint,  # noqa: F401
                             load_model_weights, restore_rng_state, rng_state, save_checkpoint)
