"""ONNX export of a whole pc3d detector (VFE -> 3D backbone with its partitioning -> BEV -> 2D backbone -> head).

What is in the graph (one ONNX model, opset 18, exported with `torch.onnx.export(..., dynamo=True)`):

- the voxel feature encoder (per-point MLP + per-voxel max / mean as ONNX `ScatterElements`),
- the 3D backbone *including its partitioning*: DSVT's rotated sets, FlatFormer's flattened-window
  groups, ScatterFormer's scattered windows and SST's regional buckets (windows per token budget, drop
  policy included) are plain tensor arithmetic (`ArgSort` as `TopK`, cumsum, gather, NonZero), recomputed
  in the graph from the voxel coordinates of every input, so the set / group / window count is a
  data-dependent size inside the graph and no partition tensor is an input. SST runs every drop level,
  also one without any window (a zero-size batch), instead of branching on the count,
- the BEV scatter, the 2D backbone and the CenterPoint head convolutions.

Thin adaptors used while tracing (no change to the model code): `num_voxels` is kept symbolic
(`_TracedVoxelizedPoints`), the torch detector's empty-frame branch is left out (see below), and
`torch.searchsorted` (ScatterFormer's neighbour lookup; ONNX has no such op) and `pc3d.ops.scatter.segment_max /
segment_sum` (export as ONNX ScatterElements, a slow serial kernel in onnxruntime) are swapped for equivalent
`searchsorted_by_sort` / `pc3d.deploy.onnx_scatter` row scatters (ONNX ScatterND) during the export only
(`_ExportAdaptors`).

Inputs (dynamic axes: `num_points` N and `num_voxels` V; the batch size is fixed at export, 1 by default):

    dynamic voxelization:  points (N, C) float32, point_voxel (N,) int64, coords (V, 4) int32
    hard voxelization:     voxel_points (V, P, C) float32, voxel_num_points (V,) int32, coords (V, 4) int32

Outputs: for every class group g, `g{g}_heatmap (B, K_g, H, W)`, `g{g}_offset`, `g{g}_height`, `g{g}_size`,
`g{g}_heading` (+ `g{g}_velocity`, `g{g}_iou` when the head has them) — the raw `HeadPrediction` tensors.

What stays outside the graph, and why:

- **voxelization** (`Detector.voxelize`: range filtering, points -> voxel coordinates + point/voxel map).
  It is parameter-free and runs as pc3d's numba kernel. Its torch form is `torch.unique(...,
  return_inverse=True)` plus boolean masking, i.e. data-dependent output sizes: onnxruntime has `Unique`,
  but TensorRT has no Unique operator, so putting it in the graph would tie the graph to onnxruntime. It
  was deliberately not attempted; DSVT's own TensorRT deployment likewise keeps voxelization outside the engine.
- **decoding** (`head.decode`: top-k peaks, box decoding, rotated NMS). Rotated-IoU NMS has no ONNX /
  TensorRT operator; pc3d's numba NMS runs on the (small) head maps after the graph.
- the **batch loop**: the BEV scatter needs a static batch size, so the graph is exported for a fixed
  batch (1); `OnnxDetector` runs a multi-frame batch one frame at a time.
- the torch detector's **empty-frame branch** (`len(voxels) == 0` -> all-zero BEV map) is a Python branch on
  a data-dependent size. The transformer partitions cannot run on zero voxels (onnxruntime's Gather
  fails on the empty set/group tensors), so the head outputs of an empty frame are computed at export time
  and stored as extra (unused) initializers `pc3d_empty_frame.<output>`; `OnnxDetector` returns them for a
  frame without in-range voxels instead of running the graph.

Thread safety: onnxruntime's CPU `ScatterND` with a reduction loses updates with more than one intra-op thread
(duplicate indices are not guarded). With the default `scatter="elements"` no pc3d model exports one (ScatterFormer's
per-window K^T V / sum k sums once came from `index_add` -> ScatterND(add) and differed from torch by up to 2e-2 at
random with 2 threads; they are `segment_sum` now); `reducing_scatternd` counts any that appears into the
layout's `scatternd_reductions`, and `OnnxDetector` then runs the file single-threaded.

The spconv sparse-convolution baseline (`backbone_3d: spconv_resnet`, e.g. `centerpoint_voxel`) cannot be
exported: spconv's sparse convolutions are custom C++/CUDA kernels with no ONNX symbolic and no
onnxruntime / TensorRT operator (only spconv's own TensorRT plugins could run them), so
`export_onnx` raises `ExportError` saying so instead of failing halfway.

Config metadata: the full loaded config is stored in the ONNX `metadata_props` (`pc3d_config`, JSON) with
the input / output layout (`pc3d_layout`), so `pc3d.deploy.OnnxDetector(path)` rebuilds the same
pre/post-processing without the YAML file.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pc3d.models.vfe import VoxelizedPoints

DEFAULT_OPSET = 18
# The opsets torch 2.13's dynamo exporter (with onnx 1.23) writes as asked, measured 18..25; asked for an
# older one it writes 18 anyway, so those are refused (`export_onnx` also checks the written file).
MIN_OPSET, MAX_OPSET = 18, 25


class ExportError(RuntimeError):
    """The model cannot be exported (e.g. the spconv baseline), with the reason."""


class _TracedVoxelizedPoints(VoxelizedPoints):
    """`VoxelizedPoints` whose `num_voxels` stays symbolic under `torch.export`.

    The base property does `int(coords.shape[0])`, which would specialise the exported graph to the
    example's voxel count; returning the (symbolic) size itself keeps the `num_voxels` axis dynamic.
    """

    @property
    def num_voxels(self):  # type: ignore[override]
        return self.coords.shape[0]


def searchsorted_by_sort(sorted_sequence: torch.Tensor, values: torch.Tensor, *, out_int32: bool = False,
                         right: bool = False, side: str | None = None, sorter=None, out=None) -> torch.Tensor:
    """`torch.searchsorted` for a 1-D integer `sorted_sequence` written with ops ONNX has (ONNX has no
    searchsorted): sort the sequence and the queries together and count the sequence elements before each query.

    Keys are doubled with a parity bit so a query sorts before (left) or after (right) equal sequence values;
    ties between sequence elements or between queries do not change the counts. Same result as
    `torch.searchsorted(sorted_sequence, values, right=right)`; values: any shape, int.
    """
    if (sorter is not None or out is not None or sorted_sequence.ndim != 1
            or sorted_sequence.dtype.is_floating_point or values.dtype.is_floating_point):
        return _TORCH_SEARCHSORTED(sorted_sequence, values, out_int32=out_int32, right=right, side=side,
                                   sorter=sorter, out=out)
    right = right or side == "right"
    n = sorted_sequence.shape[0]
    flat = values.reshape(-1).long()
    keys = torch.cat([sorted_sequence.long() * 2 + (0 if right else 1), flat * 2 + (1 if right else 0)])
    order = torch.argsort(keys)
    before = torch.cumsum((order < n).long(), dim=0)           # sequence elements up to each sorted position
    counts = torch.zeros_like(before).scatter(0, order, before)
    result = counts[n:].reshape(values.shape)
    return result.int() if out_int32 else result


_TORCH_SEARCHSORTED = torch.searchsorted


class _QuietExporterLogs:
    """Raise the torch / onnxscript loggers to ERROR while exporting: the exporter otherwise dumps whole FX
    graphs and per-node notes to stderr for every data-dependent size (harmless, but thousands of lines)."""

    NAMES = ("torch", "torch.export", "torch.fx", "torch.onnx", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
             "torch._export", "onnxscript", "onnx_ir")

    def __enter__(self):
        import logging
        import warnings

        self._levels = {}
        for name in self.NAMES:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        import contextlib
        import io
        self._stderr = contextlib.redirect_stderr(io.StringIO())  # FX graph dumps printed to sys.stderr
        self._stderr.__enter__()
        return self

    def __exit__(self, *exc):
        import logging

        self._stderr.__exit__(*exc)
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        return False


class _ExportAdaptors:
    """Context manager swapping functions for exportable / faster-to-run equivalents while tracing
    (restored on exit): `torch.searchsorted` -> `searchsorted_by_sort` (ScatterFormer's neighbour lookup;
    ONNX has no searchsorted) and, with `scatternd=True`, `pc3d.ops.scatter.segment_max / segment_sum` ->
    `onnx_scatter.segment_max_rows / segment_sum_rows` (same values; one ONNX ScatterND instead of
    ScatterElements, ~40x faster in onnxruntime but only correct single-threaded, see `pc3d.deploy.onnx_scatter`)."""

    def __init__(self, scatternd: bool = True):
        self.scatternd = scatternd

    def __enter__(self):
        from pc3d.deploy.onnx_scatter import segment_max_rows, segment_sum_rows
        from pc3d.ops import scatter

        self._saved = (scatter.segment_max, scatter.segment_sum)
        torch.searchsorted = searchsorted_by_sort
        if self.scatternd:
            scatter.segment_max, scatter.segment_sum = segment_max_rows, segment_sum_rows
        return self

    def __exit__(self, *exc):
        from pc3d.ops import scatter

        torch.searchsorted = _TORCH_SEARCHSORTED
        scatter.segment_max, scatter.segment_sum = self._saved
        return False


def _backbone_type(cfg: dict) -> str:
    return str(((cfg.get("model") or {}).get("backbone_3d") or {}).get("type", "identity"))


def check_exportable(cfg: dict) -> None:
    """Raise `ExportError` when the config's 3D backbone has no ONNX path (the table's `exportable` flag in
    `pc3d.models.backbones_3d.BACKBONES_3D`, so every alias of a type is judged alike). Unknown types are left
    to the builder, which lists the known ones."""
    from pc3d.models.backbones_3d import BACKBONES_3D, canonical_backbone_3d

    kind = _backbone_type(cfg)
    canonical = canonical_backbone_3d(kind)
    if canonical is None or BACKBONES_3D[canonical].exportable:
        return
    exportable = sorted({name if name.islower() else entry.aliases[0]
                         for name, entry in BACKBONES_3D.items() if entry.exportable})
    raise ExportError(f"cannot export backbone_3d type {kind!r} ({canonical}) to ONNX: "
                      f"{BACKBONES_3D[canonical].export_blocker}. Export a config with backbone_3d type "
                      f"{', '.join(exportable)} instead.")


class ExportableDetector(nn.Module):
    """Tensors in, head tensors out: the part of `Detector` that goes into the ONNX graph.

    Mirrors `Detector.forward_voxels` without its Python branch on the voxel count (see module docstring).
    forward(dynamic: points (N, C), point_voxel (N,), coords (V, 4)) or
    forward(hard: voxel_points (V, P, C), voxel_num_points (V,), coords (V, 4)) -> tuple of head tensors.
    """

    def __init__(self, detector: nn.Module, batch_size: int = 1):
        super().__init__()
        self.detector = detector
        self.batch_size = int(batch_size)
        self.mode = detector.voxelizer.mode

    def input_names(self) -> list[str]:
        if self.mode == "hard":
            return ["voxel_points", "voxel_num_points", "coords"]
        return ["points", "point_voxel", "coords"]

    def output_names(self) -> list[str]:
        head = self.detector.head
        names = []
        for g in range(len(head.class_groups)):
            fields_ = ["heatmap", "offset", "height", "size", "heading"]
            if head.with_velocity:
                fields_.append("velocity")
            if head.with_iou:
                fields_.append("iou")
            names += [f"g{g}_{f}" for f in fields_]
        return names

    def voxelized(self, first: torch.Tensor, second: torch.Tensor, coords: torch.Tensor) -> VoxelizedPoints:
        if self.mode == "hard":
            return _TracedVoxelizedPoints(coords=coords, batch_size=self.batch_size, voxel_points=first,
                                          voxel_num_points=second)
        return _TracedVoxelizedPoints(coords=coords, batch_size=self.batch_size, points=first, point_voxel=second)

    def forward(self, first: torch.Tensor, second: torch.Tensor, coords: torch.Tensor):
        from pc3d.structures import SparseVoxels

        det = self.detector
        voxelized = self.voxelized(first, second, coords)
        features = det.vfe(voxelized)
        voxels = SparseVoxels(features, coords, det.voxelizer.spatial_shape, self.batch_size,
                              det.voxelizer.voxel_size, det.voxelizer.point_range)
        bev = det.to_bev(det.backbone_3d(voxels))
        predictions = det.head(det.backbone_2d(bev))
        return tuple(t for p in predictions for t in p.tensors())


def example_inputs(detector: nn.Module, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Graph inputs for one frame `points (N, C)` (config columns), via the detector's own voxelizer."""
    from pc3d.structures import Frame, PointCloud, collate

    batch = collate([Frame(PointCloud(points, tuple(detector.point_features)))])
    return graph_inputs(detector.voxelize(batch))


