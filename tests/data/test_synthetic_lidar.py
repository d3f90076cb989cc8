"""Synthetic LiDAR simulator: geometry, occlusion, labels, determinism (tiny 16-beam frames)."""
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from pc3d.data.synthetic import shapes
from pc3d.data.synthetic.ground import GroundModel
from pc3d.data.synthetic.labels import count_points_in_boxes, difficulty_from_counts
from pc3d.data.synthetic.lidar import LidarConfig, scan_with_config, simulate, simulate_frame, without_noise
from pc3d.data.synthetic.primitives import BOX, CYLINDER, rotation_z
from pc3d.data.synthetic.raycast import GROUND, MISS, cast_rays
from pc3d.testing.reference_raycast import cast_rays_reference
from pc3d.data.synthetic.scene import CLASS_NAMES, SceneConfig, generate_scene, scene_from_shapes

TINY = LidarConfig.preset("tiny16")
SMALL = SceneConfig.preset("small")


@pytest.fixture(scope="module")
def tiny_sim():
    return simulate(7, SMALL, TINY)


def test_determinism_bitwise():
    a = simulate_frame(3, SMALL, TINY)
    b = simulate_frame(3, SMALL, TINY)
    assert torch.equal(a.points.points, b.points.points)
    assert torch.equal(a.gt_boxes.boxes, b.gt_boxes.boxes)
    assert torch.equal(a.gt_boxes.num_points, b.gt_boxes.num_points)
    c = simulate_frame(4, SMALL, TINY)
    assert c.points.points.shape != a.points.points.shape or not torch.equal(c.points.points, a.points.points)


def test_frame_structure(tiny_sim):
    frame, scene, sweep = tiny_sim
    assert frame.points.feature_names == ("x", "y", "z", "intensity")
    assert frame.points.points.dtype == torch.float32
    boxes = frame.gt_boxes
    assert boxes.class_names == CLASS_NAMES == ("Vehicle", "Pedestrian", "Cyclist")
    assert len(boxes) == len(scene.objects) > 0
    assert set(boxes.names) <= set(CLASS_NAMES)
    heading = boxes.boxes[:, 6]
    assert (heading >= -np.pi).all() and (heading < np.pi).all()
    assert (boxes.boxes[:, 3:6] > 0).all()
    assert torch.equal(boxes.difficulty, torch.where(boxes.num_points <= 5, 2, 1))


def test_points_lie_on_surfaces(tiny_sim):
    _, scene, sweep = tiny_sim
    assert len(sweep.points) > 1000
    # exact hits are on the surface the caster reports (analytic surface functions, not the caster)
    own = scene.distance_to_primitive(sweep.noiseless, sweep.primitive)
    assert own.max() < 1e-4
    # noisy points: displaced along the ray by the range noise only
    sigma = TINY.range_noise_std
    dist = scene.distance_to_surface(sweep.points[:, :3])
    assert np.quantile(dist, 0.99) < 3 * sigma
    assert dist.max() < 6 * sigma + 1e-4
    along = np.linalg.norm(sweep.points[:, :3] - sweep.noiseless, axis=1)
    assert along.max() < 6 * sigma
    assert 0.5 * sigma < along.std() * np.sqrt(np.pi / (np.pi - 2)) < 1.5 * sigma  # half-normal spread


def test_noise_free_points_exactly_on_surfaces():
    frame, scene, sweep = simulate(11, SMALL, without_noise(TINY))
    dist = scene.distance_to_surface(sweep.points[:, :3])
    assert dist.max() < 1e-4  # float32 rounding of ~40 m coordinates plus the ground tolerance
    assert (sweep.primitive == GROUND).any() and (sweep.primitive >= 0).any()


def test_caster_matches_numpy_reference(tiny_sim):
    _, scene, _ = tiny_sim
    dirs, _ = TINY.ray_directions(0.37)
    origin = np.array([0.0, 0.0, TINY.sensor_height])
    hits = cast_rays(origin, dirs, scene.primitives, scene.ground, TINY.max_range)
    ref_t, ref_id = cast_rays_reference(origin, dirs, scene.primitives, scene.ground, TINY.max_range)
    np.testing.assert_array_equal(np.isfinite(hits.distance), np.isfinite(ref_t))
    hit = np.isfinite(ref_t)
    np.testing.assert_allclose(hits.distance[hit], ref_t[hit], rtol=0, atol=1e-6)
    # ids may differ only where two primitives of one object share a surface (a tie)
    differ = hits.primitive != ref_id
    assert differ.mean() < 0.01
    np.testing.assert_allclose(hits.distance[differ], ref_t[differ], atol=1e-9)
    # normals are unit and face the sensor
    n = hits.normal[hit]
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
    assert ((n * dirs[hit]).sum(1) <= 1e-12).all()


