"""Shared test fixtures: real data from ../shared/data (skipped with a clear message when absent)."""
import os
from pathlib import Path

import pytest
import torch

# One thread: test workloads are tiny, and numba's OpenMP workers plus torch's pool oversubscribe 2 cores.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PC3D_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running case, excluded by default (run with -m slow)")
    config.addinivalue_line("markers", "gpu: needs CUDA (and TensorRT where named); skipped without it")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts with one intra-op thread, whatever an earlier test set."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample data; skips the test when it is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set PC3D_SHARED_DATA or place shared/ beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kitti_scan(shared_data):
    import numpy as np
    path = shared_data / "kitti/object/training/velodyne/000001.bin"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


@pytest.fixture(scope="session")
def nuscenes_scan(shared_data):
    import numpy as np
    path = shared_data / "nuscenes/mmdet3d_demo/samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 5)
