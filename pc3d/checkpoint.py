"""The one checkpoint module: every pc3d checkpoint is written and read here.

It sits at the bottom of the tree (torch, numpy and the standard library only), so models, engine and
tools all use it without importing each other.

Format (one for detection and registration): a dict with
- `model`: the state_dict (required);
- `ema`: the exponential-moving-average weights, or None / absent;
- `config`: the config it was built from (detectors: the whole config; registration: the model config);
- for a training state: `optimizer`, `scheduler`, `scaler`, `epoch`, `step`, `step_in_epoch`, `rng`
  (and any plain extra values such as `iterations`, `seconds`).

Rules:
- Saving is atomic: a temporary file in the same folder, flushed, fsynced and renamed over the target, so an
  interrupted save never replaces the last good checkpoint with a partial one.
- Loading always uses `torch.load(weights_only=True)`: tensors and plain containers only. A file whose
  pickle names any other Python object (a class, a function such as `os.system`) is refused before any of
  it runs; there is deliberately no "trusted" switch.
- EMA: for inference, evaluation, export and `--load-from`, the weights are `ema` when the checkpoint has
  them and `model` otherwise (`inference_weights`). Resuming restores both, each to its own place.
- The earlier registration layout `{"config", "state_dict", ...}` is read as the one format
  (`upgrade_legacy`: `state_dict` becomes `model`); `convert_checkpoint` rewrites such a file. Any other
  layout (a bare state_dict, OpenPCDet's `model_state`) is an error that says what the file holds.
"""
from __future__ import annotations

import os
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import torch

# Where the shipped checkpoints live, first match wins (see `shipped_checkpoint`).
CHECKPOINT_DIR_ENV = "PC3D_CHECKPOINT_DIR"


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe or does not fit the model; the message names the file and says why."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


# -- saving -------------------------------------------------------------------------------------------
def save_checkpoint(state: dict, path) -> Path:
    """Write `state` (a dict with a `model` state_dict) atomically to `path`; returns the path."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: a checkpoint is a dict with a 'model' state_dict, got "
                              f"{type(state).__name__}{' with keys ' + str(sorted(state)[:8]) if isinstance(state, dict) else ''}")
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


# -- loading ------------------------------------------------------------------------------------------
def load_checkpoint(path) -> dict:
    """Read a checkpoint safely (`weights_only=True`) and return it in the one format (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointNotFound(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL " in str(err) or "Unsupported global" in str(err):
            name = _forbidden_global(str(err))
            raise CheckpointError(f"{path}: refused: the file's pickle names Python objects beyond tensors and plain "
                                  f"values{' (' + name + ')' if name else ''}; loading it could run code, and a pc3d "
                                  "checkpoint never needs that") from None
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt, truncated or not a torch file): "
                              f"{str(err)[:200]}") from None
    except Exception as err:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt, truncated or not a torch file): "
                              f"{type(err).__name__}: {str(err)[:200]}") from None
    return upgrade_legacy(state, path)


def _forbidden_global(message: str) -> str:
    """`posix.system` from torch's 'Unsupported global: GLOBAL posix.system was not an allowed global' text."""
    marker = "GLOBAL "
    if marker in message:
        return message.split(marker, 1)[1].split()[0]
    return ""


def upgrade_legacy(state, path) -> dict:
    """The one format from what a file held: passes it through, renames the earlier registration layout
    (`state_dict` -> `model`), and refuses anything else with a message saying what the file holds."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict) and "model" not in state:
        upgraded = {k: v for k, v in state.items() if k != "state_dict"}
        upgraded["model"] = state["state_dict"]
        return upgraded
    if isinstance(state, dict) and "model_state" in state:
        raise CheckpointError(f"{path}: an OpenPCDet checkpoint ('model_state'); pc3d reads {{'model': state_dict}}. "
                              "Its parameter names differ from pc3d's, so it cannot be loaded as is")
    if isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: a bare state_dict ({len(state)} tensors), not a pc3d checkpoint; wrap it as "
                              "{'model': state_dict} (pc3d.checkpoint.save_checkpoint)")
    keys = f" with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) else ""
    raise CheckpointError(f"{path}: not a pc3d checkpoint (expected a dict with a 'model' state_dict), "
                          f"got {type(state).__name__}{keys}")


def convert_checkpoint(src, dst=None) -> Path:
    """Rewrite a checkpoint in the one format (e.g. an earlier `{"config", "state_dict"}` registration file),
    atomically, to `dst` (default: in place). The weights are copied unchanged, so the model scores the same."""
    return save_checkpoint(load_checkpoint(src), dst or src)


def inference_weights(state: dict) -> dict:
    """The weights to run (inference, evaluation, export, `--load-from`): `ema` when present, else `model`."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def load_model_weights(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strict load. On a mismatch, a short summary: counts, the first few keys of each kind, the likely cause."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    shape = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state_dict and hasattr(state_dict[k], "shape")
                   and tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape:
        raise CheckpointError(f"{source}: checkpoint does not fit this model ({len(own)} keys in the model, "
                              f"{len(state_dict)} in the checkpoint); likely cause: "
                              f"{_likely_cause(missing, unexpected, shape)}"
                              + _listing("missing keys (in the model, not the checkpoint)", missing)
                              + _listing("unexpected keys (in the checkpoint, not the model)", unexpected)
                              + _listing("shape mismatches", shape))
    model.load_state_dict(state_dict, strict=True)


def _listing(title: str, items: list, first: int = 5) -> str:
    if not items:
        return ""
    more = f", ... (+{len(items) - first} more)" if len(items) > first else ""
    return f"\n  {len(items)} {title}: " + ", ".join(items[:first]) + more


def _likely_cause(missing: list, unexpected: list, shape: list) -> str:
    if unexpected and all(k.startswith("module.") for k in unexpected) and missing:
        return "it was saved from a DistributedDataParallel wrapper ('module.' prefix); save model.module instead"
    differing = sorted({k.split(".")[0] for k in missing + unexpected + [s.split(":")[0] for s in shape]})
    if not missing and not unexpected:
        return (f"the same layers with other sizes in {differing} (channels, classes or grid differ): the config's "
                "sizes are not the ones it was trained with")
    return f"a different architecture in {differing}: was it trained with another config?"


def shipped_checkpoint(name: str) -> Path:
    """Path of a shipped checkpoint (`checkpoints/<name>` in the source tree).

    Looked up, first match wins, in: `$PC3D_CHECKPOINT_DIR`; the source checkout this package was imported
    from (editable install or running from the repo); `<sys.prefix>/share/pc3d/checkpoints` (where
    `pip install .` puts them). When none has it, the checkout path is returned so that the error names it.
    """
    candidates = []
    if os.environ.get(CHECKPOINT_DIR_ENV):
        candidates.append(Path(os.environ[CHECKPOINT_DIR_ENV]) / name)
    candidates.append(Path(__file__).resolve().parents[1] / "checkpoints" / name)
    candidates.append(Path(sys.prefix) / "share" / "pc3d" / "checkpoints" / name)
    return next((p for p in candidates if p.is_file()), candidates[-2])


# -- RNG state (part of a training state) -------------------------------------------------------------
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
