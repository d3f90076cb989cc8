"""Synthetic registration data: indoor rooms scanned by a depth camera from several viewpoints.

A room is an axis-aligned box of walls / floor / ceiling (thin slabs) furnished with non-intersecting
solids: cabinets and shelves (boxes), stools and bins (cylinders), tables (top + four legs) and
poufs (ellipsoids). A pinhole depth camera (optical frame: x right, y down, z forward, like 3DMatch
fragments) ray-casts the room with first-hit occlusion and range-dependent depth noise.

`make_registration_pair` returns two partial scans, each in its own camera frame, with the
ground-truth `T (4, 4)` mapping source points into the reference frame (`p_ref = R p_src + t`,
docs/conventions.md) and the overlap ratio. Overlap = fraction of source points whose true surface
point is also seen by the reference camera (inside its image and range, not occluded) -- a visibility
overlap computed by ray casting, independent of sampling density.

`write_registration_dataset` writes several rooms in the 3DMatch layout:
    <out>/<scene>/cloud_bin_<k>.npy                    float32 (N, 3), camera frame of fragment k
    <out>/<scene>/poses.json                           camera-to-room 4x4 of every fragment
    <out>/benchmarks/<name>/<scene>/gt.log             "i j n" + 4x4 T mapping fragment j into i's frame
    <out>/benchmarks/<name>/<scene>/gt.info            "i j n" + 6x6 information matrix (3DMatch RMSE)
    <out>/benchmarks/<name>/<scene>/gt_overlap.log     "i,j,overlap" (overlap of j's points seen from i)
    <out>/metadata/<name>.json                         GeoTransformer-style pair list
with `<name>` "SynMatch" (overlap > 0.3) and "SynLoMatch" (0.1 - 0.3), like 3DMatch / 3DLoMatch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import shapes
from .primitives import Primitives
from .raycast import MISS, cast_rays
from .scene import Scene, FootprintPlacer
from .writer import save_json_atomic, save_npy_atomic, atomic_write_bytes

HIGH_OVERLAP = (0.3, 1.0)
LOW_OVERLAP = (0.1, 0.3)
BENCHMARKS = {"SynMatch": HIGH_OVERLAP, "SynLoMatch": LOW_OVERLAP}


@dataclass
class RoomConfig:
    size_x: tuple[float, float] = (4.0, 8.0)
    size_y: tuple[float, float] = (4.0, 8.0)
    height: tuple[float, float] = (2.5, 3.2)
    num_furniture: tuple[int, int] = (5, 10)
    wall_thickness: float = 0.1

    def __post_init__(self):
        for name in ("size_x", "size_y", "height"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"RoomConfig.{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if not 0 <= self.num_furniture[0] <= self.num_furniture[1]:
            raise ValueError(f"RoomConfig.num_furniture must be (low, high), got {self.num_furniture}")


@dataclass
class DepthCameraConfig:
    """Pinhole depth sensor. Noise std along the ray = `noise_std + noise_quadratic * range^2` (Kinect-like)."""

    width: int = 160
    height: int = 120
    horizontal_fov_deg: float = 60.0
    min_range: float = 0.4
    max_range: float = 4.5
    noise_std: float = 0.002
    noise_quadratic: float = 0.0015
    dropout: float = 0.02

    def __post_init__(self):
        if self.width < 2 or self.height < 2:
            raise ValueError(f"DepthCameraConfig: image must be at least 2x2, got {self.width}x{self.height}")
        if not 0 < self.horizontal_fov_deg < 170:
            raise ValueError(f"DepthCameraConfig.horizontal_fov_deg must be in (0, 170), got {self.horizontal_fov_deg}")
        if not 0 <= self.min_range < self.max_range:
            raise ValueError("DepthCameraConfig needs 0 <= min_range < max_range")

    @property
    def focal(self) -> float:
        return (self.width / 2) / np.tan(np.deg2rad(self.horizontal_fov_deg) / 2)

    def pixel_rays(self) -> np.ndarray:
        """(H * W, 3) unit ray directions in the camera frame (x right, y down, z forward), row-major."""
        u = np.arange(self.width) + 0.5 - self.width / 2
        v = np.arange(self.height) + 0.5 - self.height / 2
        uu, vv = np.meshgrid(u / self.focal, v / self.focal)
        rays = np.stack([uu, vv, np.ones_like(uu)], -1).reshape(-1, 3)
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)

    def in_view(self, points_cam: np.ndarray) -> np.ndarray:
        """(N,) bool: camera-frame points that project inside the image and lie within range."""
        z = points_cam[:, 2]
        rng = np.linalg.norm(points_cam, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            u = points_cam[:, 0] / z * self.focal + self.width / 2
            v = points_cam[:, 1] / z * self.focal + self.height / 2
        return ((z > 1e-6) & (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height)
                & (rng >= self.min_range) & (rng <= self.max_range))


@dataclass
class DepthScan:
    """points (N, 3) float32 in the camera frame; world (N, 3) float64 exact surface points; primitive (N,)."""

    points: np.ndarray
    world: np.ndarray
    primitive: np.ndarray
    pose: np.ndarray


@dataclass
class RegistrationPair:
    """src (N, 3) and ref (M, 3) float32 in their own camera frames; transform (4, 4) float64 maps src -> ref."""

    src_points: np.ndarray
    ref_points: np.ndarray
    transform: np.ndarray
    overlap: float
    scene: Scene
    src_pose: np.ndarray
    ref_pose: np.ndarray
    src_world: np.ndarray  # (N, 3) exact surface points of src in the room frame
    ref_world: np.ndarray


def _rng(seed: int, stream: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, stream]))


def _table(rng):
    half_l, half_w = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.55)
    top = rng.uniform(0.7, 0.78)
    thick = rng.uniform(0.015, 0.03)
    wood = rng.uniform(0.3, 0.6)
    parts = [shapes._box((0, 0, top - thick), (half_l, half_w, thick), wood)]
    leg_r = rng.uniform(0.02, 0.04)
    for sx in (1, -1):
        for sy in (1, -1):
            parts.append(shapes._cyl((sx * (half_l - 0.08), sy * (half_w - 0.08), (top - 2 * thick) / 2),
                                     leg_r, (top - 2 * thick) / 2, wood))
    return parts


def _furniture(rng) -> list[tuple]:
    kind = rng.choice(["cabinet", "shelf", "stool", "table", "pouf", "box_stack"], p=[0.25, 0.15, 0.15, 0.2, 0.1, 0.15])
    if kind == "cabinet":
        half = rng.uniform([0.2, 0.3, 0.2], [0.35, 0.8, 0.5])
        return [shapes._box((0, 0, half[2]), half, rng.uniform(0.2, 0.7))]
    if kind == "shelf":
        half = np.array([rng.uniform(0.15, 0.25), rng.uniform(0.4, 0.8), rng.uniform(0.8, 1.1)])
        return [shapes._box((0, 0, half[2]), half, rng.uniform(0.2, 0.7))]
    if kind == "stool":
        r, h = rng.uniform(0.15, 0.3), rng.uniform(0.2, 0.5)
        return [shapes._cyl((0, 0, h), r, h, rng.uniform(0.2, 0.7))]
    if kind == "table":
        return _table(rng)
    if kind == "pouf":
        axes = rng.uniform([0.25, 0.25, 0.2], [0.5, 0.5, 0.35])
        return [shapes._ell((0, 0, axes[2]), axes, rng.uniform(0.2, 0.7))]
    lower = rng.uniform([0.2, 0.2, 0.15], [0.4, 0.4, 0.3])
    upper = lower * rng.uniform(0.5, 0.9, 3)
    return [shapes._box((0, 0, lower[2]), lower, rng.uniform(0.2, 0.7)),
            shapes._box((rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 2 * lower[2] + upper[2]), upper,
                        rng.uniform(0.2, 0.7), shapes.rotation_z(rng.uniform(-0.5, 0.5)))]


@dataclass
class Room:
    scene: Scene
    size: np.ndarray  # (3,) interior extents (x, y, height); floor at z = 0, centred on x = y = 0
    placer: FootprintPlacer
    pieces: np.ndarray  # (P,) furniture piece of every primitive (-1: walls, floor, ceiling)


def generate_room(seed: int, config: RoomConfig | None = None) -> Room:
    """A furnished room; everything is fully determined by `seed` and `config`."""
    config = config or RoomConfig()
    rng = _rng(seed, 101)
    size = np.array([rng.uniform(*config.size_x), rng.uniform(*config.size_y), rng.uniform(*config.height)])
    t = config.wall_thickness
    hx, hy, hz = size / 2
    wall_refl = rng.uniform(0.4, 0.8)
    parts = [
        shapes._box((0, 0, -t / 2), (hx + t, hy + t, t / 2), rng.uniform(0.2, 0.5)),  # floor
        shapes._box((0, 0, size[2] + t / 2), (hx + t, hy + t, t / 2), wall_refl),  # ceiling
        shapes._box((hx + t / 2, 0, hz), (t / 2, hy + t, hz + t), wall_refl),
        shapes._box((-hx - t / 2, 0, hz), (t / 2, hy + t, hz + t), wall_refl),
        shapes._box((0, hy + t / 2, hz), (hx + t, t / 2, hz + t), wall_refl),
        shapes._box((0, -hy - t / 2, hz), (hx + t, t / 2, hz + t), wall_refl),
    ]
    world = shapes.place_shape(parts, 0.0, 0.0, 0.0, 0.0, -1)
    pieces = [-1] * len(world)
    placer = FootprintPlacer(0.15)
    for _ in range(int(rng.integers(config.num_furniture[0], config.num_furniture[1] + 1))):
        item = _furniture(rng)
        low, high = shapes.local_extents(item)
        half = (high - low)[:2] / 2
        for _ in range(50):
            heading = rng.choice([0.0, np.pi / 2, np.pi, -np.pi / 2]) + rng.normal(0, 0.15)
            # keep the rotated footprint inside the walls
            reach = np.abs(shapes.rotation_z(heading)[:2, :2]) @ half
            if (reach > size[:2] / 2 - 0.05).any():
                continue
            xy = rng.uniform(-(size[:2] / 2 - 0.05 - reach), size[:2] / 2 - 0.05 - reach)
            if placer.free(xy, half, heading):
                placer.add(xy, half, heading)
                origin = xy - shapes.rotation_z(heading)[:2, :2] @ ((low + high)[:2] / 2)
                world.extend(shapes.place_shape(item, origin[0], origin[1], 0.0, heading, -1))
                pieces.extend([len(placer.headings) - 1] * len(item))
                break
    return Room(Scene(Primitives.from_list(world), None, [], int(seed)), size, placer, np.array(pieces))


def look_at_pose(position: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """(4, 4) camera-to-world pose of a camera (x right, y down, z forward) at `position` facing `target`."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:
        right = np.cross(forward, [1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward], axis=1)
    c, s = np.cos(roll), np.sin(roll)
    rot = rot @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = position
    return pose


