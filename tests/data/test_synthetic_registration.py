"""Synthetic registration pairs: ground-truth transform, overlap, surfaces, 3DMatch-layout writer."""
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pc3d.data.synthetic.registration_pairs import (
    DepthCameraConfig, RoomConfig, covisible_mask, generate_room, information_matrix, make_registration_pair,
    write_registration_dataset)

SMALL_CAMERA = DepthCameraConfig(width=96, height=72)


def _apply(transform, points):
    return points.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]


@pytest.fixture(scope="module", params=["high", "low"])
def pair(request):
    return request.param, make_registration_pair(3, request.param, camera=SMALL_CAMERA)


def test_overlap_band_and_frames(pair):
    band, p = pair
    low, high = (0.3, 1.0) if band == "high" else (0.1, 0.3)
    assert low <= p.overlap <= high
    assert p.src_points.dtype == np.float32 and p.src_points.shape[1] == 3 and len(p.src_points) > 500
    assert p.ref_points.shape[1] == 3 and len(p.ref_points) > 500
    t = p.transform
    assert t.shape == (4, 4) and t.dtype == np.float64
    np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(t[3], [0, 0, 0, 1])
    # each scan is in its own camera frame: in front of the camera, within range
    for points in (p.src_points, p.ref_points):
        assert (points[:, 2] > 0).all()
        r = np.linalg.norm(points, axis=1)
        assert r.max() <= SMALL_CAMERA.max_range + 1e-4 and r.min() >= SMALL_CAMERA.min_range - 1e-4
    # the scans differ (not the same view twice)
    assert np.linalg.norm(t[:3, 3]) > 0.05 or np.arccos((np.trace(t[:3, :3]) - 1) / 2) > 0.05


def test_transform_is_exact_on_noise_free_points(pair):
    _, p = pair
    # the exact surface points in each camera frame are related by T exactly
    src_cam = _apply(np.linalg.inv(p.src_pose), p.src_world)
    ref_cam = _apply(np.linalg.inv(p.ref_pose), p.src_world)
    np.testing.assert_allclose(_apply(p.transform, src_cam), ref_cam, atol=1e-9)
    # and the noisy scan points are those exact points plus range noise
    noise = np.linalg.norm(p.src_points - src_cam, axis=1)
    sigma_max = SMALL_CAMERA.noise_std + SMALL_CAMERA.noise_quadratic * SMALL_CAMERA.max_range ** 2
    assert noise.max() < 6 * sigma_max


def test_points_lie_on_room_surfaces(pair):
    _, p = pair
    world = _apply(p.src_pose, p.src_points)
    dist = p.scene.distance_to_surface(world)
    assert np.quantile(dist, 0.99) < 0.05 and np.median(dist) < 0.01


def test_aligned_source_lands_on_reference_where_they_overlap(pair):
    _, p = pair
    aligned = _apply(p.transform, p.src_points)
    nn, _ = cKDTree(p.ref_points).query(aligned)
    covisible = covisible_mask(p.scene, p.src_world, p.ref_pose, SMALL_CAMERA)
    assert covisible.mean() == pytest.approx(p.overlap)
    assert np.median(nn[covisible]) < 0.03
    assert np.quantile(nn[covisible], 0.9) < 0.08
    # the identity is a much worse alignment than T
    nn_identity, _ = cKDTree(p.ref_points).query(p.src_points)
    assert (nn_identity < 0.05).mean() < (nn < 0.05).mean()


def test_overlap_matches_nearest_neighbour_recount(pair):
    _, p = pair
    aligned = _apply(p.transform, p.src_points)
    nn, _ = cKDTree(p.ref_points).query(aligned)
    # ref sampling is ~1 cm/m of range here, so 6 cm covers visible surfaces up to ~4.5 m
    recount = (nn < 0.06).mean()
    assert abs(recount - p.overlap) < 0.12


def test_determinism_and_validation():
    a = make_registration_pair(5, "high", camera=SMALL_CAMERA)
    b = make_registration_pair(5, "high", camera=SMALL_CAMERA)
    assert np.array_equal(a.src_points, b.src_points) and np.array_equal(a.transform, b.transform)
    with pytest.raises(ValueError, match="overlap"):
        make_registration_pair(0, "medium")
    with pytest.raises(ValueError, match="overlap"):
        make_registration_pair(0, (0.5, 0.2))
    with pytest.raises(ValueError, match="size_x"):
        RoomConfig(size_x=(0.0, 1.0))


