"""Synthetic Waymo segments: a ray-cast LiDAR scene rendered into real `dataset_pb2.Frame` protos.

No real range image is available to the tests, so this writer produces frames with the full
geometry the reader has to undo, and remembers the exact points it rendered:

- TOP lidar: 64 rows with *non-uniform* `beam_inclinations` (denser near the horizon), a yawed
  extrinsic, and a per-pixel vehicle pose (`range_image_pose_compressed`): the car drives and turns
  while the lidar spins, so every column fires from a different vehicle pose.
- SIDE_LEFT lidar: uniform inclinations given only by min/max, mounted looking left (yaw +90 deg).
- both returns: a pixel whose first return is an object gets a second return from what lies behind it.

The scene is either flat ground z = 0 + oriented boxes that are also the labels (default, ray-cast
here), or with `scene="synthetic"` the `pc3d.data.synthetic` scene that `simulate_frame(seed)` scans
(parts-built objects, clutter, rolling ground; cast with that package's exact caster, the labels are
its boxes). Every pixel's ray is cast from the sensor pose at that pixel's firing time. The writer builds rays with the *forward* mapping of the
official `build_range_image_from_point_cloud` (column from azimuth) and poses with scipy's
`Rotation.from_euler("ZYX")`, so a round trip through `frame.extract_points` checks the reader's
inverse geometry against an independent construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from pc3d.data.waymo.frame import NAME_TO_WAYMO_TYPE
from pc3d.data.waymo.range_image import compress_matrix
from pc3d.io.tfrecord import write_tfrecord

TOP, FRONT, SIDE_LEFT, SIDE_RIGHT, REAR = 1, 2, 3, 4, 5
SWEEP_SECONDS = 0.1


@dataclass
class LaserSetup:
    name: int
    height: int
    width: int
    extrinsic: np.ndarray                  # (4, 4) sensor -> vehicle
    inclinations: np.ndarray | None        # (H,) ascending, written to the calibration; None = uniform
    inclination_range: tuple[float, float]
    max_range: float
    rolling_pose: bool                     # per-pixel pose image (TOP only in the dataset)
    rolling_steps: int | None = None       # distinct vehicle poses per sweep (None: one per column)


@dataclass
class RenderedFrame:
    """What the writer rendered: `points[(laser, return)] = (N, 3)` float64 in the frame's vehicle
    frame (row-major pixel order), and per-point `intensity`, `elongation`, `nlz` (bool)."""

    frame: object
    points: dict = field(default_factory=dict)
    intensity: dict = field(default_factory=dict)
    elongation: dict = field(default_factory=dict)
    nlz: dict = field(default_factory=dict)
    boxes: np.ndarray = None               # (M, 7)
    labels: list = None                    # class names


def _transform(rotation: np.ndarray, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


def _pose_from_rpy(roll, pitch, yaw, translation) -> np.ndarray:
    return _transform(Rotation.from_euler("ZYX", [yaw, pitch, roll]).as_matrix(), translation)


def default_lasers(top_width: int = 512, side_width: int = 96, rolling_steps: int | None = None) -> list[LaserSetup]:
    # Non-uniform TOP beams: quadratic spacing, dense near the horizon like the real sensor.
    u = np.linspace(0.0, 1.0, 64)
    top_incl = np.deg2rad(2.4 - 20.0 * u ** 1.6)[::-1].copy()   # ascending
    top = LaserSetup(TOP, 64, top_width, _pose_from_rpy(0.0, 0.004, 0.0148, [1.43, 0.0, 2.18]), top_incl,
                     (float(top_incl[0]), float(top_incl[-1])), 75.0, True, rolling_steps)
    side = LaserSetup(SIDE_LEFT, 24, side_width, _pose_from_rpy(0.0, 0.0, np.pi / 2, [3.25, 1.02, 0.98]), None,
                      (-np.pi / 2, np.deg2rad(30.0)), 20.0, False)
    return [top, side]


def _ray_directions(laser: LaserSetup) -> np.ndarray:
    """(H, W, 3) unit ray directions in the sensor frame, row 0 = highest beam."""
    if laser.inclinations is not None:
        rows = laser.inclinations[::-1]
    else:
        lo, hi = laser.inclination_range
        rows = (lo + (np.arange(laser.height) + 0.5) * (hi - lo) / laser.height)[::-1]
    # Inverse of the official column formula col = W - 0.5 - (az + az_corr + pi) / (2 pi) * W.
    az_correction = np.arctan2(laser.extrinsic[1, 0], laser.extrinsic[0, 0])
    cols = np.arange(laser.width)
    sensor_az = (laser.width - 0.5 - cols) * 2 * np.pi / laser.width - np.pi - az_correction
    inc, az = np.meshgrid(rows, sensor_az, indexing="ij")
    return np.stack([np.cos(inc) * np.cos(az), np.cos(inc) * np.sin(az), np.sin(inc)], axis=-1)


def _cast(origins: np.ndarray, dirs: np.ndarray, boxes: np.ndarray, max_range: float, skip: np.ndarray | None = None):
    """Nearest hit of rays (R, 3) with the ground z=0 and oriented boxes (M, 7), ignoring box
    `skip[r]` for ray r when given. Returns (distance (R,) inf on a miss, object (R,) -1 ground / -2 miss / box index)."""
    r = origins.shape[0]
    best = np.full(r, np.inf)
    hit = np.full(r, -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[:, 2] < -1e-9, -origins[:, 2] / dirs[:, 2], np.inf)
    better = (t_ground > 0) & (t_ground < best)
    best[better], hit[better] = t_ground[better], -1
    for k, box in enumerate(boxes):
        c, s = np.cos(box[6]), np.sin(box[6])
        rot_t = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])   # world -> box
        o = (origins - box[:3]) @ rot_t.T
        d = dirs @ rot_t.T
        half = box[3:6] / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - o) / d
            t2 = (half - o) / d
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        ok = (t_far >= t_near) & (t_near > 0) & (t_near < best)
        if skip is not None:
            ok &= skip != k
        best[ok], hit[ok] = t_near[ok], k
    miss = best > max_range
    best[miss], hit[miss] = np.inf, -2
    return best, hit


class _BoxSceneCaster:
    """Flat ground z = 0 + oriented boxes (the labels themselves)."""

    def __init__(self, boxes: np.ndarray, labels: list, rng: np.random.Generator):
        self.boxes, self.labels = boxes, labels
        self.reflectivity = rng.uniform(0.05, 1.5, len(boxes))

    def cast(self, origins: np.ndarray, dirs: np.ndarray, max_range: float):
        """-> (distance (R,) inf on a miss, object (R,) box index or -1, reflectivity (R,))."""
        dist, obj = _cast(origins, dirs, self.boxes, max_range)
        refl = np.where(obj >= 0, self.reflectivity[np.clip(obj, 0, None)], 0.2)
        return dist, np.where(obj >= 0, obj, -1), refl

    def second(self, origins, dirs, max_range, first_object, first_distance):
        dist, _ = _cast(origins, dirs, self.boxes, max_range, skip=first_object)
        return dist


class _SyntheticSceneCaster:
    """A `pc3d.data.synthetic` scene (vehicles / pedestrians / cyclists built from parts, trees,
    poles, buildings, rolling ground) cast with its own exact ray caster. Rays of one call share an
    origin, so a rolling-shutter laser is cast column by column."""

    def __init__(self, scene, rng: np.random.Generator):
        from pc3d.data.synthetic.raycast import cast_rays

        self.scene, self._cast_rays = scene, cast_rays
        self.boxes = scene.boxes
        self.labels = list(scene.class_names)
        self.rng = rng

    def cast(self, origins: np.ndarray, dirs: np.ndarray, max_range: float):
        n = origins.shape[0]
        dist, obj, refl = np.full(n, np.inf), np.full(n, -1), np.zeros(n)
        unique, inverse = np.unique(origins, axis=0, return_inverse=True)
        owners = self.scene.primitives.owners
        for k, origin in enumerate(unique):
            sel = np.nonzero(inverse.reshape(-1) == k)[0]
            hits = self._cast_rays(origin, dirs[sel], self.scene.primitives, self.scene.ground, max_range)
            ok = np.isfinite(hits.distance) & (hits.primitive != -1)
            dist[sel[ok]] = hits.distance[ok]
            prim = hits.primitive[ok]
            obj[sel[ok]] = np.where(prim >= 0, owners[np.clip(prim, 0, None)], -1)
            refl[sel[ok]] = hits.reflectivity[ok]
        return dist, obj, refl

    def second(self, origins, dirs, max_range, first_object, first_distance):
        # A partly transparent return further along the same ray (geometry is what is tested here).
        return first_distance + self.rng.uniform(0.5, 3.0, first_distance.shape)


def random_scene(rng: np.random.Generator):
    """Boxes (M, 7) in the vehicle frame + class names: cars, pedestrians, cyclists around the car."""
    boxes, labels = [], []
    specs = [("Vehicle", (4.6, 1.9, 1.6), 4), ("Pedestrian", (0.8, 0.8, 1.8), 3), ("Cyclist", (1.8, 0.7, 1.7), 2)]
    for name, size, count in specs:
        for _ in range(count):
            for _attempt in range(50):
                dist = rng.uniform(6.0, 35.0)
                bearing = rng.uniform(-np.pi, np.pi)
                x, y = dist * np.cos(bearing), dist * np.sin(bearing)
                if all(np.hypot(x - b[0], y - b[1]) > 5.0 for b in boxes):
                    break
            dims = np.asarray(size) * rng.uniform(0.9, 1.1, 3)
            heading = rng.uniform(-np.pi, np.pi)
            boxes.append([x, y, dims[2] / 2, dims[0], dims[1], dims[2], heading])
            labels.append(name)
    return np.asarray(boxes, dtype=np.float64), labels


def render_frame(seed: int = 0, context_name: str = "synthetic_segment_0", timestamp_micros: int = 1_500_000_000_000_000,
                 frame_pose: np.ndarray | None = None, speed: float = 12.0, yaw_rate: float = 0.3,
                 lasers: list[LaserSetup] | None = None, scene=None) -> RenderedFrame:
    """Render one frame. The scene is static in the world; the car moves at `speed` m/s and turns at
    `yaw_rate` rad/s during the sweep (the frame pose is the pose at the frame timestamp).

    scene: `None` / `"boxes"` (flat ground + random boxes), `(boxes (M, 7), class names)`, or
    `"synthetic"`: the scene of `pc3d.data.synthetic` (what `simulate_frame(seed)` scans), cast with
    that package's ray caster.
    """
    from waymo_open_dataset import dataset_pb2, label_pb2

    rng = np.random.default_rng(seed)
    lasers = lasers or default_lasers()
    if isinstance(scene, str) and scene == "synthetic":
        from pc3d.data.synthetic.scene import generate_scene
        caster = _SyntheticSceneCaster(generate_scene(seed), rng)
    elif scene is None or (isinstance(scene, str) and scene == "boxes"):
        caster = _BoxSceneCaster(*random_scene(rng), rng)
    elif isinstance(scene, tuple):
        caster = _BoxSceneCaster(np.asarray(scene[0], np.float64).reshape(-1, 7), list(scene[1]), rng)
    else:
        raise ValueError(f"scene must be None, 'boxes', 'synthetic' or (boxes, labels), got {scene!r}")
    boxes, labels = caster.boxes, caster.labels
    if frame_pose is None:
        frame_pose = _pose_from_rpy(0.01, -0.02, rng.uniform(-np.pi, np.pi), [rng.uniform(-1e3, 1e3), rng.uniform(-1e3, 1e3), 50.0])

    frame = dataset_pb2.Frame()
    frame.context.name = context_name
    frame.timestamp_micros = timestamp_micros
    frame.pose.transform.extend(frame_pose.reshape(-1).tolist())
    out = RenderedFrame(frame, boxes=boxes, labels=labels)

    for laser in lasers:
        calib = frame.context.laser_calibrations.add()
        calib.name = laser.name
        calib.extrinsic.transform.extend(laser.extrinsic.reshape(-1).tolist())
        if laser.inclinations is not None:
            calib.beam_inclinations.extend(laser.inclinations.tolist())
        calib.beam_inclination_min, calib.beam_inclination_max = laser.inclination_range

        h, w = laser.height, laser.width
        dirs_sensor = _ray_directions(laser)                                    # (H, W, 3)
        # Vehicle pose (in the frame's vehicle frame) when each column fires.
        if laser.rolling_pose:
            steps = laser.rolling_steps or w
            col_time = ((np.floor(np.arange(w) * steps / w) + 0.5) / steps - 0.5) * SWEEP_SECONDS
        else:
            col_time = np.zeros(w)
        pose_image = np.zeros((h, w, 6))
        origins = np.zeros((h, w, 3))
        dirs = np.zeros((h, w, 3))
        for j, t in enumerate(col_time):
            yaw = yaw_rate * t
            # Arc of a car turning at yaw_rate with speed `speed`, starting at the frame pose.
            if abs(yaw_rate) > 1e-9:
                pos = [speed / yaw_rate * np.sin(yaw), speed / yaw_rate * (1 - np.cos(yaw)), 0.0]
            else:
                pos = [speed * t, 0.0, 0.0]
            vehicle_at_t = _pose_from_rpy(0.0, 0.0, yaw, pos)                   # frame-vehicle <- vehicle(t)
            to_frame = vehicle_at_t @ laser.extrinsic
            origins[:, j] = to_frame[:3, 3]
            dirs[:, j] = dirs_sensor[:, j] @ to_frame[:3, :3].T
            if laser.rolling_pose:
                world_pose = frame_pose @ vehicle_at_t                          # world <- vehicle(t)
                yaw_w, pitch_w, roll_w = Rotation.from_matrix(world_pose[:3, :3]).as_euler("ZYX")
                pose_image[:, j] = [roll_w, pitch_w, yaw_w, *world_pose[:3, 3]]
        flat_o, flat_d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        dist1, obj1, refl1 = caster.cast(flat_o, flat_d, laser.max_range)
        # Second return: through a partially hit object to whatever lies behind it (half the object pixels).
        has_second = (obj1 >= 0) & (rng.random(obj1.shape[0]) < 0.5)
        dist2 = np.where(has_second, caster.second(flat_o, flat_d, laser.max_range, obj1, dist1), np.inf)
        dist2 = np.where(np.isfinite(dist2) & (dist2 > dist1) & (dist2 < laser.max_range), dist2, np.inf)

        laser_proto = frame.lasers.add()
        laser_proto.name = laser.name
        for return_index, (dist, refl) in enumerate(((dist1, refl1), (dist2, np.full(dist2.shape, 0.3)))):
            valid = np.isfinite(dist)
            rng_f32 = np.where(valid, dist, 0.0).astype(np.float32)
            intensity = np.where(valid, refl * 50.0 / (1.0 + rng_f32), 0.0).astype(np.float32)
            elongation = np.where(valid, rng.uniform(0.0, 1.5, dist.shape), 0.0).astype(np.float32)
            points = flat_o + flat_d * rng_f32.astype(np.float64)[:, None]
            # A no-label zone: a strip ahead-left of the car in the frame's vehicle frame.
            in_nlz = valid & (points[:, 0] > 5.0) & (points[:, 0] < 15.0) & (points[:, 1] > 2.0) & (points[:, 1] < 8.0)
            nlz = np.where(in_nlz, 1.0, -1.0).astype(np.float32)
            image = np.stack([rng_f32, intensity, elongation, np.where(valid, nlz, 0.0)], axis=-1).reshape(h, w, 4)
            ri = laser_proto.ri_return1 if return_index == 0 else laser_proto.ri_return2
            ri.range_image_compressed = compress_matrix(image)
            if return_index == 0 and laser.rolling_pose:
                ri.range_image_pose_compressed = compress_matrix(pose_image.astype(np.float32))
            out.points[(laser.name, return_index)] = points[valid]
            out.intensity[(laser.name, return_index)] = intensity[valid]
            out.elongation[(laser.name, return_index)] = elongation[valid]
            out.nlz[(laser.name, return_index)] = in_nlz[valid]

    all_points = np.concatenate([p for p in out.points.values()]) if out.points else np.zeros((0, 3))
    for k, (box, name) in enumerate(zip(boxes, labels)):
        label = frame.laser_labels.add()
        label.box.center_x, label.box.center_y, label.box.center_z = box[:3]
        label.box.length, label.box.width, label.box.height, label.box.heading = box[3:7]
        label.type = NAME_TO_WAYMO_TYPE[name]
        label.id = f"{context_name}_obj{k}"
        c, s = np.cos(box[6]), np.sin(box[6])
        local = (all_points - box[:3]) @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]]).T
        label.num_lidar_points_in_box = int(np.all(np.abs(local) <= box[3:6] / 2 + 1e-6, axis=1).sum())
        label.detection_difficulty_level = label_pb2.Label.LEVEL_1
    return out


def write_synthetic_segment(path, num_frames: int = 2, seed: int = 0, context_name: str | None = None,
                            lasers: list[LaserSetup] | None = None) -> list[RenderedFrame]:
    """Write a `.tfrecord` segment of `num_frames` rendered frames (0.1 s apart, same scene)."""
    rng = np.random.default_rng(seed)
    context_name = context_name or f"synthetic_{seed}_0000_000_0000_000"
    scene = random_scene(rng)
    start_pose = _pose_from_rpy(0.0, 0.0, rng.uniform(-np.pi, np.pi), [rng.uniform(-1e3, 1e3), rng.uniform(-1e3, 1e3), 30.0])
    rendered = []
    for i in range(num_frames):
        # The car advances 1.2 m per frame; the scene is re-expressed in the new vehicle frame.
        step = _pose_from_rpy(0.0, 0.0, 0.0, [1.2 * i, 0.0, 0.0])
        frame_pose = start_pose @ step
        boxes = scene[0].copy()
        boxes[:, 0] -= 1.2 * i
        rendered.append(render_frame(seed + 1000 * (i + 1), context_name, 1_500_000_000_000_000 + 100_000 * i,
                                     frame_pose, lasers=lasers, scene=(boxes, scene[1])))
    write_tfrecord(path, (r.frame.SerializeToString() for r in rendered))
    return rendered
