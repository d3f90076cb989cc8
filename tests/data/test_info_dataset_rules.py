"""Info datasets (synthetic, Waymo): the ground-truth rule (reject, naming frame and box) and dataset.class_map."""
import json

import numpy as np
import pytest

from pc3d.config import ConfigError
from pc3d.data.build import build_dataset


def _root(tmp_path, boxes, labels=("Vehicle", "Pedestrian")):
    (tmp_path / "points").mkdir()
    np.save(tmp_path / "points/f0.npy", np.zeros((4, 4), np.float32))
    infos = {"dataset": "synthetic", "class_names": ["Vehicle", "Pedestrian", "Cyclist"],
             "point_features": ["x", "y", "z", "intensity"],
             "frames": [{"frame_id": "f0", "points": "points/f0.npy", "boxes": boxes, "labels": list(labels)}]}
    (tmp_path / "val_infos.json").write_text(json.dumps(infos))
    return {"type": "synthetic", "root": str(tmp_path), "class_names": ["Vehicle", "Pedestrian", "Cyclist"],
            "point_features": ["x", "y", "z", "intensity"]}


GOOD = [1.0, 2.0, 0.5, 4.0, 1.8, 1.5, 0.1]


@pytest.mark.parametrize("bad, what", [([float("nan"), 2.0, 0.5, 4.0, 1.8, 1.5, 0.1], "NaN"),
                                       ([1.0, 2.0, 0.5, -4.0, 1.8, 1.5, 0.1], "not > 0"),
                                       ([1.0, 2.0, 0.5, 4.0, 1.8, 0.0, 0.1], "not > 0")])
def test_bad_ground_truth_box_is_rejected_naming_frame_and_box(tmp_path, bad, what):
    ds = build_dataset(_root(tmp_path, [GOOD, bad]), "val")
    with pytest.raises(ValueError, match=rf"frame 'f0' of .*val_infos.json: box 1 .*{what}"):
        ds.boxes_of(0)
    with pytest.raises(ValueError, match="box 1"):
        ds[0]


def test_class_map_renames_and_unmatched_class_is_an_error(tmp_path):
    cfg = _root(tmp_path, [GOOD, GOOD])
    assert build_dataset(cfg, "val").boxes_of(0).names == ["Vehicle", "Pedestrian"]
    renamed = dict(cfg, class_names=["Car", "Pedestrian"], class_map={"Vehicle": "Car"})
    assert build_dataset(renamed, "val").boxes_of(0).names == ["Car", "Pedestrian"]
    with pytest.raises(ConfigError, match=r"\['Car'\] match no .*val_infos.json object type"):
        build_dataset(dict(cfg, class_names=["Car", "Pedestrian"]), "val")
