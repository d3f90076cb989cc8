"""Parametric shapes made of several primitives: vehicles, pedestrians, cyclists and outdoor clutter.

Every builder returns a list of local primitives `(kind, center (3,), rotation (3, 3), size (3,),
reflectivity)` in the shape's own frame: x forward (heading direction), y left, z up, origin on the
ground at the centre of the footprint. `place_shape` moves them into the scene.

Size distributions follow typical road users (Waymo / KITTI label statistics): cars ~4.5 x 1.8 x 1.5 m,
pedestrians 1.5-1.95 m tall, cyclists ~1.8 x 0.6 x 1.75 m.
"""
from __future__ import annotations

import numpy as np

from .primitives import BOX, CYLINDER, ELLIPSOID, Primitives, rotation_x, rotation_y, rotation_z

_I = np.eye(3)
_WHEEL_ROT = rotation_x(np.pi / 2)  # cylinder axis along the shape's y (an axle)


def _box(center, half, refl, rot=_I):
    return (BOX, np.asarray(center, float), rot, np.asarray(half, float), float(refl))


def _cyl(center, radius, half_len, refl, rot=_I):
    return (CYLINDER, np.asarray(center, float), rot, np.array([radius, radius, half_len]), float(refl))


def _ell(center, axes, refl, rot=_I):
    return (ELLIPSOID, np.asarray(center, float), rot, np.asarray(axes, float), float(refl))


def _clipped_normal(rng, mean, std, low, high):
    return float(np.clip(rng.normal(mean, std), low, high))


# (probability, length mean/std, width mean/std, height mean/std, wheel radius)
_VEHICLE_TYPES = {
    "car": (0.55, (4.5, 0.25), (1.82, 0.07), (1.48, 0.06), 0.32),
    "suv": (0.25, (4.8, 0.25), (1.95, 0.07), (1.75, 0.08), 0.36),
    "van": (0.10, (5.4, 0.30), (2.00, 0.07), (2.20, 0.15), 0.36),
    "truck": (0.10, (9.5, 1.50), (2.50, 0.05), (3.20, 0.25), 0.50),
}


def vehicle(rng: np.random.Generator) -> list[tuple]:
    """Body box + cabin (or cab + cargo box) + 4-6 wheels."""
    names = list(_VEHICLE_TYPES)
    kind = names[rng.choice(len(names), p=[_VEHICLE_TYPES[n][0] for n in names])]
    _, (lm, ls), (wm, ws), (hm, hs), wheel = _VEHICLE_TYPES[kind]
    length = _clipped_normal(rng, lm, ls, lm - 2.5 * ls, lm + 2.5 * ls)
    width = _clipped_normal(rng, wm, ws, wm - 2.5 * ws, wm + 2.5 * ws)
    height = _clipped_normal(rng, hm, hs, hm - 2.5 * hs, hm + 2.5 * hs)
    wheel *= rng.uniform(0.95, 1.05)
    paint = rng.uniform(0.05, 0.7)
    glass, tyre = 0.08, 0.04
    clearance = 0.6 * wheel
    parts = []
    if kind == "truck":
        cab_len = rng.uniform(1.8, 2.3)
        frame_top = clearance + 0.5
        parts.append(_box((0, 0, (clearance + frame_top) / 2), (length / 2, width / 2 - 0.05, (frame_top - clearance) / 2), paint))
        cab_top = height * rng.uniform(0.8, 0.95)
        parts.append(_box((length / 2 - cab_len / 2, 0, (frame_top + cab_top) / 2),
                          (cab_len / 2, width / 2, (cab_top - frame_top) / 2), paint))
        cargo_len = length - cab_len - 0.3
        parts.append(_box((-length / 2 + cargo_len / 2, 0, (frame_top + height) / 2),
                          (cargo_len / 2, width / 2, (height - frame_top) / 2), rng.uniform(0.2, 0.8)))
        axles = [length / 2 - 1.2, -length / 2 + 2.2, -length / 2 + 1.0]
    else:
        belt = height * {"car": 0.58, "suv": 0.6, "van": 0.5}[kind]
        parts.append(_box((0, 0, (clearance + belt) / 2), (length / 2, width / 2 - 0.02, (belt - clearance) / 2), paint))
        cabin_frac = {"car": 0.5, "suv": 0.62, "van": 0.82}[kind]
        cabin_len = length * cabin_frac
        cabin_x = -length * {"car": 0.06, "suv": 0.1, "van": 0.07}[kind]
        parts.append(_box((cabin_x, 0, (belt + height) / 2), (cabin_len / 2, width * 0.43, (height - belt) / 2), glass))
        overhang = length * rng.uniform(0.17, 0.21)
        axles = [length / 2 - overhang, -length / 2 + overhang]
    half_len = 0.15 if kind == "truck" else 0.12
    for x in axles:
        for side in (1.0, -1.0):
            parts.append(_cyl((x, side * (width / 2 - half_len), wheel), wheel, half_len, tyre, _WHEEL_ROT))
    return parts