def test_axis_parallel_rays_match_reference():
    # rays with exactly zero components (the 0 deg beam, azimuths on the axes) hit the slab edge cases
    prims = scene_from_shapes([([(BOX, np.array([0.0, 0.0, 0.5]), np.eye(3), np.array([1.0, 1.0, 0.5]), 0.5)],
                                5.0, 0.0, 0.0, None),
                               ([(BOX, np.array([0.0, 0.0, 2.0]), np.eye(3), np.array([1.0, 1.0, 0.5]), 0.5)],
                                0.0, 5.0, 0.0, None)]).primitives
    dirs = np.array([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
    for height in (0.5, 1.8, 2.0):  # through the first box, above both / through the second, through the second
        origin = np.array([0.0, 0.0, height])
        hits = cast_rays(origin, dirs, prims, None, 50.0)
        ref_t, ref_id = cast_rays_reference(origin, dirs, prims, None, 50.0)
        np.testing.assert_array_equal(hits.primitive, ref_id)
        np.testing.assert_allclose(hits.distance, ref_t)
    hits = cast_rays(np.array([0.0, 0.0, 0.5]), dirs, prims, None, 50.0)
    assert hits.distance[0] == pytest.approx(4.0) and hits.primitive[1] == MISS
    hits = cast_rays(np.array([0.0, 0.0, 1.8]), dirs, prims, None, 50.0)
    assert hits.primitive[0] == MISS and hits.distance[1] == pytest.approx(4.0)


def test_range_limits_and_intensity(tiny_sim):
    _, _, sweep = tiny_sim
    ranges = np.linalg.norm(sweep.points[:, :3].astype(np.float64) - sweep.origin, axis=1)
    assert ranges.max() <= TINY.max_range + 1e-4
    assert ranges.min() >= TINY.min_range - 1e-4
    intensity = sweep.points[:, 3]
    assert intensity.min() >= 0.0 and intensity.max() <= 1.0
    assert intensity.std() > 0.01


def test_intensity_lambertian_on_flat_ground():
    ground = GroundModel.flat(reflectivity=0.3)
    scene = scene_from_shapes([], ground)
    config = without_noise(TINY)
    sweep = scan_with_config(scene, config, seed=0)
    assert (sweep.primitive == GROUND).all() and len(sweep.points) > 0
    np.testing.assert_allclose(sweep.points[:, 2], 0.0, atol=1e-5)
    direction = (sweep.noiseless - sweep.origin) / np.linalg.norm(sweep.noiseless - sweep.origin, axis=1)[:, None]
    np.testing.assert_allclose(sweep.points[:, 3], 0.3 * np.abs(direction[:, 2]), atol=1e-6)
    # every downward beam whose ground hit is within range returns on every column
    elev = np.deg2rad(config.elevations_deg())
    reach = config.sensor_height / np.tan(-elev[elev < 0]) / np.cos(elev[elev < 0])
    expected = ((reach <= config.max_range) & (reach >= config.min_range)).sum() * config.num_azimuths
    assert len(sweep.points) == expected


def test_weak_returns_are_lost_with_range():
    exact = without_noise(TINY)
    weak = replace(exact, return_threshold=0.002)
    _, _, all_returns = simulate(11, SMALL, exact)
    _, _, kept = simulate(11, SMALL, weak)
    ranges = np.linalg.norm(all_returns.noiseless - all_returns.origin, axis=1)
    strong = all_returns.points[:, 3] >= 0.002 * (ranges / 10.0) ** 2
    assert 0 < (~strong).sum() and strong.sum() == len(kept.points)
    np.testing.assert_array_equal(kept.points, all_returns.points[strong])
    # what is lost is mostly far away
    assert np.median(ranges[~strong]) > np.median(ranges[strong])


def _brute_force_counts(points, boxes):
    """Points inside the convex hull of each box's 8 corners, via the 6 face half-spaces."""
    counts = []
    for box in boxes.astype(np.float64):
        c, d, h = box[:3], box[3:6], box[6]
        axes = np.array([[np.cos(h), np.sin(h), 0.0], [-np.sin(h), np.cos(h), 0.0], [0.0, 0.0, 1.0]])
        inside = np.ones(len(points), bool)
        for axis, extent in zip(axes, d):
            for sign in (1.0, -1.0):
                face_point = c + sign * axis * extent / 2
                inside &= ((points[:, :3].astype(np.float64) - face_point) @ (sign * axis)) <= 1e-9
        counts.append(inside.sum())
    return np.array(counts)


def test_label_counts_match_brute_force(tiny_sim):
    frame, _, _ = tiny_sim
    points = frame.points.points.numpy()
    boxes = frame.gt_boxes.boxes.numpy()
    np.testing.assert_array_equal(frame.gt_boxes.num_points.numpy(), _brute_force_counts(points, boxes))
    assert frame.gt_boxes.num_points.sum() > 0
    rng = np.random.default_rng(0)
    random_points = rng.uniform(-30, 30, (5000, 3)) * [1, 1, 0.05]
    np.testing.assert_array_equal(count_points_in_boxes(random_points, boxes), _brute_force_counts(random_points, boxes))
    np.testing.assert_array_equal(difficulty_from_counts(np.array([0, 5, 6])), [2, 2, 1])


def test_boxes_enclose_their_primitives_and_points(tiny_sim):
    _, scene, sweep = tiny_sim
    prims = scene.primitives
    for k, obj in enumerate(scene.objects):
        box = obj.box
        rot = rotation_z(box[6])
        for p in range(obj.primitive_start, obj.primitive_stop):
            assert prims.owners[p] == k
            low, high = prims.extents_in_frame(p, rot, box[:3])
            assert (low >= -box[3:6] / 2 - 1e-6).all() and (high <= box[3:6] / 2 + 1e-6).all()
        # tight: the margin is the only slack (sides and top), the bottom touches the lowest primitive
        lows, highs = zip(*(prims.extents_in_frame(p, rot, box[:3]) for p in range(obj.primitive_start, obj.primitive_stop)))
        span = np.max(highs, 0) - np.min(lows, 0)
        np.testing.assert_allclose(box[3:6] - span, [0.1, 0.1, 0.05], atol=1e-6)
        own = sweep.owner == k
        if own.any():
            assert count_points_in_boxes(sweep.noiseless[own], box[None])[0] == own.sum()


def _footprint(prims, p):
    """BEV convex footprint of primitive p (sampled surface points, hull)."""
    from shapely.geometry import MultiPoint

    kind, size, rot, center = prims.kinds[p], prims.sizes[p], prims.rotations[p], prims.centers[p]
    if kind == BOX:
        local = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * size
    else:
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        if kind == CYLINDER:
            ring = np.stack([np.cos(angles), np.sin(angles)], 1) * size[0]
            local = np.concatenate([np.c_[ring, np.full(24, z)] for z in (-size[2], size[2])])
        else:
            u, v = np.meshgrid(angles, np.linspace(-np.pi / 2, np.pi / 2, 9))
            local = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], -1).reshape(-1, 3) * size
    world = local @ rot.T + center
    return MultiPoint(world[:, :2].tolist()).convex_hull


