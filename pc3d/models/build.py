"""Build the model a config describes (detector today; registration configs name `registration:`)."""
from __future__ import annotations

import torch

from pc3d.config import ConfigError


def build_model(cfg: dict) -> torch.nn.Module:
    if "model" not in cfg:
        raise ConfigError(f"{cfg.get('_source_', 'config')}: has no 'model' section")
    if "dataset" not in cfg:
        raise ConfigError(f"{cfg.get('_source_', 'config')}: has no 'dataset' section (class_names, point_features)")
    from pc3d.models.detector import Detector

    return Detector.from_config(cfg)


def load_weights(model: torch.nn.Module, path, prefer_ema: bool = True) -> dict:
    """Load a checkpoint's weights into `model` (EMA weights when the checkpoint has them)."""
    from pc3d.engine.checkpoint import load_checkpoint, load_model_weights

    state = load_checkpoint(path)
    weights = state["ema"] if prefer_ema and state.get("ema") is not None else state["model"]
    load_model_weights(model, weights, str(path))
    return state
