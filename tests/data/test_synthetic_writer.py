"""Synthetic dataset writer: on-disk pc3d info format round trip, split seeds, CLI hooks."""
import json

import numpy as np
import pytest

from pc3d.cli import create_data
from pc3d.data.synthetic import writer
from pc3d.data.synthetic.labels import count_points_in_boxes
from pc3d.data.synthetic.lidar import LidarConfig, simulate_frame
from pc3d.data.synthetic.scene import SceneConfig

TINY = LidarConfig.preset("tiny16")
SMALL = SceneConfig.preset("small")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    path = writer.write_synthetic_dataset(out, 3, seed=5, split="train", scene_config=SMALL, lidar_config=TINY,
                                          progress=False)
    return out, path


def test_files_exist_and_json_matches_points(dataset):
    out, path = dataset
    assert path == out / "train_infos.json"
    infos = json.loads(path.read_text())
    assert infos["dataset"] == "synthetic"
    assert infos["class_names"] == ["Vehicle", "Pedestrian", "Cyclist"]
    assert infos["point_features"] == ["x", "y", "z", "intensity"]
    assert len(infos["frames"]) == 3
    ids = [f["frame_id"] for f in infos["frames"]]
    assert len(set(ids)) == 3
    for info in infos["frames"]:
        assert info["points"] == f"points/{info['frame_id']}.npy"
        points = np.load(out / info["points"])
        assert points.dtype == np.float32 and points.shape[1] == 4 and len(points) == info["num_lidar_points"]
        boxes = np.array(info["boxes"], np.float32).reshape(-1, 7)
        assert len(boxes) == len(info["labels"]) == len(info["difficulty"]) == len(info["num_points"])
        assert set(info["labels"]) <= {"Vehicle", "Pedestrian", "Cyclist"}
        # counts recomputed from the files agree exactly, and difficulty follows them
        np.testing.assert_array_equal(count_points_in_boxes(points, boxes), info["num_points"])
        np.testing.assert_array_equal(info["difficulty"], [2 if n <= 5 else 1 for n in info["num_points"]])
        # the stored frame is exactly the simulator's frame for the recorded seed
        frame = simulate_frame(info["seed"], SMALL, TINY)
        np.testing.assert_array_equal(points, frame.points.points.numpy())
    assert not list(out.rglob("*.tmp"))


def test_info_dataset_reads_it(dataset):
    out, _ = dataset
    from pc3d.data.info_dataset import InfoDataset

    ds = InfoDataset(out, "train", ["Vehicle", "Pedestrian", "Cyclist"], ["x", "y", "z", "intensity"])
    assert len(ds) == 3
    frame = ds[0]
    infos = json.loads((out / "train_infos.json").read_text())
    assert len(frame.points) == infos["frames"][0]["num_lidar_points"]
    assert len(frame.gt_boxes) == len(infos["frames"][0]["boxes"])


def test_split_seeds_are_disjoint():
    train = {writer.frame_seed(s, "train", i) for s in range(3) for i in range(1000)}
    val = {writer.frame_seed(s, "val", i) for s in range(3) for i in range(1000)}
    test = {writer.frame_seed(s, "test", i) for s in range(3) for i in range(1000)}
    assert len(train) == len(val) == len(test) == 3000
    assert not (train & val) and not (train & test) and not (val & test)
    with pytest.raises(ValueError, match="split"):
        writer.frame_seed(0, "holdout", 0)
    with pytest.raises(ValueError, match="index"):
        writer.frame_seed(0, "train", writer.MAX_FRAMES_PER_SPLIT)


def test_val_split_differs_and_drop_empty(tmp_path):
    writer.write_synthetic_dataset(tmp_path, 2, seed=5, split="val", scene_config=SMALL, lidar_config=TINY,
                                   drop_empty_boxes=True, progress=False)
    writer.write_synthetic_dataset(tmp_path, 2, seed=5, split="train", scene_config=SMALL, lidar_config=TINY,
                                   progress=False)
    val = json.loads((tmp_path / "val_infos.json").read_text())["frames"]
    train = json.loads((tmp_path / "train_infos.json").read_text())["frames"]
    assert {f["seed"] for f in val}.isdisjoint({f["seed"] for f in train})
    assert not np.array_equal(np.load(tmp_path / val[0]["points"]), np.load(tmp_path / train[0]["points"]))
    assert all(n > 0 for f in val for n in f["num_points"])
    # without the flag 0-point boxes are kept (Waymo keeps them)
    full = simulate_frame(val[0]["seed"], SMALL, TINY).gt_boxes
    assert len(val[0]["boxes"]) == int((full.num_points > 0).sum())


@pytest.mark.slow  # spawning workers re-imports torch and numba (~15 s)
def test_process_pool_gives_identical_files(tmp_path):
    a = writer.write_synthetic_dataset(tmp_path / "a", 2, seed=9, scene_config=SMALL, lidar_config=TINY, progress=False)
    b = writer.write_synthetic_dataset(tmp_path / "b", 2, seed=9, scene_config=SMALL, lidar_config=TINY, workers=2,
                                       progress=False)
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    for info in json.loads(a.read_text())["frames"]:
        assert np.array_equal(np.load(tmp_path / "a" / info["points"]), np.load(tmp_path / "b" / info["points"]))


def test_cli_hooks(tmp_path, capsys):
    parser = create_data.build_parser("synthetic")
    args = parser.parse_args(["synthetic", "--out", str(tmp_path), "--frames", "1", "--seed", "2", "--split", "val",
                              "--beams", "32", "--scene", "small", "--no-progress"])
    assert create_data.run(args) == 0
    infos = json.loads((tmp_path / "val_infos.json").read_text())
    assert infos["lidar"] == "vlp32" and len(infos["frames"]) == 1
    assert np.load(tmp_path / infos["frames"][0]["points"]).shape[0] > 1000
    with pytest.raises(SystemExit):
        parser.parse_args(["synthetic", "--out", str(tmp_path), "--beams", "16"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        writer.write_synthetic_dataset(tmp_path, -1, seed=0)
    with pytest.raises(TypeError, match="seed"):
        writer.write_synthetic_dataset(tmp_path, 1, seed=1.5)
    with pytest.raises(ValueError, match="split"):
        writer.write_synthetic_dataset(tmp_path, 1, seed=0, split="holdout", lidar_config=TINY, scene_config=SMALL)
