"""Run an exported detector on onnxruntime with the torch detector's own pre- and post-processing.

    detector = OnnxDetector("dsvt.onnx")                  # config read from the model's metadata
    boxes = detector(batch)                               # list[Boxes3D], like Detector.predict(batch)

Pre-processing (`Detector.voxelize`: range filter + dynamic / hard voxelization) and post-processing
(`Detector.decode`: peaks, box decoding, NMS; no boxes for a frame without voxels) are the torch detector's code, taken from a
`Detector` rebuilt from the stored config (its random weights are never used: neither stage has
parameters). Only the network runs on onnxruntime. Frames are run one at a time (the graph has a
static batch of 1) and their head maps are concatenated before decoding.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pc3d.deploy.onnx_export import graph_inputs, read_metadata
from pc3d.models.heads.centerpoint import HeadPrediction
from pc3d.models.vfe import VoxelizedPoints
from pc3d.structures import Batch, Boxes3D, Frame, PointCloud, collate

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def session_options(intra_op_threads: int | None = None, optimization: str = "all",
                    profile_prefix: str | None = None):
    """`onnxruntime.SessionOptions` with the graph optimisation level ("disable" | "basic" | "extended" |
    "all"), intra-op threads (None: onnxruntime's default) and optional profiling to `profile_prefix*.json`."""
    import onnxruntime as ort

    if optimization not in _OPT_LEVELS:
        raise ValueError(f"optimization: expected one of {sorted(_OPT_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
    if intra_op_threads is not None:
        if int(intra_op_threads) < 1:
            raise ValueError(f"intra_op_threads: expected >= 1, got {intra_op_threads}")
        options.intra_op_num_threads = int(intra_op_threads)
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return options


def requires_single_thread(layout: dict) -> bool:
    """True when an exported model (its `pc3d_layout`) is only correct with one onnxruntime intra-op thread:
    exported with `scatter="scatternd"`, or its graph has any other ScatterND with a reduction
    (`reducing_scatternd` at export time, stored as `scatternd_reductions`)."""
    return layout.get("scatter") == "scatternd" or bool(layout.get("scatternd_reductions"))


class OnnxDetector:
    """Exported detector on onnxruntime; `__call__(batch) -> list[Boxes3D]` like `Detector.predict`.

    Args:
        path: ONNX file written by `pc3d.deploy.onnx_export.export_onnx` (or `tools/export.py`).
        cfg: loaded config; default: the one stored in the file's metadata.
        providers: onnxruntime execution providers (default CPU).
        intra_op_threads, optimization, profile_prefix: see `session_options`.
        create_session: False skips the onnxruntime session (subclasses running another backend, e.g.
            `pc3d.deploy.tensorrt_engine.TensorRTDetector`, override `run_feed`).
    """

    def __init__(self, path, cfg: dict | None = None, providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, optimization: str = "all", profile_prefix: str | None = None,
                 create_session: bool = True):
        import onnxruntime as ort

        from pc3d.models.build import build_model

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"path: ONNX file {self.path} does not exist")
        meta = read_metadata(self.path)
        if "pc3d_layout" not in meta:
            raise ValueError(f"path: {self.path} has no pc3d metadata (pc3d_layout); export it with tools/export.py")
        self.layout = json.loads(meta["pc3d_layout"])
        if cfg is None:
            if "pc3d_config" not in meta:
                raise ValueError(f"path: {self.path} stores no config; pass cfg=")
            cfg = json.loads(meta["pc3d_config"])
        self.cfg = cfg
        # Only the parameter-free stages (voxelize, decode) of this detector are used.
        self.detector = build_model(cfg).eval()
        if list(self.detector.point_features) != list(self.layout["point_features"]):
            raise ValueError(f"cfg: point_features {list(self.detector.point_features)} differ from the exported "
                             f"model's {self.layout['point_features']}")
        if requires_single_thread(self.layout):
            # onnxruntime's ScatterND reduction races with several intra-op threads (see pc3d.deploy.onnx_scatter)
            if intra_op_threads not in (None, 1):
                raise ValueError(f"intra_op_threads: {self.path} has ScatterND reductions (scatter="
                                 f"{self.layout.get('scatter')!r}), which are only correct with 1 onnxruntime "
                                 f"intra-op thread, got {intra_op_threads}")
            intra_op_threads = 1
        self.intra_op_threads = intra_op_threads
        self.session = None
        self.input_names = list(self.layout["inputs"])
        self.output_names = list(self.layout["outputs"])
        if create_session:
            self.session = ort.InferenceSession(str(self.path), session_options(intra_op_threads, optimization,
                                                                                profile_prefix),
                                                providers=list(providers or ["CPUExecutionProvider"]))
            graph_inputs_ = [i.name for i in self.session.get_inputs()]
            if graph_inputs_ != self.input_names:
                raise ValueError(f"path: graph inputs {graph_inputs_} differ from the stored layout {self.input_names}")
            self.output_names = [o.name for o in self.session.get_outputs()]
        self.empty_frame = self._read_empty_frame()
        self.last_timing: dict[str, float] = {}

    def _read_empty_frame(self) -> list[np.ndarray] | None:
        import onnx
        from onnx import numpy_helper

        from pc3d.deploy.onnx_export import EMPTY_FRAME_PREFIX

        model = onnx.load(str(self.path))
        stored = {init.name[len(EMPTY_FRAME_PREFIX):]: numpy_helper.to_array(init)
                  for init in model.graph.initializer if init.name.startswith(EMPTY_FRAME_PREFIX)}
        if not stored:
            return None
        return [stored[name] for name in self.output_names]

    # ---- stages ------------------------------------------------------------------------------
    def frame_inputs(self, batch: Batch) -> list[dict[str, np.ndarray]]:
        """Pre-processing: one input feed per frame of `batch` (the torch detector's voxelizer)."""
        points = self.detector.select_points(batch)
        feeds = []
        for sample in range(batch.batch_size):
            pts = points[points[:, 0] == sample].clone()
            pts[:, 0] = 0
            voxelized = self.detector.voxelizer(pts, 1)
            feeds.append({name: t.cpu().numpy() for name, t in zip(self.input_names, graph_inputs(voxelized))})
        return feeds

    @staticmethod
    def batch_voxels(feeds: Sequence[dict[str, np.ndarray]]) -> VoxelizedPoints:
        """The batch's voxel coordinates (sample index restored) for the detector's decode."""
        coords = []
        for sample, feed in enumerate(feeds):
            c = torch.from_numpy(feed["coords"]).clone()
            c[:, 0] = sample
            coords.append(c)
        return VoxelizedPoints(coords=torch.cat(coords).reshape(-1, 4), batch_size=len(feeds))

    def run_feed(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The network on onnxruntime: one frame's inputs -> head arrays (graph output order)."""
        if feed["coords"].shape[0] == 0:
            # no voxel: the graph's partitions cannot run on empty tensors; use the stored zero-BEV outputs
            if self.empty_frame is None:
                raise ValueError("a frame has no point inside point_range and the ONNX file stores no "
                                 "empty-frame outputs; re-export it with tools/export.py")
            return [a.copy() for a in self.empty_frame]
        return self.session.run(None, feed)

    def predictions(self, outputs_per_frame: Sequence[Sequence[np.ndarray]]) -> list[HeadPrediction]:
        """Per-frame output arrays -> batched `HeadPrediction`s (one per class group)."""
        by_name = {name: torch.from_numpy(np.concatenate([out[k] for out in outputs_per_frame], axis=0))
                   for k, name in enumerate(self.output_names)}
        groups = []
        for g in range(int(self.layout["num_groups"])):
            get = lambda field: by_name.get(f"g{g}_{field}")  # noqa: E731
            groups.append(HeadPrediction(heatmap=get("heatmap"), offset=get("offset"), height=get("height"),
                                         size=get("size"), heading=get("heading"), velocity=get("velocity"),
                                         iou=get("iou")))
        return groups

    def forward_raw(self, batch: Batch) -> list[HeadPrediction]:
        """Head outputs for `batch` (no decoding), comparable to `Detector.forward_voxels`."""
        return self._forward(batch)[0]

    def _forward(self, batch: Batch):
        start = time.perf_counter()
        feeds = self.frame_inputs(batch)
        mid = time.perf_counter()
        outputs = [self.run_feed(feed) for feed in feeds]
        end = time.perf_counter()
        self.last_timing = {"preprocess": mid - start, "network": end - mid}
        return self.predictions(outputs), feeds

    def decode(self, predictions: list[HeadPrediction], voxelized: VoxelizedPoints) -> list[Boxes3D]:
        """The torch detector's decoding (`Detector.decode` when it exists: no boxes for a frame without voxels)."""
        if hasattr(self.detector, "decode"):
            return self.detector.decode(predictions, voxelized)
        return self.detector.head.decode(predictions)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Boxes3D]:
        predictions, feeds = self._forward(batch)
        start = time.perf_counter()
        boxes = self.decode(predictions, self.batch_voxels(feeds))
        self.last_timing["decode"] = time.perf_counter() - start
        return boxes

    __call__ = predict

    def predict_points(self, points, feature_names: Sequence[str] | None = None) -> Boxes3D:
        """One scan `(N, C)` (numpy or torch; columns = the config's point_features unless named) -> Boxes3D."""
        points = torch.as_tensor(np.asarray(points, dtype=np.float32) if not isinstance(points, torch.Tensor)
                                 else points.float())
        names = tuple(feature_names or self.detector.point_features)
        if points.ndim != 2 or points.shape[1] != len(names):
            raise ValueError(f"points: expected shape (N, {len(names)}) for features {list(names)}, "
                             f"got {tuple(points.shape)}")
        return self.predict(collate([Frame(PointCloud(points, names))]))[0]
