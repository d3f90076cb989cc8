#!/usr/bin/env python
"""Convert or generate datasets into the pc3d on-disk format.

    tools/create_data.py synthetic --out DIR --frames N --seed S [--split val]
    tools/create_data.py waymo --root SEGMENTS_DIR --out DIR [--workers N]
    tools/create_data.py registration --out DIR --pairs N --seed S
    tools/create_data.py {kitti,nuscenes,lyft} --root DIR --split train --gt-database
    (synthetic and waymo take --gt-database too: objects cut into <out>/gt_database + *_dbinfos_<split>.pkl)

Each subcommand parses its own options here and calls one plain library function with typed arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pc3d.cli.errors import run_cli


def _synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    # the choices mirror pc3d.data.synthetic.writer's SPLIT_OFFSETS / BEAM_PRESETS; read lazily so that
    # `--help` of another subcommand does not import the simulator
    from pc3d.data.synthetic.writer import BEAM_PRESETS, SPLIT_OFFSETS
    parser.add_argument("--out", required=True, help="output dataset root")
    parser.add_argument("--frames", type=int, default=32, help="number of frames of the split")
    parser.add_argument("--seed", type=int, default=0, help="base seed (frame seeds derive from it)")
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_OFFSETS))
    parser.add_argument("--beams", type=int, default=64, choices=sorted(BEAM_PRESETS),
                        help="64 = Waymo-like top LiDAR, 32 = VLP-32C-like")
    parser.add_argument("--scene", default="street", choices=["street", "small", "empty"], help="SceneConfig preset")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = none)")
    parser.add_argument("--drop-empty-boxes", action="store_true", help="omit boxes with 0 points from the infos")
    parser.add_argument("--gt-database", action="store_true",
                        help="also cut every labelled object into <out>/gt_database + synthetic_dbinfos_<split>.pkl "
                             "(for train.gt_sampling)")
    parser.add_argument("--no-progress", action="store_true")


def _synthetic(args) -> int:
    from pc3d.data.synthetic.writer import write_synthetic_split
    path, db = write_synthetic_split(args.out, args.frames, args.seed, split=args.split, scene=args.scene,
                                     beams=args.beams, workers=args.workers, drop_empty_boxes=args.drop_empty_boxes,
                                     gt_database=args.gt_database, progress=not args.no_progress)
    print(f"wrote {args.frames} {args.split} frames to {path}")
    if db is not None:
        print(f"wrote the GT database {db}")
    return 0


def _registration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output root (3DMatch layout)")
    parser.add_argument("--pairs", type=int, default=64, help="number of benchmark pairs (high + low overlap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fragments", type=int, default=8, help="fragments (camera views) per room")
    parser.add_argument("--no-progress", action="store_true")


def _registration(args) -> int:
    from pc3d.data.synthetic.registration_pairs import write_registration_dataset
    totals = write_registration_dataset(args.out, args.pairs, args.seed, fragments_per_scene=args.fragments,
                                        progress=not args.no_progress)
    print(f"wrote registration pairs to {args.out}: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    return 0


def _waymo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="folder of segment .tfrecord files (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output dataset root")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (one segment each)")
    parser.add_argument("--split", default=None,
                        help="split name of the info file (default: from the root folder: training->train, validation->val)")
    parser.add_argument("--include-sign", action="store_true", help="keep Sign labels as a 4th class")
    parser.add_argument("--keep-nlz", action="store_true", help="keep points inside no-label zones (dropped by default)")
    parser.add_argument("--first-return-only", action="store_true", help="skip the second lidar return")
    parser.add_argument("--max-frames", type=int, default=None, help="at most this many frames per segment (debugging)")
    parser.add_argument("--gt-database", action="store_true",
                        help="also cut every labelled object into <out>/gt_database + waymo_dbinfos_<split>.pkl")


def _waymo(args) -> int:
    from pc3d.data.waymo.convert import convert_waymo
    convert_waymo(args.root, args.out, workers=args.workers, split=args.split, include_sign=args.include_sign,
                  keep_nlz=args.keep_nlz, first_return_only=args.first_return_only, max_frames=args.max_frames,
                  gt_database=args.gt_database)
    return 0


def _gt_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="dataset root (KITTI object/ or the devkit root)")
    parser.add_argument("--split", default="train", help="split whose objects go into the database")
    parser.add_argument("--version", default=None, help="nuScenes / Lyft table version (default: the one found)")
    parser.add_argument("--sweeps", type=int, default=10, help="nuScenes / Lyft sweeps per key frame (as training)")
    parser.add_argument("--classes", nargs="+", default=None, help="classes to keep (default: the loader's)")
    parser.add_argument("--out", type=Path, default=None, help="where the database goes (default: --root)")
    parser.add_argument("--gt-database", action="store_true", required=True,
                        help="cut every labelled object into <out>/gt_database + <dataset>_dbinfos_<split>.pkl")
    parser.add_argument("--no-progress", action="store_true")


def _gt_database(args) -> int:
    from pc3d.data.gt_database import GTDatabase, write_split_gt_database
    path = write_split_gt_database(args.dataset, args.root, args.split, version=args.version, sweeps=args.sweeps,
                                   classes=args.classes, out=args.out, progress=not args.no_progress)
    print(f"wrote the GT database {path} ({len(GTDatabase(path))} objects)")
    return 0


# subcommand -> (help, add its options, run it)
SUBCOMMANDS = {
    "synthetic": ("synthetic LiDAR frames with labels (the embedded default dataset)", _synthetic_arguments, _synthetic),
    "registration": ("synthetic registration pairs in the 3DMatch layout", _registration_arguments, _registration),
    "waymo": ("Waymo Open Dataset segments (.tfrecord) without TensorFlow", _waymo_arguments, _waymo),
    "kitti": ("GT-sampling database of a KITTI split (--gt-database)", _gt_database_arguments, _gt_database),
    "nuscenes": ("GT-sampling database of a nuScenes split (--gt-database)", _gt_database_arguments, _gt_database),
    "lyft": ("GT-sampling database of a Lyft split (--gt-database)", _gt_database_arguments, _gt_database),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only subcommand `chosen` gets its options (so only its converter is imported)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == chosen:  # one broken converter cannot block the others
            add_arguments(sub_parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; returns the exit code."""
    return SUBCOMMANDS[args.dataset][2](args) or 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    return run(build_parser(chosen).parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
