"""pc3d-convert-checkpoint / tools/convert_checkpoint.py: reference configs and checkpoints -> pc3d.

    tools/convert_checkpoint.py --from openpcdet --cfg REF.yaml --ckpt REF.pth --out DIR
        writes DIR/config.yaml and DIR/model.pth (usable unchanged by tools/infer.py and tools/test.py)
    tools/convert_checkpoint.py --from roitr --cfg configs/test/tdmatch.yaml --ckpt model_3dmatch.pth --out DIR
        writes DIR/config.yaml and DIR/model.pth for `tools/register.py --method roitr --ckpt DIR/model.pth`
    tools/convert_checkpoint.py --verify-fixture F.pt [F2.pt ...] [--json]
        runs the pc3d module a parity fixture describes and prints the max abs difference per output;
        exits 1 when any output differs by more than 1e-4
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# --from value -> converter module (each has `convert(cfg_path, ckpt_path) -> (config, state_dict)`)
# (a module with its own `write(cfg_path, ckpt_path, out)` writes a non-detector checkpoint format itself)
SOURCES = {"openpcdet": "pc3d.compat.openpcdet", "roitr": "pc3d.compat.roitr", "flatformer": "pc3d.compat.flatformer"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", choices=sorted(SOURCES), help="layout of the reference config/checkpoint")
    p.add_argument("--cfg", type=Path, help="reference YAML (OpenPCDet tools/cfgs/...)")
    p.add_argument("--ckpt", type=Path, help="reference checkpoint (.pth)")
    p.add_argument("--out", type=Path, help="output folder for config.yaml + model.pth")
    p.add_argument("--verify-fixture", nargs="+", type=Path, metavar="F.pt", help="parity fixture(s) to check")
    p.add_argument("--json", action="store_true", help="one JSON object per fixture")
    return p


def convert(source: str, cfg_path: Path, ckpt_path: Path, out: Path) -> dict:
    import importlib

    from pc3d.config import dump_config
    from pc3d.checkpoint import load_model_weights, save_checkpoint
    from pc3d.models.build import build_model

    module = importlib.import_module(SOURCES[source])
    if hasattr(module, "write"):  # RoITr: registration checkpoint format, read by tools/register.py --ckpt
        return module.write(cfg_path, ckpt_path, out)
    cfg, state = module.convert(cfg_path, ckpt_path)
    cfg = {"name": f"converted from {source}: {cfg_path.name}",
           "description": f"converted by tools/convert_checkpoint.py from {cfg_path} and {ckpt_path}", **cfg}
    model = build_model(cfg)  # the converted weights must load strictly into the model the config builds
    load_model_weights(model, state, str(ckpt_path))
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    save_checkpoint({"model": state, "converted_from": {"source": source, "config": str(cfg_path),
                                                        "checkpoint": str(ckpt_path)}}, out / "model.pth")
    return {"config": str(out / "config.yaml"), "checkpoint": str(out / "model.pth"), "tensors": len(state)}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pc3d.compat.fixture import FixtureError
    from pc3d.compat.registry import ConversionError
    from pc3d.config import ConfigError

    if args.verify_fixture:
        from pc3d.compat.verify import verify_fixture
        failed = 0
        for path in args.verify_fixture:
            try:
                report = verify_fixture(path)
            except (FixtureError, ConversionError, ConfigError, ValueError) as err:
                print(f"convert_checkpoint: error: {err}", file=sys.stderr)
                return 2
            failed += not report.ok
            if args.json:
                print(json.dumps(report.as_dict()))
                continue
            print(f"{'PASS' if report.ok else 'FAIL'} {path} ({report.repo} {report.module}): "
                  f"max abs diff {report.max_abs_diff:.3g}")
            for d in report.diffs:
                print(f"  {d.name}: {d.max_abs_diff:.3g}" + (f" ({d.note})" if d.note else ""))
        return 1 if failed else 0
    missing = [flag for flag, value in (("--from", args.source), ("--cfg", args.cfg), ("--ckpt", args.ckpt),
                                        ("--out", args.out)) if value is None]
    if missing:
        parser.error(f"converting needs {' '.join(missing)} (or use --verify-fixture)")
    try:
        result = convert(args.source, args.cfg, args.ckpt, args.out)
    except (ConversionError, ConfigError, ValueError) as err:
        print(f"convert_checkpoint: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else f"wrote {result['config']} and {result['checkpoint']} "
                                                f"({result['tensors']} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