def test_objects_do_not_intersect_each_other_or_clutter():
    pytest.importorskip("shapely")
    from shapely.geometry import Polygon

    scene = generate_scene(5, SceneConfig.preset("street"))
    prims = scene.primitives
    polygons = []
    for obj in scene.objects:
        b = obj.box
        corners = (np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * b[3:5] / 2) @ rotation_z(b[6])[:2, :2].T + b[:2]
        polygons.append(Polygon(corners))
    assert len(polygons) >= 12
    for i in range(len(polygons)):
        for j in range(i + 1, len(polygons)):
            assert polygons[i].intersection(polygons[j]).area < 1e-9, (i, j)
    clutter = [_footprint(prims, p) for p in np.flatnonzero(prims.owners < 0)]
    assert len(clutter) > 10
    for i, poly in enumerate(polygons):
        for c in clutter:
            assert poly.intersection(c).area < 1e-9, i
    # nothing inside the ego clearance and the ground passes through the ego origin
    centers = np.array([o.box[:2] for o in scene.objects])
    assert (np.abs(centers) > 0.5).any(axis=1).all()
    assert abs(scene.ground.height(np.zeros(1), np.zeros(1))[0]) < 1e-12


def _occluder():
    # a 3.5 m tall, 8 m wide panel truck side: taller than the 2.1 m sensor, so it shadows everything behind it
    return [(BOX, np.array([0.0, 0.0, 1.75]), np.eye(3), np.array([1.0, 4.0, 1.75]), 0.5)]