def test_room_furniture_does_not_intersect():
    room = generate_room(0)
    prims = room.scene.primitives
    assert room.pieces.max() >= 4  # at least 5 pieces of furniture
    rng = np.random.default_rng(0)
    half = room.size / 2
    samples = rng.uniform([-half[0], -half[1], 0.0], [half[0], half[1], 2.5], (40000, 3))
    pieces = np.unique(room.pieces[room.pieces >= 0])
    inside = np.stack([np.any([prims.contains(samples, p) for p in np.flatnonzero(room.pieces == k)], axis=0)
                       for k in pieces], 1)
    assert inside.any(axis=0).all()  # every piece is hit by some sample
    assert (inside.sum(1) <= 1).all()  # no point of space belongs to two pieces
    # furniture stands inside the room, on the floor
    for p in np.flatnonzero(room.pieces >= 0):
        low, high = prims.extents_in_frame(p, np.eye(3), np.zeros(3))
        assert (low[:2] >= -half[:2] - 1e-9).all() and (high[:2] <= half[:2] + 1e-9).all()
        assert low[2] >= -1e-9


def test_information_matrix_gives_point_rmse():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 3)) + [0, 0, 2]
    info = information_matrix(points)
    brute = np.zeros((6, 6))
    for p in points:
        skew = np.array([[0, -p[2], p[1]], [p[2], 0, -p[0]], [-p[1], p[0], 0]])
        g = np.hstack([np.eye(3), -skew])
        brute += g.T @ g
    np.testing.assert_allclose(info, brute, atol=1e-9)
    # xi = (t, w) small motion: xi^T info xi / N is the mean squared displacement |t + w x p|^2
    xi = rng.normal(size=6) * 0.01
    displacement = xi[:3] + np.cross(xi[3:], points)
    assert xi @ info @ xi / info[0, 0] == pytest.approx((displacement ** 2).sum(1).mean())


def _read_gt_log(path: Path, size: int = 4):
    lines = [l.split() for l in path.read_text().strip().splitlines()]
    entries = []
    for k in range(0, len(lines), size + 1):
        i, j, n = (int(v) for v in lines[k])
        entries.append((i, j, n, np.array(lines[k + 1:k + 1 + size], dtype=np.float64)))
    return entries


def test_3dmatch_layout_round_trip(tmp_path):
    totals = write_registration_dataset(tmp_path, pairs=6, seed=1, fragments_per_scene=4, camera=SMALL_CAMERA,
                                        progress=False)
    assert sum(totals.values()) == 6
    found = 0
    for name in ("SynMatch", "SynLoMatch"):
        for scene_dir in sorted((tmp_path / "benchmarks" / name).glob("*")):
            entries = _read_gt_log(scene_dir / "gt.log")
            infos = _read_gt_log(scene_dir / "gt.info", size=6)
            assert [e[:2] for e in infos] == [e[:2] for e in entries]
            for *_, info in infos:
                assert info.shape == (6, 6) and info[0, 0] > 0
                np.testing.assert_allclose(info, info.T, rtol=1e-6)
            overlaps = {}
            for line in (scene_dir / "gt_overlap.log").read_text().strip().splitlines():
                i, j, ov = line.split(",")
                overlaps[(int(i), int(j))] = float(ov)
            assert len(overlaps) == len(entries)
            for i, j, n, t in entries:
                assert n == 4 and i < j
                frag_i = np.load(tmp_path / scene_dir.name / f"cloud_bin_{i}.npy")
                frag_j = np.load(tmp_path / scene_dir.name / f"cloud_bin_{j}.npy")
                assert frag_i.dtype == np.float32 and frag_i.shape[1] == 3
                # T maps fragment j into fragment i's frame
                nn, _ = cKDTree(frag_i).query(_apply(t, frag_j))
                ov = overlaps[(i, j)]
                assert (0.3 < ov <= 1.0) if name == "SynMatch" else (0.1 <= ov <= 0.3)
                assert abs((nn < 0.06).mean() - ov) < 0.15
                found += 1
    assert found == 6
    assert not list(tmp_path.rglob("*.tmp"))
    import json
    meta = json.loads((tmp_path / "metadata" / "SynMatch.json").read_text())
    assert len(meta) == totals["SynMatch"]


def test_no_free_camera_position_draws_again(monkeypatch):
    """A room with nowhere to stand must not abort a training run: the generator moves on to the next room,
    and only a seed with no usable room at all raises (clearly)."""
    import pc3d.data.synthetic.registration_pairs as pairs

    calls = {"n": 0}
    real = pairs._free_position

    def first_ten_fail(room, rng, near=None, step=0.0):
        calls["n"] += 1
        return None if calls["n"] <= 10 else real(room, rng, near, step)

    monkeypatch.setattr(pairs, "_free_position", first_ten_fail)
    pair = pairs.make_registration_pair(3, overlap="high")
    assert pairs.HIGH_OVERLAP[0] <= pair.overlap <= pairs.HIGH_OVERLAP[1]
    monkeypatch.setattr(pairs, "_free_position", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="no pair with overlap"):
        pairs.make_registration_pair(3, overlap="high", max_attempts=3)
