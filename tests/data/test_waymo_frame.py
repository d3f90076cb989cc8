"""Waymo Frame proto -> points / boxes: the real labels-only frame and synthetic range-image round trips."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pc3d.data.waymo import range_image as ri
from pc3d.data.waymo.frame import (CLASS_NAMES, extract_points, frame_id, frame_to_info, labels_to_boxes, parse_frame,
                                   squash_intensity)
from pc3d.testing.waymo_synthetic_writer import SIDE_LEFT, TOP, default_lasers, render_frame, write_synthetic_segment
from pc3d.io.tfrecord import read_tfrecord

VAL_TFRECORD = "waymo/waymo_format/validation/val.tfrecord"
ORDER = [(TOP, 0), (SIDE_LEFT, 0), (TOP, 1), (SIDE_LEFT, 1)]   # official order: per return, lasers by name


@pytest.fixture(scope="module")
def rendered():
    return render_frame(seed=7)


@pytest.fixture(scope="module")
def real_frame(shared_data):
    return parse_frame(read_tfrecord(shared_data / VAL_TFRECORD)[0])


def test_real_frame_labels(real_frame):
    assert frame_id(real_frame) == "1071392229495085036_1844_790_1864_790_1507315488219118"
    assert len(real_frame.laser_labels) == 18
    gt = labels_to_boxes(real_frame)                   # signs dropped by default
    assert gt.class_names == CLASS_NAMES and gt.names == ["Vehicle"]
    gt_all = labels_to_boxes(real_frame, include_sign=True)
    assert len(gt_all) == 18 and gt_all.names.count("Sign") == 17
    for label, box, diff, points in zip(real_frame.laser_labels, gt_all.boxes, gt_all.difficulty, gt_all.num_points):
        b = label.box
        np.testing.assert_allclose(box.numpy(), [b.center_x, b.center_y, b.center_z, b.length, b.width, b.height,
                                                 (b.heading + np.pi) % (2 * np.pi) - np.pi], rtol=1e-6, atol=1e-5)
        assert points == label.num_lidar_points_in_box
        expected = 2 if (label.detection_difficulty_level == 2 or label.num_lidar_points_in_box <= 5) else 1
        assert diff == expected
    assert (gt_all.boxes[:, 6] >= -np.pi).all() and (gt_all.boxes[:, 6] < np.pi).all()
    # the vehicle: matches the mmdet3d-converted gt.bin box of the same frame
    np.testing.assert_allclose(gt.boxes[0, :2].numpy(), [69.68, 33.34], atol=0.02)
    # no range images in this stripped frame: zero points, not an error
    assert len(extract_points(real_frame)) == 0
    info = frame_to_info(real_frame, "points/x.npy")
    assert info["labels"] == ["Vehicle"] and info["timestamp"] == 1507315488219118
    assert info["context_name"] == "1071392229495085036_1844_790_1864_790"


def test_parse_frame_rejects_garbage():
    with pytest.raises(ValueError, match="not a waymo_open_dataset.Frame"):
        parse_frame(b"\xff\xff\xff\xff garbage")


def test_round_trip_points(rendered):
    points = extract_points(rendered.frame)
    expected = np.concatenate([rendered.points[k] for k in ORDER])
    assert len(points) == expected.shape[0] > 10_000
    # float32 range and float32 world poses (|t| ~ 1 km) bound the error to well under a millimetre
    np.testing.assert_allclose(points.xyz, expected, atol=2e-3)
    np.testing.assert_array_equal(points.intensity, np.concatenate([rendered.intensity[k] for k in ORDER]))
    np.testing.assert_array_equal(points.elongation, np.concatenate([rendered.elongation[k] for k in ORDER]))
    np.testing.assert_array_equal(points.in_nlz, np.concatenate([rendered.nlz[k] for k in ORDER]))
    assert points.in_nlz.any() and not points.in_nlz.all()
    counts = {k: len(rendered.points[k]) for k in ORDER}
    assert counts[(TOP, 1)] > 0 and counts[(SIDE_LEFT, 0)] > 0
    np.testing.assert_array_equal(np.bincount(points.laser.astype(int) * 2 + points.return_index, minlength=8)[[2, 6, 3, 7]],
                                  [counts[k] for k in ORDER])
    first = extract_points(rendered.frame, returns=(0,))
    assert len(first) == counts[(TOP, 0)] + counts[(SIDE_LEFT, 0)]


def test_round_trip_label_point_counts(rendered):
    gt = labels_to_boxes(rendered.frame)
    assert gt.names == rendered.labels
    np.testing.assert_allclose(gt.boxes.numpy(), rendered.boxes, atol=1e-5)
    xyz = extract_points(rendered.frame).xyz
    for box, count in zip(rendered.boxes, gt.num_points.tolist()):
        c, s = np.cos(box[6]), np.sin(box[6])
        local = (xyz - box[:3]) @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]).T
        inside = np.all(np.abs(local) <= box[3:6] / 2 + 1e-3, axis=1).sum()
        assert abs(int(inside) - count) <= max(2, 0.02 * count)
    assert (gt.num_points > 0).sum() >= len(gt) - 2


def test_pixel_pose_matters(rendered):
    """Ignoring the TOP per-pixel pose moves points by decimetres (the car drives during the sweep)."""
    from pc3d.data.waymo.frame import range_images_of

    images, top_pose = range_images_of(rendered.frame)
    calib = [c for c in rendered.frame.context.laser_calibrations if c.name == TOP][0]
    image = images[TOP][0]
    extrinsic = np.asarray(calib.extrinsic.transform).reshape(4, 4)
    rows = ri.beam_inclinations_for_rows(calib, image.shape[0])
    frame_pose = np.asarray(rendered.frame.pose.transform).reshape(4, 4)
    with_pose, _, _ = ri.range_image_to_points(image, extrinsic, rows, ri.pixel_pose_matrices(top_pose), frame_pose)
    without, _, _ = ri.range_image_to_points(image, extrinsic, rows)
    np.testing.assert_allclose(with_pose, rendered.points[(TOP, 0)], atol=2e-3)
    assert np.abs(without - rendered.points[(TOP, 0)]).max() > 0.3
    # and the beam order matters: not reversing the inclinations is far off
    wrong, _, _ = ri.range_image_to_points(image, extrinsic, rows[::-1].copy(), ri.pixel_pose_matrices(top_pose), frame_pose)
    assert np.abs(wrong - rendered.points[(TOP, 0)]).max() > 1.0


def test_uniform_and_given_inclinations(rendered):
    calibs = {c.name: c for c in rendered.frame.context.laser_calibrations}
    side = calibs[SIDE_LEFT]
    assert len(side.beam_inclinations) == 0
    rows = ri.beam_inclinations_for_rows(side, 24)
    np.testing.assert_allclose(rows[::-1], side.beam_inclination_min + (np.arange(24) + 0.5) / 24
                               * (side.beam_inclination_max - side.beam_inclination_min))
    top = calibs[TOP]
    np.testing.assert_allclose(ri.beam_inclinations_for_rows(top, 64), np.asarray(top.beam_inclinations)[::-1])
    assert np.ptp(np.diff(np.asarray(top.beam_inclinations))) > 1e-3       # really non-uniform
    with pytest.raises(ValueError, match="64 beam inclinations"):
        ri.beam_inclinations_for_rows(top, 32)


def test_rotation_matches_scipy():
    rng = np.random.default_rng(0)
    rpy = rng.uniform(-np.pi, np.pi, (50, 3))
    ours = ri.rotation_from_roll_pitch_yaw(rpy[:, 0], rpy[:, 1], rpy[:, 2])
    ref = Rotation.from_euler("ZYX", rpy[:, ::-1]).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_matrix_codec_round_trip():
    array = np.random.default_rng(1).normal(size=(3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(ri.decompress_matrix(ri.compress_matrix(array)), array)
    ints = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    np.testing.assert_array_equal(ri.decompress_matrix(ri.compress_matrix(ints), "int32"), ints)
    with pytest.raises(ValueError, match="not a zlib stream"):
        ri.decompress_matrix(b"not zlib")
    with pytest.raises(TypeError, match="compressed"):
        ri.decompress_matrix("text")


def test_range_image_argument_checks():
    with pytest.raises(ValueError, match="range_image"):
        ri.range_image_to_points(np.zeros((4, 4)), np.eye(4), np.zeros(4))
    with pytest.raises(ValueError, match="row_inclinations"):
        ri.range_image_to_points(np.zeros((4, 8, 4)), np.eye(4), np.zeros(3))
    with pytest.raises(ValueError, match="frame_pose"):
        ri.range_image_to_cartesian(np.zeros((2, 3)), np.eye(4), np.zeros(2), np.tile(np.eye(4), (2, 3, 1, 1)))


def test_point_array_layout(rendered):
    points = extract_points(rendered.frame)
    array = points.as_array()
    assert array.dtype == np.float32 and array.shape == (int((~points.in_nlz).sum()), 5)
    assert array[:, 3].min() >= 0 and array[:, 3].max() <= 1         # tanh-squashed intensity
    np.testing.assert_allclose(array[:, 3], squash_intensity(points.intensity[~points.in_nlz]), rtol=1e-6)
    assert points.as_array(drop_nlz=False).shape[0] == len(points)


def test_segment_frames_are_consistent(tmp_path):
    """Two frames of one segment: the static scene seen from two vehicle poses agrees in the world frame."""
    lasers = default_lasers(top_width=256, side_width=64)
    rendered = write_synthetic_segment(tmp_path / "seg.tfrecord", num_frames=2, seed=5, lasers=lasers)
    frames = [parse_frame(r) for r in read_tfrecord(tmp_path / "seg.tfrecord")]
    assert frame_id(frames[0]) != frame_id(frames[1])
    boxes = [labels_to_boxes(f).boxes.numpy() for f in frames]
    poses = [np.asarray(f.pose.transform).reshape(4, 4) for f in frames]
    world = [(p[:3, :3] @ b[:, :3].T).T + p[:3, 3] for p, b in zip(poses, boxes)]
    np.testing.assert_allclose(world[0], world[1], atol=1e-3)
    for frame, r in zip(frames, rendered):
        np.testing.assert_allclose(extract_points(frame).xyz, np.concatenate([r.points[k] for k in ORDER]), atol=2e-3)


def test_round_trip_on_synthetic_lidar_scene():
    """The pc3d.data.synthetic scene (the one `simulate_frame(seed)` scans: parts-built vehicles,
    pedestrians, cyclists, trees, buildings, rolling ground) rendered as Waymo range images."""
    pytest.importorskip("pc3d.data.synthetic.scene")
    from pc3d.data.synthetic.lidar import simulate_frame

    seed = 5
    rendered = render_frame(seed=seed, scene="synthetic", lasers=default_lasers(360, 90, rolling_steps=12))
    points = extract_points(rendered.frame)
    expected = np.concatenate([rendered.points[k] for k in ORDER])
    assert len(points) == len(expected) > 10_000
    np.testing.assert_allclose(points.xyz, expected, atol=2e-3)
    gt = labels_to_boxes(rendered.frame)
    reference = simulate_frame(seed).gt_boxes
    assert gt.names == reference.names
    np.testing.assert_allclose(gt.boxes.numpy(), reference.boxes.numpy(), atol=1e-4)
    assert (gt.num_points > 5).sum() >= 5
