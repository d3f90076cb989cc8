"""Deployment: ONNX export of whole detectors, onnxruntime runtime, TensorRT engine build path.

- `pc3d.deploy.onnx_export`: `export_onnx(detector, cfg, path)` (what is / is not in the graph: see there),
- `pc3d.deploy.onnx_runtime`: `OnnxDetector(path)(batch) -> list[Boxes3D]`,
- `pc3d.deploy.profile_stats`: dynamic-axis statistics and TensorRT optimisation profiles,
- `pc3d.deploy.tensorrt_engine`: `build_engine`, `TensorRTDetector` (untested: needs a GPU).
"""
from __future__ import annotations

__all__ = ["ExportError", "OnnxDetector", "TensorRTDetector", "build_engine", "export_onnx"]

_LAZY = {"ExportError": "onnx_export", "export_onnx": "onnx_export", "OnnxDetector": "onnx_runtime",
         "TensorRTDetector": "tensorrt_engine", "build_engine": "tensorrt_engine"}


def __getattr__(name):  # imported lazily: onnx / onnxruntime are only needed when deploying
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
