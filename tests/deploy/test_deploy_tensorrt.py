"""Dynamic-axis statistics, TensorRT optimisation profiles and the engine build path (fake tensorrt module)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from pc3d.config import load_config
from pc3d.deploy import profile_stats
from pc3d.deploy.tensorrt_engine import (TensorRTUnavailable, build_engine, check_profile, cuda_available,
                                         import_tensorrt)
from pc3d.models.build import build_model

DYNAMIC_LAYOUT = {"mode": "dynamic", "inputs": ["points", "point_voxel", "coords"],
                  "point_features": ["x", "y", "z", "intensity"]}


def _repo(path):
    from pathlib import Path
    return str(Path(__file__).resolve().parents[2] / path)


@pytest.fixture(scope="module")
def small_frames():
    frames = list(profile_stats.synthetic_frames(3, "tiny16", seed=5))
    for k, frame in enumerate(frames):  # crop differently so the frames really differ in size
        frame.points.points = frame.points.points[: 4000 - 1000 * k]
    return frames


@pytest.mark.parametrize("config", ["dsvt_pillar_tiny", "flatformer_tiny"])
def test_axis_stats_match_brute_force(small_frames, config):
    from pc3d.ops.partition.flattened_windows import flattened_window_groups_reference
    from pc3d.ops.partition.rotated_sets import rotated_sets_reference

    detector = build_model(load_config(_repo(f"configs/synthetic/{config}.yaml"), []))
    stats = profile_stats.collect_axis_stats(detector, small_frames)
    backbone = detector.backbone_3d
    vs = np.array(detector.voxelizer.voxel_size)
    low, high = np.array(detector.voxelizer.point_range[:3]), np.array(detector.voxelizer.point_range[3:])
    shape = detector.voxelizer.spatial_shape
    for k, frame in enumerate(small_frames):
        xyz = frame.points.points[:, :3].numpy().astype(np.float64)
        inside = np.all((xyz >= low) & (xyz < high), axis=1)
        cells = np.unique(np.floor((xyz[inside] - low) / vs).astype(np.int64), axis=0)  # (x, y, z)
        assert stats["num_points"][k] == inside.sum()
        assert stats["num_voxels"][k] == len(cells)
        coords = torch.from_numpy(np.concatenate([np.zeros((len(cells), 1), np.int64), cells[:, ::-1]], 1).copy())
        if config.startswith("dsvt"):
            expected = len(rotated_sets_reference(coords, shape, backbone.window_shape[0], backbone.set_size[0], "x",
                                                  backbone.shifts[0][0]))
        else:
            expected = flattened_window_groups_reference(coords, shape, backbone.window_shape, backbone.group_size,
                                                         "x").shape[0]
        assert stats["num_sets"][k] == expected
    assert len(set(stats["num_voxels"].tolist())) == 3


def test_summary_and_profile_properties():
    stats = {"num_points": np.array([1000, 5000, 3000, 9000]), "num_voxels": np.array([300, 900, 700, 1500]),
             "num_sets": np.array([], dtype=np.int64)}
    summary = profile_stats.summarize(stats, percentiles=(0, 50, 100))
    assert summary["num_points"] == {"p0": 1000.0, "p50": 4000.0, "p100": 9000.0, "mean": 4500.0, "frames": 4}
    assert "num_sets" not in summary
    profile = profile_stats.optimization_profile(stats, DYNAMIC_LAYOUT, margin=1.25, multiple=256)
    assert profile["points"] == ((1, 4), (4096, 4), (11264, 4))         # opt: p50 4000 -> 4096; max 9000*1.25 -> 11264
    assert profile["point_voxel"] == ((1,), (4096,), (11264,))
    assert profile["coords"] == ((1, 4), (1024, 4), (2048, 4))          # p50 800 -> 1024; 1500*1.25=1875 -> 2048
    check_profile(profile, DYNAMIC_LAYOUT["inputs"])
    hard = dict(DYNAMIC_LAYOUT, mode="hard", inputs=["voxel_points", "voxel_num_points", "coords"],
                max_points_per_voxel=5)
    hard_profile = profile_stats.optimization_profile(stats, hard)
    assert hard_profile["voxel_points"][2] == (2048, 5, 4)
    for values in ([5], [1, 2, 3]):
        low, opt, top = profile_stats.axis_range(np.array(values))
        assert low <= opt <= top and top >= max(values)
    with pytest.raises(ValueError, match="values"):
        profile_stats.axis_range(np.array([]))
    with pytest.raises(ValueError, match="margin"):
        profile_stats.axis_range(np.array([3]), margin=0.5)
    with pytest.raises(ValueError, match="num_frames"):
        list(profile_stats.synthetic_frames(0))


def test_check_profile_rejects_bad_profiles():
    good = {"points": ((1, 4), (10, 4), (20, 4))}
    assert check_profile(good) == good
    with pytest.raises(ValueError, match="min <= opt <= max"):
        check_profile({"points": ((1, 4), (30, 4), (20, 4))})
    with pytest.raises(ValueError, match="rank"):
        check_profile({"points": ((1, 4), (10,), (20, 4))})
    with pytest.raises(ValueError, match="missing"):
        check_profile(good, ["points", "coords"])
    with pytest.raises(ValueError, match="non-empty"):
        check_profile({})


class _FakeTensorRT:
    """Records the builder calls `build_engine` makes (TensorRT 10 API surface)."""

    __version__ = "10.0.1"

    def __init__(self, input_names, parse_ok=True, build_ok=True, fast_fp16=True):
        fake = self
        self.calls = []
        self.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda s, level: None})
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="fp16")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)

        class Network:
            num_inputs = len(input_names)

            def get_input(self, i):
                return types.SimpleNamespace(name=input_names[i])

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_profile",))

        class Builder:
            platform_has_fast_fp16 = fast_fp16

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build",))
                return b"fake-engine" if build_ok else None

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse(self, data, path=None):
                fake.calls.append(("parse", len(data)))
                return parse_ok

            def get_error(self, i):
                return "TopK: K must be a build-time constant"

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.fixture
def tiny_onnx(tmp_path):
    from onnx import TensorProto, helper, save

    nodes = [helper.make_node("TopK", ["points_k", "k"], ["values", "indices"]),
             helper.make_node("Identity", ["coords"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("coords", TensorProto.INT32, ["v", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.INT32, ["v", 4])])
    path = tmp_path / "tiny.onnx"
    save(helper.make_model(graph), str(path))
    return path


def test_build_engine_with_fake_tensorrt(tiny_onnx, tmp_path):
    profile = {"points": ((1, 4), (4096, 4), (11264, 4)), "point_voxel": ((1,), (4096,), (11264,)),
               "coords": ((1, 4), (768, 4), (1920, 4))}
    fake = _FakeTensorRT(list(profile))
    engine = build_engine(tiny_onnx, tmp_path / "out" / "model.plan", profile, fp16=True, workspace_bytes=1 << 20,
                          trt=fake)
    assert engine.read_bytes() == b"fake-engine"
    assert ("network", 0) in fake.calls                      # TensorRT 10: explicit batch is implicit
    assert ("flag", "fp16") in fake.calls and ("pool", "workspace", 1 << 20) in fake.calls
    shapes = [c for c in fake.calls if c[0] == "set_shape"]
    assert shapes == [("set_shape", name, *profile[name]) for name in profile]
    assert fake.calls.index(("add_profile",)) < fake.calls.index(("build",))
    assert (engine.parent / "model.plan.profile.json").is_file()


def test_build_engine_errors_with_fake_tensorrt(tiny_onnx, tmp_path):
    profile = {"coords": ((1, 4), (8, 4), (16, 4))}
    with pytest.raises(ValueError, match="could not parse.*TopK"):
        build_engine(tiny_onnx, tmp_path / "a.plan", profile, trt=_FakeTensorRT(["coords"], parse_ok=False))
    with pytest.raises(ValueError, match="missing"):
        build_engine(tiny_onnx, tmp_path / "a.plan", profile, trt=_FakeTensorRT(["coords", "points"]))
    with pytest.raises(ValueError, match="fp16"):
        build_engine(tiny_onnx, tmp_path / "a.plan", profile, fp16=True, trt=_FakeTensorRT(["coords"], fast_fp16=False))
    with pytest.raises(RuntimeError, match="failed to build.*TopK"):
        build_engine(tiny_onnx, tmp_path / "a.plan", profile, trt=_FakeTensorRT(["coords"], build_ok=False))
    with pytest.raises(FileNotFoundError, match="onnx_path"):
        build_engine(tmp_path / "none.onnx", tmp_path / "a.plan", profile, trt=_FakeTensorRT(["coords"]))
    assert not (tmp_path / "a.plan").exists()


def _tensorrt_ready() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return cuda_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_ready(), reason="needs tensorrt and a CUDA GPU (untested on the CPU dev machine)")
def test_real_engine_matches_onnxruntime(tmp_path, kitti_scan):
    from pc3d.deploy import OnnxDetector, export_onnx
    from pc3d.deploy.tensorrt_engine import TensorRTDetector
    from pc3d.structures import Frame, PointCloud, collate

    cfg = load_config(_repo("configs/synthetic/pointpillars_tiny.yaml"), [])
    detector = build_model(cfg).eval()
    result = export_onnx(detector, cfg, tmp_path / "pp.onnx")
    stats = profile_stats.collect_axis_stats(detector, profile_stats.synthetic_frames(4, "hdl64"))
    profile = profile_stats.optimization_profile(stats, result.metadata)
    engine = build_engine(result.path, tmp_path / "pp.plan", profile)
    batch = collate([Frame(PointCloud(torch.as_tensor(kitti_scan[:20000])))])
    reference = OnnxDetector(result.path).forward_raw(batch)
    got = TensorRTDetector(engine, result.path).forward_raw(batch)
    for p, q in zip(reference, got):
        for a, b in zip(p.tensors(), q.tensors()):
            assert float((a - b).abs().max()) <= 1e-3
