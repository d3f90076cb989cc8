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


def load_weights(model: torch.nn.Module, path) -> dict:
    """Load a checkpoint's inference weights into `model` (`ema` when present, else `model`; see
    `pc3d.checkpoint`). Returns the whole checkpoint dict."""
    from pc3d.checkpoint import inference_weights, load_checkpoint, load_model_weights

    state = load_checkpoint(path)
    load_model_weights(model, inference_weights(state), str(path))
    return state
