"""benchmarks/bench_gpu.py runs on the CPU (`--device cpu --quick`) and prints the documented JSON rows (slow: ~1 min
on a shared 2-core machine); its arguments, and without CUDA `--device cuda` as a one-line error, are checked in the
default suite. Not marked gpu; timings are printed, never asserted."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_gpu.py"
KEYS = {"name", "seconds", "reference", "reference_seconds", "ratio", "identical"}


def run(*args, check=True):
    return subprocess.run([sys.executable, str(BENCH), *args], check=check, capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_bench_gpu_quick_on_the_cpu_prints_forward_and_training_rows(tmp_path):
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-40, 40, (6000, 2)), rng.uniform(-2, 1, 6000),
                              rng.uniform(0, 1, 6000)]).astype(np.float32)
    scan = tmp_path / "scan.bin"
    points.tofile(scan)
    out = run("--device", "cpu", "--quick", "--json", "--points", str(scan), "--dim", "4", "--precisions", "fp32",
              "--configs", str(REPO / "configs/synthetic/pointpillars_tiny.yaml"), "--no-synthetic",
              "--synthetic-lidar", "tiny16", "--train-batch", "1").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["name"] for r in rows] == ["gpu/pointpillars_tiny/scan/fp32/forward",
                                         "gpu/pointpillars_tiny/synthetic_tiny16/fp32/train_step_b1"]
    for row in rows:
        assert KEYS <= row.keys() and row["seconds"] > 0 and row["device_name"] == "cpu", row
    forward, train = rows
    assert set(forward["stages_ms"]) == {"voxelize", "vfe", "backbone_3d", "to_bev", "backbone_2d", "head", "decode"}
    assert forward["points"] == 6000 and forward["voxels"] > 1000 and forward["peak_memory_mb"] is None
    assert train["batch_size"] == 1 and train["losses_finite"] is True


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_arguments_and_missing_cuda():
    bench = _module()
    args = bench.parse_args(["--quick", "--device", "cpu"])
    assert (args.warmup, args.repeat, args.train_batch) == (1, 1, 4)
    assert [p.stem for p in args.configs] == bench.WAYMO_CONFIGS and args.precisions == ["fp32", "bf16", "fp16"]
    assert set(bench.REFERENCES) == set(bench.WAYMO_CONFIGS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--precisions", "fp8"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            bench.main(["--device", "cuda", "--quick"])