def test_occlusion_hides_object_behind_another():
    rng = np.random.default_rng(0)
    pedestrian = shapes.pedestrian(rng)
    far_car = shapes.vehicle(rng)
    config = without_noise(TINY)
    visible = scene_from_shapes([(pedestrian, 16.0, 0.5, 0.3, "Pedestrian"), (far_car, 22.0, -1.0, 1.2, "Vehicle")])
    hidden = scene_from_shapes([(_occluder(), 8.0, 0.0, 0.0, "Vehicle"),
                                (pedestrian, 16.0, 0.5, 0.3, "Pedestrian"), (far_car, 22.0, -1.0, 1.2, "Vehicle")])
    dense = replace(config, azimuth_resolution_deg=0.25)
    for scene, expect_hidden in ((visible, False), (hidden, True)):
        sweep = scan_with_config(scene, dense, seed=1)
        from pc3d.data.synthetic.labels import scene_labels
        counts = scene_labels(scene, sweep.points).num_points.numpy()
        ped, car = counts[-2], counts[-1]
        if expect_hidden:
            assert counts[0] > 100  # the occluder itself is seen
            assert ped == 0 and car == 0
            # the shadow is real: no return at all comes from behind the occluder within its azimuth span
            azimuth = np.arctan2(sweep.points[:, 1], sweep.points[:, 0])
            behind = (np.abs(azimuth) < np.arctan2(3.5, 9.0)) & (sweep.points[:, 0] > 9.1)
            assert not behind.any()
        else:
            assert ped > 5 and car > 5


def test_self_shadowing_only_front_faces_seen():
    rng = np.random.default_rng(3)
    scene = scene_from_shapes([(shapes.vehicle(rng), 10.0, 0.0, 0.0, "Vehicle")])
    sweep = scan_with_config(scene, replace(without_noise(TINY), azimuth_resolution_deg=0.25), seed=0)
    car = sweep.noiseless[sweep.owner == 0]
    box = scene.objects[0].box
    assert len(car) > 50
    # the car points +x, away from the sensor at the origin: its rear face (x = rear) is hit, its front
    # face (x = front, the far side, shadowed by the car itself) never is
    rear = box[0] - (box[3] / 2 - 0.05)  # label boxes carry a 5 cm margin
    front = box[0] + (box[3] / 2 - 0.05)
    assert (np.abs(car[:, 0] - rear) < 1e-6).sum() > 10
    assert car[:, 0].max() < front - 1e-3


def test_presets_and_validation():
    waymo = LidarConfig.preset("waymo64")
    vlp = LidarConfig.preset("vlp32")
    assert waymo.num_beams == 64 and len(waymo.elevations_deg()) == 64
    assert vlp.num_beams == 32 and vlp.elevations_deg().max() == 15.0 and vlp.elevations_deg().min() == -25.0
    dirs, beams = waymo.ray_directions()
    assert dirs.shape == (64 * waymo.num_azimuths, 3) and beams.max() == 63
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    e = waymo.elevations_deg()
    assert e[0] == pytest.approx(2.4) and e[-1] == pytest.approx(-17.6)
    assert np.diff(e)[0] > np.diff(e)[-1]  # denser near the horizon
    with pytest.raises(ValueError, match="preset"):
        LidarConfig.preset("nope")
    with pytest.raises(ValueError, match="num_beams"):
        LidarConfig(num_beams=0)
    with pytest.raises(ValueError, match="dropout"):
        LidarConfig(dropout=1.5)
    with pytest.raises(ValueError, match="num_vehicles"):
        SceneConfig(num_vehicles=(5, 2))
    with pytest.raises(TypeError, match="seed"):
        simulate_frame("1", SMALL, TINY)
    with pytest.raises(TypeError, match="lidar_config"):
        simulate_frame(1, SMALL, "waymo64")
    with pytest.raises(TypeError, match="SceneConfig"):
        simulate_frame(1, "street", TINY)
    with pytest.raises(ValueError, match="directions"):
        cast_rays(np.zeros(3), np.full((2, 3), np.nan), generate_scene(0, SMALL).primitives)
    with pytest.raises(ValueError, match="origin"):
        cast_rays(np.array([np.inf, 0, 0]), np.eye(3), generate_scene(0, SMALL).primitives)


def test_vlp32_returns_above_horizon_hit_clutter():
    frame, scene, sweep = simulate(2, SceneConfig.preset("street"), replace(LidarConfig.preset("vlp32"), azimuth_resolution_deg=1.0))
    up = sweep.beam < 6  # beams above the horizon can only hit elevated clutter, never the ground
    assert up.any() and not (sweep.primitive[up] == GROUND).any()
    assert (sweep.primitive != MISS).all()


@pytest.mark.slow
def test_waymo64_frame_size_and_speed():
    simulate_frame(0)  # compile / load the cache
    start = time.perf_counter()
    frame = simulate_frame(1)
    elapsed = time.perf_counter() - start
    assert 80_000 < len(frame.points) < 170_000
    assert elapsed < 2.0
