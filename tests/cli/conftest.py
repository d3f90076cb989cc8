"""Fixtures shared by the command-line tests."""
import pytest

from pc3d.data.synthetic import LidarConfig, SceneConfig, write_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Two train and two val frames of a small synthetic street, scanned by a 16-beam LiDAR."""
    root = tmp_path_factory.mktemp("synthetic")
    for split in ("train", "val"):
        write_synthetic_dataset(root, 2, seed=5, split=split, scene_config=SceneConfig.preset("small"),
                                lidar_config=LidarConfig.preset("tiny16"), progress=False)
    return root
