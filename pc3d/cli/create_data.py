#!/usr/bin/env python
"""Convert or generate datasets into the pc3d on-disk format.

    tools/create_data.py synthetic --out DIR --frames N --seed S [--split val]
    tools/create_data.py waymo --root SEGMENTS_DIR --out DIR [--workers N]
    tools/create_data.py registration --out DIR --pairs N --seed S
    tools/create_data.py {kitti,nuscenes,lyft} --root DIR --split train --gt-database
    (synthetic and waymo take --gt-database too: objects cut into <out>/gt_database + *_dbinfos_<split>.pkl)
"""
import argparse
import importlib
import sys

from pc3d.cli.errors import run_cli

# subcommand -> module providing add_arguments(parser) and run(args)
CONVERTERS = {
    "synthetic": ("pc3d.data.synthetic.writer", "synthetic LiDAR frames with labels (the embedded default dataset)"),
    "registration": ("pc3d.data.synthetic.registration_pairs", "synthetic registration pairs in the 3DMatch layout"),
    "waymo": ("pc3d.data.waymo.convert", "Waymo Open Dataset segments (.tfrecord) without TensorFlow"),
    "kitti": ("pc3d.data.gt_database", "GT-sampling database of a KITTI split (--gt-database)"),
    "nuscenes": ("pc3d.data.gt_database", "GT-sampling database of a nuScenes split (--gt-database)"),
    "lyft": ("pc3d.data.gt_database", "GT-sampling database of a Lyft split (--gt-database)"),
}


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in CONVERTERS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == chosen:  # import only the converter that runs: one broken converter cannot block the others
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