def pedestrian(rng: np.random.Generator) -> list[tuple]:
    """Two legs, torso, two arms, head; a walking stride swings legs and arms."""
    height = _clipped_normal(rng, 1.72, 0.08, 1.5, 1.95)
    shoulders = rng.uniform(0.38, 0.48)
    stride = rng.uniform(0.0, 0.35)
    cloth_top, cloth_bottom, skin = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.5), 0.35
    leg_len = 0.47 * height
    torso_top = 0.82 * height
    parts = []
    for side, swing in ((1.0, 1.0), (-1.0, -1.0)):
        parts.append(_cyl((swing * stride / 2, side * 0.1, leg_len / 2), 0.075, leg_len / 2, cloth_bottom))
    parts.append(_box((0, 0, (leg_len + torso_top) / 2), (0.11, shoulders / 2 * 0.85, (torso_top - leg_len) / 2), cloth_top))
    arm_len = 0.34 * height
    for side, swing in ((1.0, -1.0), (-1.0, 1.0)):
        parts.append(_cyl((swing * stride / 3, side * (shoulders / 2 + 0.02), torso_top - 0.02 - arm_len / 2),
                          0.045, arm_len / 2, cloth_top))
    parts.append(_ell((0.01, 0, height - 0.115), (0.1, 0.085, 0.115), skin))
    return parts


def cyclist(rng: np.random.Generator) -> list[tuple]:
    """Bike (two wheels, frame, handlebar) and a forward-leaning rider (torso, legs, head)."""
    wheel = rng.uniform(0.32, 0.36)
    base = rng.uniform(0.98, 1.06)  # half wheelbase ~ 0.5 m
    axle = 0.5 * base
    metal = rng.uniform(0.3, 0.7)
    cloth = rng.uniform(0.1, 0.6)
    parts = [
        _cyl((axle, 0, wheel), wheel, 0.02, 0.05, _WHEEL_ROT),
        _cyl((-axle, 0, wheel), wheel, 0.02, 0.05, _WHEEL_ROT),
        _box((0, 0, wheel + 0.2), (axle - 0.08, 0.025, 0.12), metal),
        _box((axle - 0.08, 0, wheel + 0.62), (0.03, rng.uniform(0.26, 0.32), 0.02), metal),
    ]
    lean = rng.uniform(0.45, 0.75)  # torso pitch forward, radians
    saddle = np.array([-0.18, 0.0, wheel + 0.6])
    torso_half = np.array([0.11, 0.19, 0.27])
    torso_rot = rotation_y(lean)
    torso_center = saddle + torso_rot @ np.array([0, 0, torso_half[2] + 0.03])
    parts.append(_box(torso_center, torso_half, cloth, torso_rot))
    head_center = saddle + torso_rot @ np.array([0.02, 0, 2 * torso_half[2] + 0.16])
    parts.append(_ell(head_center, (0.11, 0.09, 0.12), 0.35, torso_rot))
    pedal = np.array([0.0, 0.0, wheel])
    for side in (1.0, -1.0):
        top = saddle + np.array([0.0, side * 0.11, -0.02])
        bottom = pedal + np.array([side * 0.08, side * 0.12, 0.0])
        axis = top - bottom
        length = np.linalg.norm(axis)
        pitch = np.arctan2(axis[0], axis[2])
        parts.append(_cyl((top + bottom) / 2, 0.07, length / 2 - 0.01, cloth, rotation_y(pitch)))
    return parts


