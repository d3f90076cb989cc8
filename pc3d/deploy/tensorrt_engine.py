"""TensorRT engine build from an exported pc3d ONNX file, and a runtime wrapper.

**Untested on the development machine**: TensorRT needs an NVIDIA GPU and the `tensorrt` wheel, neither
of which is available there. The unit tests cover everything up to the builder call with a fake
`tensorrt` module (profile shapes, flags, parser errors); the real build test is marked `gpu` and skips.

    profile = optimization_profile(stats, layout)             # pc3d.deploy.profile_stats
    build_engine("dsvt.onnx", "dsvt.plan", profile, fp16=True)
    detector = TensorRTDetector("dsvt.plan", "dsvt.onnx")     # list[Boxes3D] like Detector.predict

Built against the TensorRT 10 Python API (`build_serialized_network`, named I/O tensors,
`execute_async_v3`); with TensorRT 8.x the explicit-batch network flag is set as well.

Known risk for the real build (cannot be checked here): the in-graph partitioning uses `TopK` with a
data-dependent K (argsort of V voxels), `NonZero` and `ScatterElements` with a max reduction. TensorRT
limits TopK's K (3840 in TensorRT 8/10), so graphs whose argsort spans more voxels than that are expected
to be rejected by the parser/builder; `risky_tensorrt_ops` lists those nodes so the failure is explained.
The usual workaround (DSVT's own TensorRT deployment does this) is to compute the partition indices in the
pre-processing and feed them as inputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pc3d.deploy.onnx_runtime import OnnxDetector

Shape = tuple[int, ...]


class TensorRTUnavailable(RuntimeError):
    """`tensorrt` cannot be imported or no CUDA device is present."""


def import_tensorrt():
    """The `tensorrt` module, or `TensorRTUnavailable` with how to get it."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(
            "TensorRT is not installed (import tensorrt failed: %s). It needs an NVIDIA GPU with CUDA; install "
            "the `tensorrt` wheel matching the CUDA version, or use --format onnx with onnxruntime." % err) from err
    return tensorrt


def cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def check_profile(profile: Mapping[str, Sequence[Shape]], input_names: Sequence[str] | None = None) -> dict:
    """Validate `{input: (min, opt, max)}`: same rank, positive dims, min <= opt <= max per dim, and (when
    `input_names` is given) exactly one entry per graph input. Returns it with int tuples."""
    if not isinstance(profile, Mapping) or not profile:
        raise ValueError("profile: expected a non-empty mapping {input_name: (min_shape, opt_shape, max_shape)}")
    clean = {}
    for name, shapes in profile.items():
        if len(shapes) != 3:
            raise ValueError(f"profile[{name!r}]: expected (min_shape, opt_shape, max_shape), got {shapes!r}")
        low, opt, high = (tuple(int(d) for d in s) for s in shapes)
        if not len(low) == len(opt) == len(high):
            raise ValueError(f"profile[{name!r}]: shapes of different rank {low}, {opt}, {high}")
        if min(low) < 1 and len(low):
            raise ValueError(f"profile[{name!r}]: dimensions must be >= 1, got min shape {low}")
        if any(not (a <= b <= c) for a, b, c in zip(low, opt, high)):
            raise ValueError(f"profile[{name!r}]: need min <= opt <= max per dimension, got {low}, {opt}, {high}")
        clean[name] = (low, opt, high)
    if input_names is not None:
        missing = [n for n in input_names if n not in clean]
        extra = [n for n in clean if n not in input_names]
        if missing or extra:
            raise ValueError(f"profile: graph inputs are {list(input_names)}; missing {missing}, unknown {extra}")
    return clean


def risky_tensorrt_ops(onnx_path) -> dict[str, int]:
    """Counts of the graph's ops that TensorRT restricts (TopK, NonZero, ScatterElements, ScatterND)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    watched = ("TopK", "NonZero", "ScatterElements", "ScatterND", "Unique")
    counts: dict[str, int] = {}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.op_type in watched:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
            graphs.extend(attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH)
    return counts


def build_engine(onnx_path, engine_path, profile: Mapping[str, Sequence[Shape]], fp16: bool = False,
                 workspace_bytes: int = 1 << 30, trt=None, verbose: bool = False) -> Path:
    """Parse `onnx_path`, add one optimisation profile, build and write a serialized engine to `engine_path`.

    Args:
        profile: `{input_name: (min_shape, opt_shape, max_shape)}` (`profile_stats.optimization_profile`).
        fp16: allow FP16 kernels (error if the GPU has no fast FP16).
        workspace_bytes: builder workspace memory pool limit.
        trt: the `tensorrt` module (injectable for tests; default: imported).
    Raises `TensorRTUnavailable`, `ValueError` (profile / parse errors) or `RuntimeError` (build failed).
    """
    trt = trt or import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"onnx_path: {onnx_path} does not exist")
    if int(workspace_bytes) < 1:
        raise ValueError(f"workspace_bytes: expected > 0, got {workspace_bytes}")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "EXPLICIT_BATCH", None)
    if explicit is not None and int(str(getattr(trt, "__version__", "10")).split(".")[0]) < 10:
        flags |= 1 << int(explicit)  # TensorRT 8.x needs explicit batch for ONNX; 10.x is always explicit
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors)
                         + f" (ops TensorRT restricts in this graph: {risky_tensorrt_ops(onnx_path)})")
    input_names = [network.get_input(i).name for i in range(network.num_inputs)]
    profile = check_profile(profile, input_names)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            raise ValueError("fp16: this GPU has no fast FP16 support; build without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for name in input_names:
        low, opt, high = profile[name]
        opt_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above; "
                           f"restricted ops in the graph: {risky_tensorrt_ops(onnx_path)})")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    profile_file = engine_path.with_name(engine_path.name + ".profile.json")
    profile_file.write_text(json.dumps({k: [list(s) for s in v] for k, v in profile.items()}, indent=1)
                            + "\n")
    return engine_path


class TensorRTRunner:
    """A deserialized engine: `run({input: np.ndarray}) -> list[np.ndarray]` in `output_names` order.

    Input shapes must lie in the engine's optimisation profile. Uses torch CUDA tensors as device buffers
    (no pycuda dependency). Untested here (no GPU).
    """

    def __init__(self, engine_path, output_names: Sequence[str], trt=None):
        import torch

        trt = trt or import_tensorrt()
        if not cuda_available():
            raise TensorRTUnavailable("TensorRTRunner needs a CUDA device; none is available")
        self.torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ValueError(f"engine_path: {engine_path} is not a TensorRT engine for this TensorRT/GPU")
        self.context = self.engine.create_execution_context()
        self.output_names = list(output_names)
        self.trt = trt

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        stream = torch.cuda.current_stream()
        keep = []
        for name, array in feed.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, tensor.data_ptr())
            outputs.append(tensor)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return [t.cpu().numpy() for t in outputs]


class TensorRTDetector(OnnxDetector):
    """`OnnxDetector` whose network runs on a TensorRT engine (same pre/post-processing, same Boxes3D out).

    Args: engine_path (from `build_engine`), onnx_path (the exported file: config, layout, empty-frame outputs).
    """

    def __init__(self, engine_path, onnx_path, cfg: dict | None = None, trt=None):
        super().__init__(onnx_path, cfg=cfg, create_session=False)
        self.runner = TensorRTRunner(engine_path, self.output_names, trt=trt)

    def run_feed(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if feed["coords"].shape[0] == 0:
            return super().run_feed(feed)  # stored empty-frame outputs
        return self.runner.run(feed)
