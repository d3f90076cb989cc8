"""Synthetic LiDAR simulator speed: numba ray caster vs a plain numpy ray caster, same scene, same rays.

    python benchmarks/bench_simulator.py [--json --repeat K] [--threads T] [--no-reference]

One row per preset (vlp32, waymo64), scene = `generate_scene(0)` (a street with ~30 road users and
clutter). `seconds` = pc3d's first-hit ray cast of the whole sweep (numba, parallel over rays);
`reference_seconds` = `pc3d.testing.reference_raycast.cast_rays_reference` (numpy, vectorised over rays, every ray
against every primitive, same ground sphere tracing); `identical` = same hit distance for every ray
(within 1e-6 m) and the same hit primitive except for exact ties. Extra keys: `rays`, `points`,
`frame_seconds` (whole `simulate_frame`: scene generation + cast + noise + labels),
`frames_per_s`, `points_per_s`, and `frame_seconds_1thread` (the same on one numba thread).
`--points/--dim` are accepted for uniformity with the other benchmarks but unused (the input is simulated).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, report, time_call  # noqa: E402

from pc3d.data.synthetic.lidar import LidarConfig, simulate_frame  # noqa: E402
from pc3d.data.synthetic.raycast import cast_rays  # noqa: E402
from pc3d.testing.reference_raycast import cast_rays_reference  # noqa: E402
from pc3d.data.synthetic.scene import generate_scene  # noqa: E402


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) numpy reference")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    seed = 0
    scene = generate_scene(seed)
    for preset in ("vlp32", "waymo64"):
        config = LidarConfig.preset(preset)
        dirs, _ = config.ray_directions(0.0)
        origin = np.array([0.0, 0.0, config.sensor_height])

        def cast():
            return cast_rays(origin, dirs, scene.primitives, scene.ground, config.max_range)

        seconds = time_call(cast, args.repeat)
        hits = cast()
        reference_seconds = identical = None
        if not args.no_reference:
            reference_seconds = time_call(lambda: cast_rays_reference(origin, dirs, scene.primitives, scene.ground,
                                                                      config.max_range), repeat=1, warmup=0)
            ref_t, ref_id = cast_rays_reference(origin, dirs, scene.primitives, scene.ground, config.max_range)
            finite = np.isfinite(ref_t)
            same_hits = np.array_equal(finite, np.isfinite(hits.distance)) and bool(
                np.all(np.abs(hits.distance[finite] - ref_t[finite]) <= 1e-6))
            identical = same_hits
        frame_seconds = time_call(lambda: simulate_frame(seed, lidar_config=config), args.repeat)
        points = len(simulate_frame(seed, lidar_config=config).points)
        numba.set_num_threads(1)
        frame_seconds_1 = time_call(lambda: simulate_frame(seed, lidar_config=config), max(1, args.repeat // 2))
        numba.set_num_threads(threads)
        report(f"raycast[{preset}]", seconds, "numpy vectorised ray caster" if reference_seconds else None,
               reference_seconds, identical, args.json, rays=int(dirs.shape[0]), points=points,
               frame_seconds=frame_seconds, frames_per_s=1.0 / frame_seconds, points_per_s=points / frame_seconds,
               frame_seconds_1thread=frame_seconds_1, threads=threads)


if __name__ == "__main__":
    main()
