import numpy as np
import pytest
import torch

from pc3d.structures import Boxes3D, Frame, PointCloud, SparseVoxels, collate


def test_pointcloud_validation_and_select():
    pc = PointCloud(np.zeros((5, 4), np.float64), ("x", "y", "z", "intensity"))
    assert pc.points.dtype == torch.float32 and len(pc) == 5
    assert pc.select_features(["x", "y", "z"]).points.shape == (5, 3)
    with pytest.raises(ValueError, match="elongation"):
        pc.select_features(["x", "y", "z", "elongation"])
    with pytest.raises(ValueError, match="columns"):
        PointCloud(np.zeros((5, 4)), ("x", "y", "z"))
    with pytest.raises(ValueError, match=r"\(N, C>=3\)"):
        PointCloud(np.zeros((5, 2)), ("x", "y"))


def test_boxes_fields_and_indexing():
    b = Boxes3D(torch.rand(4, 7), [0, 1, 2, 0], scores=[0.9, 0.8, 0.7, 0.6], difficulty=[1, 1, 2, 1])
    sub = b[b.scores > 0.65]
    assert len(sub) == 3 and sub.difficulty.tolist() == [1, 1, 2] and sub.names == ["Vehicle", "Pedestrian", "Cyclist"]
    with pytest.raises(ValueError, match="labels must be in"):
        Boxes3D(torch.rand(1, 7), [5])
    with pytest.raises(ValueError, match=r"\(M, 7\) or \(M, 9\)"):
        Boxes3D(torch.rand(2, 6), [0, 0])
    with pytest.raises(ValueError, match="scores has 1 entries for 2"):
        Boxes3D(torch.rand(2, 7), [0, 0], scores=[1.0])


def test_boxes_json_roundtrip():
    b = Boxes3D(torch.rand(3, 9), [0, 2, 1], scores=[0.5, 0.4, 0.3])
    items = b.to_json()
    assert set(items[0]) == {"box", "label", "score", "velocity"} and len(items[0]["box"]) == 7
    back = Boxes3D.from_json(items, b.class_names)
    torch.testing.assert_close(back.boxes, b.boxes)
    assert back.labels.tolist() == [0, 2, 1]
    assert len(Boxes3D.from_json([], ["Car"])) == 0
    with pytest.raises(ValueError, match="Truck"):
        Boxes3D.from_json([{"box": [0] * 7, "label": "Truck"}], ["Car"])


def test_collate_adds_sample_index():
    f1 = Frame(PointCloud(torch.ones(3, 4)), Boxes3D.empty(["Vehicle"]), "a")
    f2 = Frame(PointCloud(torch.zeros(2, 4)), None, "b")
    batch = collate([f1, f2])
    assert batch.points.shape == (5, 5) and batch.points[:, 0].tolist() == [0, 0, 0, 1, 1]
    assert batch.batch_size == 2 and batch.frame_ids == ["a", "b"]
    torch.testing.assert_close(batch.points_of(1), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="features"):
        collate([f1, Frame(PointCloud(torch.ones(1, 3), ("x", "y", "z")))])


def test_sparse_voxels_checks():
    v = SparseVoxels(torch.rand(3, 8), torch.zeros(3, 4, dtype=torch.int32), (1, 10, 10), 1)
    assert len(v) == 3 and v.batch_index.dtype == torch.int64
    with pytest.raises(ValueError, match=r"\(V, 4\)"):
        SparseVoxels(torch.rand(3, 8), torch.zeros(3, 3, dtype=torch.int32), (1, 10, 10), 1)
