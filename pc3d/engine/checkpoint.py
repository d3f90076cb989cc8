"""Checkpoints: written atomically, loaded with errors that say what is wrong.

A checkpoint is a dict: `model` (state_dict) plus, for training, `optimizer`, `scheduler`,
`scaler`, `ema`, `epoch`, `step`, `step_in_epoch`, `rng` and `config`. It is written to a
temporary file in the same folder, flushed to disk and renamed over the target, so an interrupted
save never replaces the last good checkpoint with a partial one.
"""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the model; the message says which and why."""


def save_checkpoint(state: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path, trusted: bool = False) -> dict:
    """Read a checkpoint. `trusted=False` uses `weights_only` loading (tensors and plain containers)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise CheckpointError(f"{path}: holds Python objects beyond tensors and plain values; refusing to unpickle "
                                  "them (a pc3d checkpoint never needs that)") from err
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt, truncated or not a torch file): {err}") from err
    except Exception as err:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt, truncated or not a torch file): "
                              f"{type(err).__name__}: {str(err)[:200]}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a pc3d checkpoint (expected a dict with a 'model' state_dict)")
    return state


def load_model_weights(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strict load that lists every missing, unexpected and wrongly shaped key."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    shape = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape:
        def listing(title, items):
            if not items:
                return ""
            more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:10]) + more
        raise CheckpointError(f"{source}: checkpoint does not fit this model (was it trained with another config?)"
                              + listing("missing in checkpoint", missing) + listing("unexpected in checkpoint", unexpected)
                              + listing("shape mismatch", shape))
    model.load_state_dict(state_dict, strict=True)


def rng_state() -> dict:
    """Every generator's state, as tensors and plain Python values (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
