"""Procedural outdoor street scene: sloped rough ground, road users and clutter, none intersecting.

Layout: a straight road through the ego position with random direction and width, sidewalks on both
sides and buildings behind them. Vehicles drive in lanes (either direction) or park at the kerb or
stand anywhere (parking lots); pedestrians walk on sidewalks or cross; cyclists ride near the kerb.
Clutter: buildings, walls/fences, poles (some with signs or lamp arms), trees and bushes.

Objects and clutter are placed by rejection sampling of their oriented footprints (plus a margin), so
no two solids intersect; an ego clearance keeps the sensor's surroundings free.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import shapes
from .ground import GroundModel
from .primitives import Primitives

CLASS_NAMES = ("Vehicle", "Pedestrian", "Cyclist")


@dataclass
class SceneConfig:
    """Counts are inclusive `(low, high)` ranges sampled per scene; lengths in metres."""

    extent: float = 70.0  # objects and clutter within this radius of the ego
    num_vehicles: tuple[int, int] = (12, 30)
    num_pedestrians: tuple[int, int] = (4, 16)
    num_cyclists: tuple[int, int] = (1, 6)
    num_poles: tuple[int, int] = (8, 20)
    num_trees: tuple[int, int] = (6, 16)
    num_bushes: tuple[int, int] = (4, 12)
    num_walls: tuple[int, int] = (1, 5)
    buildings: bool = True
    road_half_width: tuple[float, float] = (5.5, 9.0)
    sidewalk_width: tuple[float, float] = (2.5, 4.5)
    max_slope_deg: float = 2.0
    roughness: float = 0.06  # total amplitude of the ground's rolling roughness
    ego_clearance: tuple[float, float] = (3.0, 1.5)  # half length / half width kept free around the ego
    placement_margin: float = 0.25  # minimal gap between footprints
    max_attempts: int = 60  # rejection-sampling attempts per object
    # label boxes are the primitives' tight extents grown by this much on the sides and top (not the
    # bottom, which would swallow ground points): ~2.5 sigma of the range noise, so noisy returns of a
    # face stay inside its box
    label_margin: float = 0.05

    def __post_init__(self):
        for name in ("num_vehicles", "num_pedestrians", "num_cyclists", "num_poles", "num_trees",
                     "num_bushes", "num_walls"):
            low, high = getattr(self, name)
            if low < 0 or high < low:
                raise ValueError(f"SceneConfig.{name} must be (low, high) with 0 <= low <= high, got {(low, high)}")
        if not self.extent > 0:
            raise ValueError(f"SceneConfig.extent must be positive, got {self.extent}")

    @classmethod
    def preset(cls, name: str) -> "SceneConfig":
        """`"street"` (default), `"empty"` (ground only), `"small"` (few objects within 30 m, for tests)."""
        if name == "street":
            return cls()
        if name == "empty":
            zero = (0, 0)
            return cls(num_vehicles=zero, num_pedestrians=zero, num_cyclists=zero, num_poles=zero,
                       num_trees=zero, num_bushes=zero, num_walls=zero, buildings=False)
        if name == "small":
            return cls(extent=30.0, num_vehicles=(4, 8), num_pedestrians=(2, 5), num_cyclists=(1, 3),
                       num_poles=(2, 5), num_trees=(1, 4), num_bushes=(1, 3), num_walls=(0, 2))
        raise ValueError(f"unknown SceneConfig preset {name!r}; choose street, empty or small")


@dataclass
class SceneObject:
    """A labelled object: its class, tight box `(7,)` and the slice of its primitives in the scene."""

    class_name: str
    box: np.ndarray
    primitive_start: int
    primitive_stop: int


@dataclass
class Scene:
    """Primitives (objects first, then clutter), the ground, and the labelled objects.

    `primitives.owners[p]` is the index into `objects` of the object primitive `p` belongs to, or -1.
    """

    primitives: Primitives
    ground: GroundModel | None
    objects: list[SceneObject] = field(default_factory=list)
    seed: int | None = None

    @property
    def boxes(self) -> np.ndarray:
        """(M, 7) float64 label boxes."""
        return np.array([o.box for o in self.objects], np.float64).reshape(-1, 7)

    @property
    def class_names(self) -> list[str]:
        return [o.class_name for o in self.objects]

    def distance_to_surface(self, points: np.ndarray) -> np.ndarray:
        """(N,) unsigned distance from `points (N, 3+)` to the nearest surface of the scene."""
        points = np.asarray(points, np.float64)[:, :3]
        best = np.full(points.shape[0], np.inf)
        if self.ground is not None:
            best = self.ground.surface_distance(points)
        for p in range(len(self.primitives)):
            np.minimum(best, self.primitives.surface_distance(points, p), out=best)
        return best

    def distance_to_primitive(self, points: np.ndarray, primitive_ids: np.ndarray) -> np.ndarray:
        """(N,) distance of each point to the surface it claims to lie on (-2 = ground)."""
        points = np.asarray(points, np.float64)[:, :3]
        primitive_ids = np.asarray(primitive_ids)
        out = np.full(points.shape[0], np.inf)
        for p in np.unique(primitive_ids):
            sel = primitive_ids == p
            if p == -2:
                if self.ground is not None:
                    out[sel] = self.ground.surface_distance(points[sel])
            elif p >= 0:
                out[sel] = self.primitives.surface_distance(points[sel], int(p))
        return out


def _wrap_angle(angle):
    """Wrap to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def _rects_overlap(center, half, heading, centers, halves, headings) -> np.ndarray:
    """Separating-axis test of one oriented rectangle against K others; (K,) bool overlap."""
    if centers.shape[0] == 0:
        return np.zeros(0, bool)
    axes_a = np.array([[np.cos(heading), np.sin(heading)], [-np.sin(heading), np.cos(heading)]])
    axes_b = np.stack([np.stack([np.cos(headings), np.sin(headings)], 1),
                       np.stack([-np.sin(headings), np.cos(headings)], 1)], 1)  # (K, 2, 2)
    delta = centers - center  # (K, 2)
    overlap = np.ones(centers.shape[0], bool)
    for k in range(2):
        for axes in (np.broadcast_to(axes_a[k], (centers.shape[0], 2)), axes_b[:, k]):
            dist = np.abs((delta * axes).sum(1))
            ra = np.abs(axes @ axes_a.T) @ half
            rb = (np.abs((axes[:, None, :] * axes_b).sum(2)) * halves).sum(1)
            overlap &= dist <= ra + rb
    return overlap