def _free_position(room: Room, rng: np.random.Generator, near: np.ndarray | None = None, step: float = 0.0):
    """A camera position inside the room, not above furniture; near `near` (within `step`) if given.
    None when 200 draws found none (e.g. `near` in a corner full of furniture): the caller draws again."""
    margin = 0.35
    for _ in range(200):
        if near is None:
            xy = rng.uniform(-(room.size[:2] / 2 - margin), room.size[:2] / 2 - margin)
            z = rng.uniform(1.0, min(1.9, room.size[2] - 0.3))
        else:
            direction = rng.normal(size=3)
            direction[2] *= 0.3
            direction /= np.linalg.norm(direction)
            candidate = near + direction * step
            xy, z = candidate[:2], float(np.clip(candidate[2], 0.8, room.size[2] - 0.3))
            if (np.abs(xy) > room.size[:2] / 2 - margin).any():
                continue
        if room.placer.free(xy, (0.05, 0.05), 0.0):
            return np.array([xy[0], xy[1], z])
    return None


def _random_target(room: Room, rng: np.random.Generator) -> np.ndarray:
    """A point to look at: on the walls / furniture region at table to head height."""
    return np.array([*rng.uniform(-room.size[:2] / 2, room.size[:2] / 2), rng.uniform(0.3, 1.4)])


