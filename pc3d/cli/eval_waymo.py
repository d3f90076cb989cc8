"""pc3d-eval-waymo / tools/eval_waymo.py: Waymo AP/APH of a submission file (see pc3d.evaluation.waymo_metric)."""
import sys


from pc3d.cli.errors import run_cli


def main(argv=None) -> int:
    from pc3d.evaluation.waymo_metric import cli_main

    return run_cli(cli_main, argv)


if __name__ == "__main__":
    sys.exit(main())
