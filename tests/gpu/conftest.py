"""GPU suite: the CUDA paths against the CPU ones. Every test here is marked `gpu` and deselected by default.

`PC3D_GPU_TEST_DEVICE` (default `cuda`) names the device under test; the reference is always the CPU. Without CUDA
the tests skip with that message; `PC3D_GPU_TEST_DEVICE=cpu pytest -m gpu tests/gpu` dry-runs the whole suite on
the CPU (CPU against CPU: the same code paths bar the kernels), which is how it is tested on machines without a GPU.
`PC3D_GPU_TEST_CPU_THREADS` sets torch's CPU threads for the CPU references (default 1, as the rest of the suite).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import zlib

import numpy as np
import pytest
import torch

from pc3d.testing.configs import tiny_widths

DEVICE_ENV = "PC3D_GPU_TEST_DEVICE"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device under test; skips every test that asks for it when it is a CUDA device and CUDA is absent."""
    dev = torch.device(os.environ.get(DEVICE_ENV, "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"CUDA is not available (torch {torch.__version__}, torch.cuda.is_available() is False); "
                    f"set {DEVICE_ENV}=cpu to dry-run the GPU suite on the CPU")
    if dev.type == "cuda":
        # fp32 comparisons against the CPU: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return dev


@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(int(os.environ.get("PC3D_GPU_TEST_CPU_THREADS", "1")))
    yield


def seeded_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with numpy-seeded values (by parameter name): the same weights on any machine,
    torch version or sparse-conv library (spconv and spconv-triton share parameter names and shapes)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            fan_in = max(1, param[0].numel()) if param.dim() > 1 else 1
            if param.dim() == 1:  # biases near 0, norm scales near 1
                values = rng.normal(0.0, 0.05, param.shape) + (1.0 if name.endswith("weight") else 0.0)
            else:
                values = rng.normal(0.0, 1.0 / np.sqrt(fan_in), param.shape)
            param.copy_(torch.from_numpy(values.astype(np.float32)))
    return model


def scan_batch(scan: np.ndarray, cfg: dict):
    """One real scan in the config's point columns (missing Waymo columns zero-filled) with two hand-placed GT
    boxes (velocity added when the head regresses it)."""
    from pc3d.structures import Boxes3D, Frame, PointCloud, collate

    names = cfg["dataset"]["point_features"]
    if scan.shape[1] < len(names):
        scan = np.concatenate([scan, np.zeros((len(scan), len(names) - scan.shape[1]), np.float32)], axis=1)
    scan = np.ascontiguousarray(scan[:, :len(names)])
    classes = tuple(cfg["dataset"]["class_names"])
    boxes = [[10.0, 3.0, -0.8, 4.2, 1.8, 1.5, 0.2], [6.0, -4.0, -0.9, 0.8, 0.7, 1.7, 1.0]]
    if cfg["model"]["head"].get("regression", {}).get("velocity", 0) == 2:
        boxes = [b + [1.0, -0.5] for b in boxes]
    gt = Boxes3D(torch.tensor(boxes), torch.tensor([0, len(classes) - 1]), classes)
    return collate([Frame(PointCloud(scan, tuple(names)), gt, "real")])


def zero_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off (train-mode comparisons across devices need the same function on both)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0  # attention-probability dropout (pc3d.models.attention)
    return model


# (module, function name) of every op's "auto" backend choice: numba for CPU tensors, torch elsewhere
_AUTO_BACKEND = [("pc3d.ops.voxelize", "_resolve_backend"), ("pc3d.ops.box_geometry", "_resolve_backend"),
                 ("pc3d.ops.partition.flattened_windows", "resolve_backend"),
                 ("pc3d.ops.partition.rotated_sets", "resolve_backend"),
                 ("pc3d.ops.partition.scattered_windows", "resolve_backend"),
                 ("pc3d.ops.partition.sst_regions", "resolve_backend")]


@contextlib.contextmanager
def device_paths(device: torch.device):
    """Run the ops' device code paths on `device`. On a GPU that is what "auto" picks anyway; in a CPU dry run,
    "auto" is made to pick the torch paths (what CUDA runs) instead of the numba kernels, so the side under test
    differs from the CPU reference in the same way as on a GPU."""
    if device.type != "cpu":
        yield
        return
    saved = []
    for module_name, name in _AUTO_BACKEND:
        module = importlib.import_module(module_name)
        original = getattr(module, name)
        saved.append((module, name, original))
        setattr(module, name, lambda backend, *arrays, _f=original: _f("torch" if backend == "auto" else backend,
                                                                        *arrays))
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for the test modules (they cannot import this conftest under --import-mode=importlib)."""
    class Helpers:
        pass
    h = Helpers()
    h.seeded_weights, h.tiny_widths, h.scan_batch, h.zero_dropout = seeded_weights, tiny_widths, scan_batch, zero_dropout
    h.device_paths = device_paths
    return h