def scan_depth(scene: Scene, pose: np.ndarray, camera: DepthCameraConfig, rng: np.random.Generator) -> DepthScan:
    """Ray-cast one depth image from camera-to-world `pose`; points returned in the camera frame."""
    rays_cam = camera.pixel_rays()
    rot, origin = pose[:3, :3], pose[:3, 3]
    dirs = rays_cam @ rot.T
    hits = cast_rays(origin, dirs, scene.primitives, scene.ground, max_range=camera.max_range)
    noise = rng.normal(0.0, 1.0, dirs.shape[0])
    keep_draw = rng.random(dirs.shape[0])
    sigma = camera.noise_std + camera.noise_quadratic * np.where(np.isfinite(hits.distance), hits.distance, 0.0) ** 2
    measured = hits.distance + noise * sigma
    keep = ((hits.primitive != MISS) & (keep_draw >= camera.dropout)
            & (measured >= camera.min_range) & (measured <= camera.max_range))
    idx = np.flatnonzero(keep)
    points_cam = rays_cam[idx] * measured[idx, None]
    world = origin + dirs[idx] * hits.distance[idx, None]
    return DepthScan(points_cam.astype(np.float32), world, hits.primitive[idx], pose)


def covisible_mask(scene: Scene, world_points: np.ndarray, pose: np.ndarray, camera: DepthCameraConfig,
                   tolerance: float = 0.01) -> np.ndarray:
    """(N,) bool: exact surface points `world_points (N, 3)` that the camera at `pose` also sees
    (inside its image and range, and the first hit along the ray to the point is the point itself)."""
    rot, origin = pose[:3, :3], pose[:3, 3]
    cam = (world_points - origin) @ rot
    visible = camera.in_view(cam)
    idx = np.flatnonzero(visible)
    if idx.size:
        offset = world_points[idx] - origin
        dist = np.linalg.norm(offset, axis=1)
        hits = cast_rays(origin, offset / dist[:, None], scene.primitives, scene.ground, max_range=camera.max_range + 1)
        visible[idx] = hits.distance >= dist - tolerance
    return visible


