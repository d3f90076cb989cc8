"""metrics_pb2.Objects read/write, tools/eval_waymo.py, and the real gt.bin."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.evaluation.waymo_io import OBJECT_CLASS_NAMES, frame_key, paired_frames, read_objects, write_objects
from pc3d.evaluation.waymo_metric import evaluate_objects_files, format_metrics
from pc3d.structures import Boxes3D

REPO = Path(__file__).resolve().parents[2]
GT_BIN = "waymo/waymo_format/gt.bin"


def _boxes(n, seed=0, scores=True):
    rng = np.random.default_rng(seed)
    boxes = np.c_[rng.uniform(-50, 50, (n, 3)), rng.uniform(0.5, 5, (n, 3)), rng.uniform(-np.pi, np.pi, n)]
    return Boxes3D(boxes.astype(np.float32), rng.integers(0, 3, n), ("Vehicle", "Pedestrian", "Cyclist"),
                   torch.rand(n) if scores else None, difficulty=rng.integers(1, 3, n), num_points=rng.integers(1, 90, n))


def test_objects_round_trip(tmp_path):
    frames = [("ctx_a", 100, _boxes(5, 0)), ("ctx_a", 200, _boxes(3, 1)), ("ctx_b", 100, _boxes(4, 2))]
    assert write_objects(tmp_path / "pred.bin", frames) == 12
    back = read_objects(tmp_path / "pred.bin")
    assert sorted(back) == [("ctx_a", 100), ("ctx_a", 200), ("ctx_b", 100)]
    for context, timestamp, boxes in frames:
        got = back[(context, timestamp)]
        assert got.class_names == OBJECT_CLASS_NAMES
        assert got.names == boxes.names
        np.testing.assert_allclose(got.boxes.numpy(), boxes.boxes.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.scores.numpy(), boxes.scores.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(got.difficulty.numpy(), boxes.difficulty.numpy())
        np.testing.assert_array_equal(got.num_points.numpy(), boxes.num_points.numpy())


def test_write_rejects_non_waymo_class(tmp_path):
    boxes = Boxes3D(torch.zeros(1, 7), [0], ("Truck",), torch.ones(1))
    with pytest.raises(ValueError, match="Truck"):
        write_objects(tmp_path / "x.bin", [("c", 1, boxes)])
    assert not (tmp_path / "x.bin").exists()


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_objects(tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"\xff\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="junk.bin"):
        read_objects(tmp_path / "junk.bin")


def test_frame_key():
    assert frame_key("1071392229495085036_1844_790_1864_790_1507315488219118") == \
        ("1071392229495085036_1844_790_1864_790", 1507315488219118)
    with pytest.raises(ValueError, match="timestamp"):
        frame_key("no-timestamp")


def test_paired_frames_fill_missing():
    keys, preds, gts = paired_frames({("a", 1): _boxes(2)}, {("b", 2): _boxes(1, scores=False)})
    assert keys == [("a", 1), ("b", 2)]
    assert len(preds[1]) == 0 and len(gts[0]) == 0


def test_real_gt_self_evaluates_to_one(shared_data, tmp_path):
    gt_path = shared_data / GT_BIN
    gts = read_objects(gt_path, drop_empty_ground_truth=True)
    assert list(gts) == [("1071392229495085036_1844_790_1864_790", 1507315488219118)]
    (gt,) = gts.values()
    assert gt.names == ["Vehicle"] and gt.num_points.tolist() == [100] and gt.difficulty.tolist() == [1]
    # the same vehicle as the Frame proto's label (mmdet3d converted it from that frame)
    np.testing.assert_allclose(gt.boxes[0, 3:6].numpy(), [4.36, 2.01, 1.46], atol=0.01)
    # predictions = the ground truth, written with the pc3d writer, evaluated from the files
    write_objects(tmp_path / "pred.bin", [(c, t, b) for (c, t), b in gts.items()])
    metrics = evaluate_objects_files(tmp_path / "pred.bin", gt_path)
    for level in (1, 2):
        assert metrics[f"OBJECT_TYPE_TYPE_VEHICLE_LEVEL_{level}/AP"] == pytest.approx(1.0, abs=1e-6)
        assert metrics[f"OBJECT_TYPE_TYPE_VEHICLE_LEVEL_{level}/APH"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["OBJECT_TYPE_TYPE_PEDESTRIAN_LEVEL_2/AP"] == 0.0
    assert "OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1: [mAP 1" in format_metrics(metrics)


def test_eval_tool_cli(shared_data, tmp_path, capsys):
    gt_path = shared_data / GT_BIN
    gts = read_objects(gt_path)
    shifted = {k: Boxes3D(b.boxes + torch.tensor([1.5, 0, 0, 0, 0, 0, 0]), b.labels, b.class_names, b.scores)
               for k, b in gts.items()}
    write_objects(tmp_path / "pred.bin", [(c, t, b) for (c, t), b in shifted.items()])
    args = [str(tmp_path / "pred.bin"), str(gt_path)]
    # the real command line once (one subprocess: importing torch is slow on a loaded machine)
    out = subprocess.run([sys.executable, str(REPO / "tools/eval_waymo.py"), *args, "--json"],
                         capture_output=True, text=True, check=True).stdout
    metrics = json.loads(out)
    assert len(metrics) == 12 and metrics["OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP"] == 0.0
    # the other modes in-process through the script's main()
    spec = importlib.util.spec_from_file_location("eval_waymo_tool", REPO / "tools/eval_waymo.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(args + ["--sign"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n") == 8 and "OBJECT_TYPE_TYPE_SIGN_LEVEL_2: [mAP 0]" in text
    assert tool.main([str(tmp_path / "none.bin"), str(gt_path)]) == 2
    assert "none.bin" in capsys.readouterr().err


def _run_tool(argv):
    spec = importlib.util.spec_from_file_location("eval_waymo_tool", REPO / "tools/eval_waymo.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(argv)


def test_eval_tool_refuses_submissions_that_cannot_be_scored(tmp_path, capsys):
    """Each of these scored AP 0 with rc 0 before: an empty file, a bare Label / Box proto, and a file
    whose frames (context name + timestamp) are none of the ground truth's. Now rc 2 and the reason."""
    from waymo_open_dataset.protos import metrics_pb2  # noqa: F401  (also pulls label_pb2)
    from waymo_open_dataset import label_pb2

    gt = tmp_path / "gt.bin"
    write_objects(gt, [("ctx_gt", 100, _boxes(4, 0, scores=False))])
    (tmp_path / "empty.bin").write_bytes(b"")
    label = label_pb2.Label()
    label.box.center_x, label.box.length, label.box.width, label.box.height = 3.0, 4.0, 2.0, 1.5
    label.type = label_pb2.Label.TYPE_VEHICLE
    (tmp_path / "label.bin").write_bytes(label.SerializeToString())
    (tmp_path / "box.bin").write_bytes(label.box.SerializeToString())
    write_objects(tmp_path / "other_ctx.bin", [("ctx_other", 100, _boxes(4, 0))])
    write_objects(tmp_path / "other_time.bin", [("ctx_gt", 101, _boxes(4, 0))])
    cases = {"empty.bin": "is empty", "label.bin": "no object of a Waymo type", "box.bin": "no object of a Waymo type",
             "other_ctx.bin": "none of its 1 frames", "other_time.bin": "none of its 1 frames"}
    for name, reason in cases.items():
        assert _run_tool([str(tmp_path / name), str(gt)]) == 2, name
        err = capsys.readouterr().err
        assert name in err and reason in err, (name, err)
    assert _run_tool([str(gt), str(tmp_path / "empty.bin")]) == 2  # an empty ground truth too
    assert "empty.bin" in capsys.readouterr().err
    # a submission sharing one frame with the ground truth is scored
    write_objects(tmp_path / "ok.bin", [("ctx_gt", 100, _boxes(4, 0)), ("ctx_other", 5, _boxes(2, 1))])
    assert _run_tool([str(tmp_path / "ok.bin"), str(gt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP"] >= 0.0


def test_ground_truth_with_nan_centre_or_bad_size_is_rejected_naming_frame_and_box(tmp_path, capsys):
    """The documented rule (docs/conventions.md): reject, never drop. NaN centre, negative and zero size."""
    from pc3d.evaluation.waymo_metric import waymo_metrics

    good = _boxes(3, 0, scores=False)
    for bad_value, column, what in ((float("nan"), 0, "NaN"), (-1.0, 3, "not > 0"), (0.0, 5, "not > 0")):
        boxes = good.boxes.clone()
        boxes[1, column] = bad_value
        bad = Boxes3D(boxes, good.labels, good.class_names, None, good.difficulty, good.num_points)
        with pytest.raises(ValueError, match=rf"frame 'ctx/7': box 1 .*{what}"):
            waymo_metrics([_boxes(3, 1), _boxes(3, 2)], [good, bad], frame_names=["ctx/6", "ctx/7"])
        with pytest.raises(ValueError, match=rf"frame #1: box 1 .*{what}"):
            waymo_metrics([_boxes(3, 1), _boxes(3, 2)], [good, bad])
    # through the files and the tool: negative length in the ground-truth file -> rc 2, frame and box named
    boxes = good.boxes.clone()
    boxes[2, 3] = -4.0
    write_objects(tmp_path / "gt.bin", [("ctx", 9, Boxes3D(boxes, good.labels, good.class_names, None,
                                                            good.difficulty, good.num_points))])
    write_objects(tmp_path / "pred.bin", [("ctx", 9, _boxes(3, 1))])
    assert _run_tool([str(tmp_path / "pred.bin"), str(tmp_path / "gt.bin")]) == 2
    assert "frame 'ctx/9': box 2" in capsys.readouterr().err