def building(rng: np.random.Generator, length: float, depth: float) -> list[tuple]:
    height = rng.uniform(4.0, 20.0)
    # extends 0.5 m below ground so a sloped ground never shows a gap under the wall
    return [_box((0, 0, (height - 0.5) / 2), (length / 2, depth / 2, (height + 0.5) / 2), rng.uniform(0.2, 0.6))]


def wall(rng: np.random.Generator) -> list[tuple]:
    length = rng.uniform(4.0, 18.0)
    height = rng.uniform(0.8, 2.5)
    thick = rng.uniform(0.15, 0.4)
    return [_box((0, 0, (height - 0.3) / 2), (length / 2, thick / 2, (height + 0.3) / 2), rng.uniform(0.2, 0.6))]


def pole(rng: np.random.Generator) -> list[tuple]:
    """A post, optionally with a retro-reflective sign or a lamp arm."""
    radius = rng.uniform(0.06, 0.18)
    height = rng.uniform(3.0, 9.0)
    parts = [_cyl((0, 0, (height - 0.3) / 2), radius, (height + 0.3) / 2, rng.uniform(0.3, 0.6))]
    extra = rng.random()
    if extra < 0.35:
        side = rng.uniform(0.3, 0.45)
        parts.append(_box((radius + 0.02, 0, min(height - side, 2.8)), (0.01, side, side), 0.95))
    elif extra < 0.6:
        arm = rng.uniform(1.0, 2.5)
        parts.append(_box((arm / 2, 0, height - 0.1), (arm / 2, 0.06, 0.06), 0.5))
    return parts


def tree(rng: np.random.Generator) -> list[tuple]:
    trunk_r = rng.uniform(0.12, 0.3)
    trunk_h = rng.uniform(2.0, 4.0)
    canopy = rng.uniform(1.2, 3.0)
    canopy_h = rng.uniform(1.2, 2.5)
    return [
        _cyl((0, 0, (trunk_h - 0.3) / 2 + 0.05), trunk_r, (trunk_h + 0.3) / 2, 0.3),
        _ell((0, 0, trunk_h + 0.7 * canopy_h), (canopy, canopy * rng.uniform(0.8, 1.0), canopy_h), rng.uniform(0.45, 0.7)),
    ]


def bush(rng: np.random.Generator) -> list[tuple]:
    axes = np.array([rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng.uniform(0.4, 1.0)])
    return [_ell((0, 0, 0.5 * axes[2]), axes, rng.uniform(0.45, 0.7))]


def local_extents(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Tight (min (3,), max (3,)) of the parts in the shape's frame."""
    prims = Primitives.from_list([p + (-1,) for p in parts])
    lows, highs = zip(*(prims.extents_in_frame(i, _I, np.zeros(3)) for i in range(len(prims))))
    return np.min(lows, axis=0), np.max(highs, axis=0)


def place_shape(parts: list[tuple], x: float, y: float, z: float, heading: float, owner: int) -> list[tuple]:
    """World primitives `(kind, center, rotation, size, reflectivity, owner)` of a shape at (x, y, z, heading)."""
    rot = rotation_z(heading)
    origin = np.array([x, y, z])
    return [(kind, rot @ center + origin, rot @ prim_rot, size, refl, owner)
            for kind, center, prim_rot, size, refl in parts]