def covisible_fraction(scene: Scene, world_points: np.ndarray, pose: np.ndarray, camera: DepthCameraConfig,
                       tolerance: float = 0.01) -> float:
    """Fraction of `world_points` that the camera at `pose` also sees (0 for no points)."""
    if world_points.shape[0] == 0:
        return 0.0
    return float(covisible_mask(scene, world_points, pose, camera, tolerance).mean())


def relative_transform(src_pose: np.ndarray, ref_pose: np.ndarray) -> np.ndarray:
    """(4, 4) map from the source camera frame to the reference camera frame."""
    return np.linalg.inv(ref_pose) @ src_pose


def make_registration_pair(seed: int, overlap="high", room_config: RoomConfig | None = None,
                           camera: DepthCameraConfig | None = None, max_attempts: int = 40) -> RegistrationPair:
    """Two partial scans of one room with overlap in the requested band.

    overlap: "high" (0.3 - 1.0), "low" (0.1 - 0.3) or an explicit `(low, high)` band.
    """
    band = {"high": HIGH_OVERLAP, "low": LOW_OVERLAP}.get(overlap, overlap) if isinstance(overlap, str) else overlap
    if isinstance(band, str) or len(band) != 2 or not 0 <= band[0] < band[1] <= 1:
        raise ValueError(f"overlap must be 'high', 'low' or (low, high) within [0, 1], got {overlap!r}")
    camera = camera or DepthCameraConfig()
    rng = _rng(seed, 202)
    for attempt in range(max_attempts):
        room = generate_room(int(seed) * 7919 + attempt, room_config)
        ref_position = _free_position(room, rng)
        if ref_position is None:
            continue
        ref_pose = look_at_pose(ref_position, _random_target(room, rng), rng.normal(0, 0.05))
        ref = scan_depth(room.scene, ref_pose, camera, rng)
        for _ in range(12):
            # bigger moves for lower overlaps
            step = rng.uniform(0.2, 1.0) if band[0] >= 0.3 else rng.uniform(0.5, 2.0)
            position = _free_position(room, rng, ref_pose[:3, 3], step)
            if position is None:
                continue
            target = ref_pose[:3, 3] + ref_pose[:3, 2] * 2.0 + rng.normal(0, 0.6 if band[0] >= 0.3 else 1.5, 3)
            src_pose = look_at_pose(position, target, rng.normal(0, 0.05))
            src = scan_depth(room.scene, src_pose, camera, rng)
            if src.points.shape[0] < 100:
                continue
            ratio = covisible_fraction(room.scene, src.world, ref_pose, camera)
            if band[0] <= ratio <= band[1]:
                return RegistrationPair(src.points, ref.points, relative_transform(src_pose, ref_pose), ratio,
                                        room.scene, src_pose, ref_pose, src.world, ref.world)
    raise RuntimeError(f"no pair with overlap in {band} after {max_attempts} rooms (seed {seed})")


