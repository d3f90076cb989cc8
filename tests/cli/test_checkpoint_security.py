"""Every command that loads a checkpoint refuses one whose pickle would run code: exit code 2, one error
line naming the file, and the payload never runs (issue 17, security)."""
import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch


REPO = Path(__file__).resolve().parents[2]

CONFIG = REPO / "configs/synthetic/pointpillars_tiny.yaml"


class _Payload:
    """Unpickling this runs `os.system` (a hostile checkpoint)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "ema": None, "payload": _Payload(marker)}, path)
    return path, marker


def _scan(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scan.npy"
    np.save(path, np.c_[rng.uniform(-20, 20, (2000, 2)), rng.uniform(-2, 1, 2000), rng.uniform(0, 1, 2000)]
            .astype(np.float32))
    return path


def _commands(tmp_path, ckpt, data_root):
    scan = _scan(tmp_path)
    src = tmp_path / "src.npy"
    np.save(src, np.random.default_rng(1).uniform(0, 2, (500, 3)).astype(np.float32))
    return {
        "infer": ("pc3d.cli.infer", [str(CONFIG), str(ckpt), "--points", str(scan)]),
        "test": ("pc3d.cli.test", [str(CONFIG), str(ckpt), "--set", f"dataset.root={data_root}", "--no-progress",
                                   "--out-dir", str(tmp_path / "eval")]),
        "export": ("pc3d.cli.export", [str(CONFIG), str(ckpt), "--out", str(tmp_path / "m.onnx")]),
        "register": ("pc3d.cli.register", [str(src), str(src), "--method", "roitr", "--ckpt", str(ckpt)]),
        "train --load-from": ("pc3d.cli.train", [str(CONFIG), "--set", f"dataset.root={data_root}", "--load-from",
                                                 str(ckpt), "--work-dir", str(tmp_path / "w"), "--no-progress"]),
        "train --resume": ("pc3d.cli.train", [str(CONFIG), "--set", f"dataset.root={data_root}", "--resume",
                                              str(ckpt), "--work-dir", str(tmp_path / "w"), "--no-progress"]),
    }


@pytest.mark.parametrize("tool", ["infer", "test", "export", "register", "train --load-from", "train --resume"])
def test_every_loader_refuses_a_checkpoint_that_runs_code(tool, tmp_path, evil, tiny_dataset, capsys):
    ckpt, marker = evil
    module, argv = _commands(tmp_path, ckpt, tiny_dataset)[tool]
    rc = importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not marker.exists(), f"{tool}: the checkpoint's payload ran"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(ckpt) in lines[0] and "refused" in lines[0], err
    assert "Traceback" not in err