def graph_inputs(voxelized: VoxelizedPoints) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three input tensors of the graph for a `VoxelizedPoints` (dtypes fixed: int64 map, int32 coords)."""
    coords = voxelized.coords.to(torch.int32).contiguous()
    if voxelized.voxel_points is not None:
        return (voxelized.voxel_points.float().contiguous(), voxelized.voxel_num_points.to(torch.int32).contiguous(),
                coords)
    return voxelized.points.float().contiguous(), voxelized.point_voxel.to(torch.int64).contiguous(), coords


def default_example_points(num_points: int = 6000, seed: int = 0) -> torch.Tensor:
    """A small random cloud (x, y, z, intensity) inside +-40 m used to trace when no scan is given.

    Enough points that every window / set size path of the partitions is exercised (several sets per
    window), so the traced graph does not specialise on a degenerate example.
    """
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(num_points, 2, generator=g) - 0.5) * 80.0
    # clusters make dense windows (several sets / groups per window) as in a real scan
    xy[: num_points // 2] = xy[: num_points // 2] / 8.0
    z = torch.rand(num_points, 1, generator=g) * 3.0 - 2.0
    intensity = torch.rand(num_points, 1, generator=g)
    return torch.cat([xy, z, intensity], dim=1)


@dataclass
class ExportResult:
    path: Path
    input_names: list[str]
    output_names: list[str]
    seconds: float
    num_nodes: int
    metadata: dict = field(default_factory=dict)


def _json_safe(value):
    """Config -> JSON-serialisable (tuples to lists, Paths to str)."""
    return json.loads(json.dumps(value, default=str))


SCATTER_MODES = ("elements", "scatternd")


def export_onnx(detector: nn.Module, cfg: dict, path, example_points: torch.Tensor | None = None,
                opset: int = DEFAULT_OPSET, check: bool = True, batch_size: int = 1,
                scatter: str = "elements") -> ExportResult:
    """Export `detector` (eval mode is forced) to the ONNX file `path`.

    Args:
        detector: a `pc3d.models.detector.Detector` built from `cfg`.
        cfg: the loaded config (stored in the model's metadata for `OnnxDetector`).
        example_points: `(N, C)` float32 cloud in the config's `point_features` columns used for tracing
            (default: `default_example_points`, needs C == 4); its sizes are not baked in.
        check: run `onnx.checker.check_model` on the result.
        scatter: "elements" (default): the VFE's segment sum / max export as ONNX ScatterElements — correct with
            any number of onnxruntime threads, but onnxruntime's CPU kernel is serial and slow (~45% of the
            run time); "scatternd": as ScatterND with row indices, ~40x faster per op, but onnxruntime's
            ScatterND reduction races when run multi-threaded (lost updates with duplicate indices, measured),
            so `OnnxDetector` runs such a file with one intra-op thread.
    Raises `ExportError` for the spconv baseline.
    """
    import onnx

    check_exportable(cfg)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset: the exporter writes opsets {MIN_OPSET} to {MAX_OPSET} only, got {opset!r}")
    if scatter not in SCATTER_MODES:
        raise ValueError(f"scatter: expected one of {SCATTER_MODES}, got {scatter!r}")
    if batch_size != 1:
        raise ValueError(f"batch_size: only 1 is supported (OnnxDetector loops over frames), got {batch_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if example_points is None:
        example_points = default_example_points()
        width = len(detector.point_features)
        if width != 4:
            extra = torch.zeros(example_points.shape[0], max(0, width - 4))
            example_points = torch.cat([example_points[:, :width], extra], dim=1)
    # traced on the model's device (a CUDA model exports from CUDA tensors; the graph is device-free)
    device = next(detector.parameters()).device
    example_points = torch.as_tensor(example_points, dtype=torch.float32).to(device)
    was_training = detector.training
    detector.eval()
    wrapper = ExportableDetector(detector, batch_size).eval()
    inputs = example_inputs(detector, example_points)
    if inputs[2].shape[0] < 2:
        raise ValueError("example_points: fewer than 2 voxels in range; pass a larger cloud to trace the export")
    names = wrapper.input_names()
    num_points = torch.export.Dim("num_points")
    num_voxels = torch.export.Dim("num_voxels")
    first_axis = num_voxels if wrapper.mode == "hard" else num_points
    dynamic_shapes = {"first": {0: first_axis}, "second": {0: first_axis}, "coords": {0: num_voxels}}
    start = time.perf_counter()
    try:
        with torch.no_grad(), _ExportAdaptors(scatternd=scatter == "scatternd"), _QuietExporterLogs():
            from pc3d.deploy.onnx_scatter import custom_translation_table
            program = torch.onnx.export(wrapper, inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        custom_translation_table=custom_translation_table(),
                                        input_names=names, output_names=wrapper.output_names(),
                                        opset_version=opset, verbose=False)
    finally:
        detector.train(was_training)
    model = program.model_proto
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"asked for opset {opset}, but the exporter wrote opset {written}")
    racy = reducing_scatternd(model)
    _add_empty_frame_outputs(model, wrapper)
    layout = {"mode": wrapper.mode, "inputs": names, "outputs": wrapper.output_names(), "batch_size": batch_size,
              "num_groups": len(detector.head.class_groups), "point_features": list(detector.point_features),
              "max_points_per_voxel": detector.voxelizer.max_points_per_voxel, "scatter": scatter,
              "scatternd_reductions": len(racy),
              "dynamic_axes": {names[0]: ["num_voxels" if wrapper.mode == "hard" else "num_points"],
                               names[1]: ["num_voxels" if wrapper.mode == "hard" else "num_points"],
                               "coords": ["num_voxels"]}}
    _set_metadata(model, {"pc3d_config": json.dumps(_json_safe(cfg)), "pc3d_layout": json.dumps(layout)})
    onnx.save_model(model, str(path))
    seconds = time.perf_counter() - start
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return ExportResult(path, names, wrapper.output_names(), seconds, len(model.graph.node), layout)


def reducing_scatternd(model) -> list[str]:
    """Names of the ONNX `ScatterND` nodes with a reduction (add / mul / max / min) in `model` (a ModelProto).

    onnxruntime's CPU ScatterND splits the update rows over its intra-op threads without guarding duplicate
    indices, so such a node loses updates at random with more than one thread (see `pc3d.deploy.onnx_scatter`).
    With `scatter="elements"` pc3d's models export none (segment reductions are ScatterElements, a serial
    kernel); any that appears (e.g. a new `index_add` / `index_put(accumulate=True)`) is counted in the layout's
    `scatternd_reductions`, and `OnnxDetector` then runs the file single-threaded instead of returning noise.
    """
    names = []
    for node in model.graph.node:
        if node.op_type == "ScatterND":
            reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")
            if reduction != "none":
                names.append(node.name)
    return names


EMPTY_FRAME_PREFIX = "pc3d_empty_frame."


@torch.no_grad()
def empty_frame_outputs(wrapper: ExportableDetector) -> dict[str, torch.Tensor]:
    """Head outputs of a frame with no voxel (the torch detector's zero-BEV branch), by output name."""
    det = wrapper.detector
    ny, nx = det.bev_shape()
    bev = torch.zeros(wrapper.batch_size, det.to_bev.out_channels, ny, nx, device=next(det.parameters()).device)
    predictions = det.head(det.backbone_2d(bev))
    tensors = [t for p in predictions for t in p.tensors()]
    return dict(zip(wrapper.output_names(), tensors))


def _add_empty_frame_outputs(model, wrapper: ExportableDetector) -> None:
    from onnx import numpy_helper

    for name, tensor in empty_frame_outputs(wrapper).items():
        model.graph.initializer.append(numpy_helper.from_array(tensor.float().cpu().numpy(), EMPTY_FRAME_PREFIX + name))


def _set_metadata(model, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value


def read_metadata(path) -> dict[str, str]:
    """`metadata_props` of an ONNX file as a dict (no weights are loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