def information_matrix(points: np.ndarray) -> np.ndarray:
    """(6, 6) 3DMatch `gt.info` matrix of corresponding points `points (K, 3)` in the reference frame.

    Sum over points of `G^T G` with `G = [I | -skew(p)]` (translation block first), as in 3DMatch's
    gt.info; the registration-recall RMSE is `xi^T info xi / info[0, 0]`.
    """
    p = np.asarray(points, np.float64)
    info = np.zeros((6, 6))
    info[:3, :3] = np.eye(3) * p.shape[0]
    sx, sy, sz = p.sum(0)
    skew_sum = np.array([[0.0, -sz, sy], [sz, 0.0, -sx], [-sy, sx, 0.0]])
    info[:3, 3:] = -skew_sum
    info[3:, :3] = skew_sum
    outer = p.T @ p
    info[3:, 3:] = np.trace(outer) * np.eye(3) - outer  # sum of skew(p)^T skew(p)
    return info


def _format_gt_log_entry(i: int, j: int, n: int, transform: np.ndarray) -> str:
    rows = "".join(" " + "\t ".join(f"{v: .8e}" for v in row) + "\t\n" for row in transform)
    return f"{i}\t {j}\t {n}\t\n{rows}"


def write_registration_dataset(out_dir, pairs: int, seed: int, fragments_per_scene: int = 8,
                               room_config: RoomConfig | None = None, camera: DepthCameraConfig | None = None,
                               progress: bool = True) -> dict:
    """Write rooms (3DMatch layout) until `pairs` benchmark pairs (high + low overlap) exist.

    Fragment poses follow a random walk of the camera through each room (like 3DMatch's fused
    RGB-D fragments), so consecutive fragments overlap more than distant ones. Returns
    `{benchmark name: number of pairs}`.
    """
    if isinstance(pairs, bool) or not isinstance(pairs, (int, np.integer)) or pairs < 1:
        raise ValueError(f"pairs must be a positive int, got {pairs!r}")
    if fragments_per_scene < 2:
        raise ValueError(f"fragments_per_scene must be >= 2, got {fragments_per_scene}")
    camera = camera or DepthCameraConfig()
    out_dir = Path(out_dir)
    totals = {name: 0 for name in BENCHMARKS}
    metadata = {name: [] for name in BENCHMARKS}
    bar = tqdm(total=pairs, desc="registration pairs", disable=not progress)
    scene_index = 0
    while sum(totals.values()) < pairs:
        scene_seed = int(seed) * 1_000_003 + scene_index
        scene_name = f"synroom-{scene_index:04d}"
        room = generate_room(scene_seed, room_config)
        rng = _rng(scene_seed, 303)
        position = _free_position(room, rng)
        if position is None:  # a room too full of furniture to stand in: take the next scene
            scene_index += 1
            continue
        scans = []
        for k in range(fragments_per_scene):
            if k:
                moved = _free_position(room, rng, position, rng.uniform(0.2, 0.8))
                position = moved if moved is not None else position
            pose = look_at_pose(position, _random_target(room, rng), rng.normal(0, 0.05))
            scans.append(scan_depth(room.scene, pose, camera, rng))
        entries = {name: [] for name in BENCHMARKS}
        for i in range(fragments_per_scene):
            for j in range(i + 1, fragments_per_scene):
                if sum(totals.values()) + sum(len(e) for e in entries.values()) >= pairs:
                    break
                # 3DMatch: entry "i j" maps fragment j (source) into fragment i's frame (reference)
                ratio = covisible_fraction(room.scene, scans[j].world, scans[i].pose, camera)
                for name, (low, high) in BENCHMARKS.items():
                    if (low < ratio <= high) if low >= 0.3 else (low <= ratio <= high):
                        covisible = covisible_mask(room.scene, scans[j].world, scans[i].pose, camera)
                        in_ref = (scans[j].world[covisible] - scans[i].pose[:3, 3]) @ scans[i].pose[:3, :3]
                        entries[name].append((i, j, ratio, relative_transform(scans[j].pose, scans[i].pose),
                                              information_matrix(in_ref)))
        if any(entries.values()):
            for k, sweep in enumerate(scans):
                save_npy_atomic(out_dir / scene_name / f"cloud_bin_{k}.npy", sweep.points)
            save_json_atomic(out_dir / scene_name / "poses.json", {
                "room_size": room.size.tolist(), "camera": vars(camera),
                "poses": [s.pose.tolist() for s in scans]})
        for name, items in entries.items():
            if not items:
                continue
            folder = out_dir / "benchmarks" / name / scene_name
            log = "".join(_format_gt_log_entry(i, j, fragments_per_scene, t) for i, j, _, t, _ in items)
            info_log = "".join(_format_gt_log_entry(i, j, fragments_per_scene, info) for i, j, _, _, info in items)
            overlap_log = "".join(f"{i},{j},{ratio:.4f}\n" for i, j, ratio, _, _ in items)
            atomic_write_bytes(folder / "gt.log", lambda f, data=log.encode(): f.write(data))
            atomic_write_bytes(folder / "gt.info", lambda f, data=info_log.encode(): f.write(data))
            atomic_write_bytes(folder / "gt_overlap.log", lambda f, data=overlap_log.encode(): f.write(data))
            for i, j, ratio, t, _ in items:
                metadata[name].append({"scene_name": scene_name, "frag_id0": i, "frag_id1": j, "overlap": ratio,
                                       "rotation": t[:3, :3].tolist(), "translation": t[:3, 3].tolist(),
                                       "pcd0": f"{scene_name}/cloud_bin_{i}.npy",
                                       "pcd1": f"{scene_name}/cloud_bin_{j}.npy"})
            totals[name] += len(items)
            bar.update(len(items))
        scene_index += 1
        if scene_index > 100 * pairs:
            raise RuntimeError("rooms keep producing no usable pairs; check the camera / room configs")
    bar.close()
    for name, items in metadata.items():
        save_json_atomic(out_dir / "metadata" / f"{name}.json", items)
    return totals
