"""pc3d.checkpoint: the one checkpoint module (safe loading, one format, EMA rule, mismatch summary)."""
import os

import pytest
import torch

from pc3d.checkpoint import (CheckpointError, CheckpointNotFound, convert_checkpoint, inference_weights,
                             load_checkpoint, load_model_weights, save_checkpoint, shipped_checkpoint)


class _Payload:
    """Unpickling this runs `os.system` (a hostile checkpoint)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_checkpoint(path, marker):
    """A checkpoint whose pickle would create `marker` if it were unpickled with code execution."""
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    return path


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "PWNED"
    path = write_malicious_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert str(path) in text and "refused" in text and "system" in text
    assert not marker.exists()
    # the legitimate unsafe path would have run it: the test's payload is real
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_one_format_legacy_layout_and_converter(tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save({"config": {"num_points": 8}, "state_dict": {"w": torch.arange(3.0)}, "iterations": 7}, legacy)
    state = load_checkpoint(legacy)
    assert sorted(state) == ["config", "iterations", "model"] and torch.equal(state["model"]["w"], torch.arange(3.0))
    out = convert_checkpoint(legacy, tmp_path / "new.pth")
    raw = torch.load(out, weights_only=True)
    assert "state_dict" not in raw and torch.equal(raw["model"]["w"], torch.arange(3.0)) and raw["iterations"] == 7


@pytest.mark.parametrize("content, message", [
    ({"w": torch.zeros(2), "b": torch.zeros(1)}, "bare state_dict"),
    ({"model_state": {"w": torch.zeros(2)}, "epoch": 3}, "OpenPCDet"),
    ([1, 2, 3], "not a pc3d checkpoint"),
])
def test_other_layouts_say_what_the_file_holds(tmp_path, content, message):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointNotFound, match="not found"):
        load_checkpoint(tmp_path / "none.pth")
    with pytest.raises(FileNotFoundError):  # CheckpointNotFound is both
        load_checkpoint(tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_ema_rule_is_one_function():
    model, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert inference_weights({"model": model, "ema": ema}) is ema
    assert inference_weights({"model": model, "ema": None}) is model
    assert inference_weights({"model": model}) is model


def test_mismatch_is_a_short_summary():
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(60)])
    other = {f"backbone.{i}.weight": torch.zeros(4, 4) for i in range(80)}
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, other, "other.pth")
    text = str(err.value)
    assert "120 missing keys" in text and "80 unexpected keys" in text and "(+115 more)" in text
    assert "likely cause: a different architecture" in text and "backbone" in text
    assert len(text) < 1200 and len(text.splitlines()) <= 4
    shapes = {k: torch.zeros(5, *v.shape[1:]) for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="same layers with other sizes"):
        load_model_weights(model, shapes, "wide.pth")
    ddp = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="DistributedDataParallel"):
        load_model_weights(model, ddp, "ddp.pth")


def test_save_refuses_a_state_without_model(tmp_path):
    with pytest.raises(CheckpointError, match="'model'"):
        save_checkpoint({"state_dict": {}}, tmp_path / "x.pth")


def test_shipped_checkpoint_lookup(tmp_path, monkeypatch):
    default = shipped_checkpoint("roitr_synthetic_tiny.pth")
    assert default.is_file() and default.parent.name == "checkpoints"
    (tmp_path / "roitr_synthetic_tiny.pth").write_bytes(default.read_bytes())
    monkeypatch.setenv("PC3D_CHECKPOINT_DIR", str(tmp_path))
    assert shipped_checkpoint("roitr_synthetic_tiny.pth") == tmp_path / "roitr_synthetic_tiny.pth"


def test_shipped_registration_checkpoint_is_in_the_one_format():
    raw = torch.load(shipped_checkpoint("roitr_synthetic_tiny.pth"), weights_only=True)
    assert "model" in raw and "state_dict" not in raw and raw["config"]["num_points"] > 0


def test_shipped_checkpoint_after_a_plain_install(tmp_path, monkeypatch):
    """`pip install .` puts the checkpoints in <prefix>/share/pc3d/checkpoints (setup.py data_files)."""
    import sys
    installed = tmp_path / "share/pc3d/checkpoints"
    installed.mkdir(parents=True)
    (installed / "only_installed.pth").write_bytes(b"x")
    monkeypatch.delenv("PC3D_CHECKPOINT_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert shipped_checkpoint("only_installed.pth") == installed / "only_installed.pth"
    missing = shipped_checkpoint("nowhere.pth")
    assert not missing.exists() and missing.parent.name == "checkpoints"
