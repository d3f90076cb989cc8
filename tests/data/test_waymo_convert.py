"""`create_data.py waymo`: segments -> points/*.npy + <split>_infos.json, parallel and resumable."""
import json
import os

import numpy as np
import pytest

from pc3d.cli import create_data
from pc3d.data.waymo.frame import extract_points, parse_frame
from pc3d.testing.waymo_synthetic_writer import default_lasers, write_synthetic_segment
from pc3d.io.tfrecord import read_tfrecord


def _run(root, out, *extra):
    return create_data.run(create_data.build_parser("waymo").parse_args(
        ["waymo", "--root", str(root), "--out", str(out), *extra]))


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    lasers = default_lasers(top_width=192, side_width=48)
    rendered = {}
    for seed in (1, 2):
        path = root / f"segment-{seed}_with_camera_labels.tfrecord"
        rendered[path] = write_synthetic_segment(path, num_frames=2, seed=seed, lasers=lasers)
    return root, rendered


def test_convert_synthetic_segments(segments, tmp_path, capsys):
    root, rendered = segments
    out = tmp_path / "out"
    assert _run(root, out, "--workers", "2") == 0
    assert "frames/s" in capsys.readouterr().out
    infos = json.loads((out / "train_infos.json").read_text())   # folder is not training/validation: "train"
    assert infos["dataset"] == "waymo"
    assert infos["class_names"] == ["Vehicle", "Pedestrian", "Cyclist"]
    assert infos["point_features"] == ["x", "y", "z", "intensity", "elongation"]
    assert len(infos["frames"]) == 4
    for entry in infos["frames"]:
        assert set(entry) == {"frame_id", "points", "boxes", "labels", "difficulty", "num_points", "timestamp",
                              "context_name"}
        points = np.load(out / entry["points"])
        assert points.dtype == np.float32 and points.shape[1] == 5 and len(points) > 1000
        assert len(entry["boxes"]) == len(entry["labels"]) == len(entry["difficulty"]) == len(entry["num_points"]) == 9
    # the saved points are the reader's points with NLZ points dropped and tanh intensity
    first_segment = sorted(rendered)[0]
    frame = parse_frame(read_tfrecord(first_segment)[0])
    entry = [e for e in infos["frames"] if e["timestamp"] == frame.timestamp_micros
             and e["context_name"] == frame.context.name][0]
    np.testing.assert_array_equal(np.load(out / entry["points"]), extract_points(frame).as_array())
    # loadable by the shared dataset class
    from pc3d.data.info_dataset import InfoDataset
    dataset = InfoDataset(out, "train", ("Vehicle", "Pedestrian", "Cyclist"), ("x", "y", "z", "intensity", "elongation"))
    sample = dataset[0]
    assert sample.points.points.shape[1] == 5 and len(sample.gt_boxes) == 9


def test_resume_skips_done_and_redoes_half_written(segments, tmp_path, capsys):
    root, _ = segments
    out = tmp_path / "out"
    _run(root, out, "--split", "val")
    capsys.readouterr()
    done = sorted((out / "segments").glob("*.done"))
    assert len(done) == 2
    stamp = {p: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    # second run: everything is skipped, nothing rewritten
    _run(root, out, "--split", "val")
    assert "0 segments converted, 2 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == stamp
    # an interrupted segment (JSON written, marker missing, a stray temp file) is converted again
    os.remove(done[0])
    (out / "points" / ".junk.npy.tmp123.npy").write_bytes(b"half")
    _run(root, out, "--split", "val")
    assert "1 segments converted, 1 already done" in capsys.readouterr().out
    infos = json.loads((out / "val_infos.json").read_text())
    assert len(infos["frames"]) == 4
    assert len({f["frame_id"] for f in infos["frames"]}) == 4


def test_convert_real_validation_file(shared_data, tmp_path, capsys):
    root = shared_data / "waymo/waymo_format/validation"
    out = tmp_path / "real"
    _run(root, out, "--include-sign")
    infos = json.loads((out / "val_infos.json").read_text())       # split from the 'validation' folder
    assert infos["class_names"] == ["Vehicle", "Pedestrian", "Cyclist", "Sign"]
    (frame,) = infos["frames"]
    assert len(frame["labels"]) == 18 and frame["labels"].count("Sign") == 17
    assert np.load(out / frame["points"]).shape == (0, 5)          # labels-only frame: no range images


def test_bad_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="--root"):
        _run(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no .tfrecord"):
        _run(tmp_path / "empty", tmp_path / "out")


def test_corrupt_segment_is_reported(tmp_path):
    root = tmp_path / "training"
    root.mkdir()
    lasers = default_lasers(top_width=64, side_width=32)
    path = root / "seg.tfrecord"
    write_synthetic_segment(path, num_frames=1, seed=3, lasers=lasers)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"seg\.tfrecord: corrupt TFRecord at byte offset 12: data CRC mismatch"):
        _run(root, tmp_path / "out")
    assert not list((tmp_path / "out" / "segments").glob("*.done"))