class FootprintPlacer:
    """Keeps the footprints placed so far and rejects candidates that overlap one of them."""

    def __init__(self, margin: float, check: bool = True):
        self.margin = margin
        self.check = check
        self.centers = np.zeros((0, 2))
        self.halves = np.zeros((0, 2))
        self.headings = np.zeros(0)

    def add(self, center, half, heading):
        self.centers = np.vstack([self.centers, np.asarray(center, float)[None]])
        self.halves = np.vstack([self.halves, np.asarray(half, float)[None]])
        self.headings = np.append(self.headings, heading)

    def free(self, center, half, heading) -> bool:
        if not self.check:
            return True
        grown = np.asarray(half, float) + self.margin
        return not _rects_overlap(np.asarray(center, float), grown, heading, self.centers, self.halves,
                                  self.headings).any()


class _SceneBuilder:
    def __init__(self, rng: np.random.Generator, config: SceneConfig, ground: GroundModel | None):
        self.rng = rng
        self.config = config
        self.ground = ground
        self.placer = FootprintPlacer(config.placement_margin)
        self.object_parts: list[tuple] = []
        self.clutter_parts: list[tuple] = []
        self.objects: list[tuple[str, np.ndarray, int, int]] = []
        self.placer.add((0.0, 0.0), config.ego_clearance, 0.0)
        self.road_heading = rng.uniform(-np.pi, np.pi)
        self.road_half = rng.uniform(*config.road_half_width)
        self.sidewalk = rng.uniform(*config.sidewalk_width)

    def road_to_world(self, u, v):
        c, s = np.cos(self.road_heading), np.sin(self.road_heading)
        return np.array([c * u - s * v, s * u + c * v])

    def _ground_z(self, corners_xy: np.ndarray, use_max: bool) -> float:
        if self.ground is None:
            return 0.0
        z = self.ground.height(corners_xy[:, 0], corners_xy[:, 1])
        return float(z.max() if use_max else z.min())

    def try_place(self, parts, xy, heading, class_name: str | None) -> bool:
        """Place `parts` with footprint centre near `xy`; False if it overlaps or leaves the extent."""
        low, high = shapes.local_extents(parts)
        local_center = (low + high) / 2
        half = (high - low) / 2
        rot2 = np.array([[np.cos(heading), -np.sin(heading)], [np.sin(heading), np.cos(heading)]])
        # the shape origin is placed so the footprint centre lands on xy
        origin_xy = np.asarray(xy, float) - rot2 @ local_center[:2]
        if np.hypot(*xy) > self.config.extent:
            return False
        if not self.placer.free(xy, half[:2], heading):
            return False
        signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1], [0, 0]], float)
        corners = xy + (signs * half[:2]) @ rot2.T
        # objects stand on the highest ground point under them (never sunk); clutter is anchored low
        base = self._ground_z(corners, use_max=class_name is not None)
        owner = len(self.objects) if class_name is not None else -1
        placed = shapes.place_shape(parts, origin_xy[0], origin_xy[1], base, heading, owner)
        self.placer.add(xy, half[:2], heading)
        if class_name is None:
            self.clutter_parts.extend(placed)
            return True
        start = len(self.object_parts)
        self.object_parts.extend(placed)
        margin = self.config.label_margin
        box = np.array([xy[0], xy[1], base + local_center[2] + margin / 2, 2 * half[0] + 2 * margin,
                        2 * half[1] + 2 * margin, 2 * half[2] + margin, float(_wrap_angle(heading))])
        self.objects.append((class_name, box, start, len(self.object_parts)))
        return True

    def place_many(self, count, make_parts, sample_pose, class_name):
        for _ in range(count):
            parts = make_parts(self.rng)
            for _ in range(self.config.max_attempts):
                xy, heading = sample_pose()
                if self.try_place(parts, xy, heading, class_name):
                    break

    # pose samplers (road frame u along the road, v across)
    def vehicle_pose(self):
        rng, ext = self.rng, self.config.extent
        mode = rng.random()
        u = rng.uniform(-ext, ext)
        if mode < 0.6:  # driving in a lane
            lanes = max(1, int(self.road_half // 3.5))
            lane = rng.integers(0, lanes)
            side = rng.choice([-1.0, 1.0])
            v = side * (lane + 0.5) * (self.road_half / lanes)
            heading = self.road_heading + (0.0 if side < 0 else np.pi) + rng.normal(0, 0.04)
        elif mode < 0.85:  # parked at the kerb
            side = rng.choice([-1.0, 1.0])
            v = side * (self.road_half - 1.1)
            heading = self.road_heading + rng.choice([0.0, np.pi]) + rng.normal(0, 0.03)
        else:  # anywhere (parking lot, driveway)
            v = rng.uniform(-ext, ext)
            heading = rng.uniform(-np.pi, np.pi)
        return self.road_to_world(u, v), heading

    def pedestrian_pose(self):
        rng, ext = self.rng, self.config.extent
        u = rng.uniform(-ext * 0.8, ext * 0.8)
        if rng.random() < 0.8:  # sidewalk
            v = rng.choice([-1.0, 1.0]) * (self.road_half + rng.uniform(0.4, self.sidewalk - 0.4))
            heading = self.road_heading + rng.choice([0.0, np.pi]) + rng.normal(0, 0.3)
        else:  # crossing
            v = rng.uniform(-self.road_half, self.road_half)
            heading = self.road_heading + rng.choice([-np.pi / 2, np.pi / 2]) + rng.normal(0, 0.2)
        return self.road_to_world(u, v), heading

    def cyclist_pose(self):
        rng, ext = self.rng, self.config.extent
        u = rng.uniform(-ext * 0.8, ext * 0.8)
        side = rng.choice([-1.0, 1.0])
        v = side * (self.road_half - rng.uniform(0.6, 2.5))
        heading = self.road_heading + (0.0 if side < 0 else np.pi) + rng.normal(0, 0.08)
        return self.road_to_world(u, v), heading

    def kerb_pose(self, offset_low, offset_high):
        rng, ext = self.rng, self.config.extent
        u = rng.uniform(-ext, ext)
        v = rng.choice([-1.0, 1.0]) * (self.road_half + rng.uniform(offset_low, offset_high))
        return self.road_to_world(u, v), self.road_heading + rng.choice([0.0, np.pi / 2])

    def anywhere_pose(self):
        ext = self.config.extent
        return self.rng.uniform(-ext, ext, 2), self.rng.uniform(-np.pi, np.pi)

    def add_buildings(self):
        rng, ext = self.rng, self.config.extent
        for side in (-1.0, 1.0):
            u = -ext
            while u < ext:
                length = rng.uniform(8.0, 30.0)
                if rng.random() < 0.75:
                    depth = rng.uniform(8.0, 20.0)
                    setback = self.road_half + self.sidewalk + rng.uniform(0.3, 4.0)
                    xy = self.road_to_world(u + length / 2, side * (setback + depth / 2))
                    # buildings are occluders only: they may extend beyond `extent`
                    parts = shapes.building(rng, length, depth)
                    low, high = shapes.local_extents(parts)
                    heading = self.road_heading
                    if self.placer.free(xy, (high - low)[:2] / 2, heading):
                        corners = np.asarray(xy)[None] + np.array([[0.0, 0.0]])
                        base = self._ground_z(corners, use_max=False) - 0.5
                        self.clutter_parts.extend(shapes.place_shape(parts, xy[0], xy[1], base, heading, -1))
                        self.placer.add(xy, (high - low)[:2] / 2, heading)
                u += length + rng.uniform(2.0, 12.0)


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """A random street scene, fully determined by `seed` and `config`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    config = config or SceneConfig()
    if not isinstance(config, SceneConfig):
        raise TypeError(f"scene config must be a SceneConfig, got {type(config).__name__}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, 17]))
    ground = GroundModel.random(rng, config.max_slope_deg, config.roughness)
    builder = _SceneBuilder(rng, config, ground)

    def count(key):
        low, high = getattr(config, key)
        return int(rng.integers(low, high + 1))

    # buildings line the road first (road users must not stand inside them), then road users, then clutter
    if config.buildings:
        builder.add_buildings()
    builder.place_many(count("num_vehicles"), shapes.vehicle, builder.vehicle_pose, "Vehicle")
    builder.place_many(count("num_pedestrians"), shapes.pedestrian, builder.pedestrian_pose, "Pedestrian")
    builder.place_many(count("num_cyclists"), shapes.cyclist, builder.cyclist_pose, "Cyclist")
    builder.place_many(count("num_poles"), shapes.pole, lambda: builder.kerb_pose(0.2, 0.6), None)
    builder.place_many(count("num_trees"), shapes.tree, lambda: builder.kerb_pose(0.8, builder.sidewalk), None)
    builder.place_many(count("num_bushes"), shapes.bush, builder.anywhere_pose, None)
    builder.place_many(count("num_walls"), shapes.wall, builder.anywhere_pose, None)
    return build_scene(builder.object_parts, builder.clutter_parts, builder.objects, ground, seed)


def build_scene(object_parts: list[tuple], clutter_parts: list[tuple], objects: list[tuple],
                ground: GroundModel | None, seed: int | None = None) -> Scene:
    """Assemble a `Scene` from world primitives `(kind, center, rotation, size, refl, owner)`."""
    prims = Primitives.concat([Primitives.from_list(object_parts), Primitives.from_list(clutter_parts)])
    scene_objects = [SceneObject(name, box, start, stop) for name, box, start, stop in objects]
    return Scene(prims, ground, scene_objects, seed)


def scene_from_shapes(placements: list[tuple], ground: GroundModel | None = None) -> Scene:
    """A hand-made scene (for tests / demos): `placements` = [(parts, x, y, heading, class_name or None)].

    The footprint centre lands on (x, y); objects stand on the ground. No overlap check is made.
    """
    ground = ground if ground is not None else GroundModel.flat()
    builder = _SceneBuilder(np.random.default_rng(0), SceneConfig(extent=1e9), ground)
    builder.placer = FootprintPlacer(0.0, check=False)
    for parts, x, y, heading, class_name in placements:
        if not builder.try_place(parts, (x, y), heading, class_name):
            raise ValueError(f"could not place shape at ({x}, {y})")
    return build_scene(builder.object_parts, builder.clutter_parts, builder.objects, ground)
