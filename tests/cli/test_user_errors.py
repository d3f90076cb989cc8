"""The one user-error path (pc3d.cli.errors): each mistake of issue 17 gives exactly one `error:` line that
names the input, exit code 2 and no traceback, from every command."""
import importlib
from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/synthetic/pointpillars_tiny.yaml"


def run_tool(name, argv, capsys) -> tuple[int, str]:
    rc = importlib.import_module(f"pc3d.cli.{name}").main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line(rc, err, *names):
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])


def _scan(tmp_path):
    import numpy as np
    path = tmp_path / "scan.npy"
    rng = np.random.default_rng(0)
    np.save(path, np.c_[rng.uniform(-20, 20, (500, 3)), rng.uniform(0, 1, 500)].astype(np.float32))
    return path


def test_unknown_override_key(tmp_path, capsys):
    rc, err = run_tool("train", [CONFIG, "--set", "train.max_stepz=3", "--work-dir", tmp_path / "w"], capsys)
    assert_one_line(rc, err, "max_stepz", "did you mean 'max_steps'")


def test_missing_dataset_root(tmp_path, capsys):
    rc, err = run_tool("train", [CONFIG, "--set", f"dataset.root={tmp_path / 'nowhere'}", "--work-dir", tmp_path / "w",
                                 "--no-progress"], capsys)
    assert_one_line(rc, err, tmp_path / "nowhere", "does not exist")
    rc, err = run_tool("test", [CONFIG, REPO / "checkpoints/flatformer_synthetic_tiny.pth", "--data-root",
                                tmp_path / "nowhere"], capsys)
    assert rc == 2 and "Traceback" not in err


def test_negative_frame_count(tmp_path, capsys):
    rc, err = run_tool("create_data", ["synthetic", "--out", tmp_path / "d", "--frames", "-3"], capsys)
    assert_one_line(rc, err, "frames", "-3")


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("epochs", 0), ("max_steps", -1), ("log_every", 0)])
def test_nonpositive_train_counts(tmp_path, tiny_dataset, capsys, key, value):
    rc, err = run_tool("train", [CONFIG, "--set", f"dataset.root={tiny_dataset}", "--set", f"train.{key}={value}",
                                 "--work-dir", tmp_path / "w", "--no-progress"], capsys)
    assert_one_line(rc, err, f"train.{key}", str(value))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given on a machine without a GPU")
def test_cuda_device_without_a_gpu(tmp_path, tiny_dataset, capsys):
    for tool, argv in (("train", [CONFIG, "--set", f"dataset.root={tiny_dataset}", "--work-dir", tmp_path / "w"]),
                       ("test", [CONFIG, REPO / "checkpoints/flatformer_synthetic_tiny.pth",
                                 "--set", f"dataset.root={tiny_dataset}"])):
        rc, err = run_tool(tool, argv + ["--device", "cuda"], capsys)
        assert_one_line(rc, err, "--device cuda", "no CUDA GPU")
    rc, err = run_tool("train", [CONFIG, "--device", "tpu", "--work-dir", tmp_path / "w"], capsys)
    assert_one_line(rc, err, "--device", "tpu")


def test_empty_yaml(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    for tool, argv in (("train", [empty]), ("test", [empty, REPO / "checkpoints/flatformer_synthetic_tiny.pth"]),
                       ("infer", [empty, "--points", _scan(tmp_path)]), ("export", [empty])):
        rc, err = run_tool(tool, argv, capsys)
        assert_one_line(rc, err, empty, "empty")


def test_non_utf8_config(tmp_path, capsys):
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("dataset: {root: caf\xe9}\n".encode("latin-1"))
    rc, err = run_tool("train", [binary], capsys)
    assert_one_line(rc, err, binary, "not a UTF-8")


def test_corrupt_checkpoint_to_infer(tmp_path, capsys):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x80\x02garbage that is not a torch file")
    rc, err = run_tool("infer", [CONFIG, bad, "--points", _scan(tmp_path)], capsys)
    assert_one_line(rc, err, bad, "cannot read checkpoint")
    good = REPO / "checkpoints/flatformer_synthetic_tiny.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:50000])
    rc, err = run_tool("infer", [CONFIG, truncated, "--points", _scan(tmp_path)], capsys)
    assert_one_line(rc, err, truncated)


def test_checkpoint_of_another_config_is_a_short_summary(tmp_path, capsys):
    rc, err = run_tool("infer", [CONFIG, REPO / "checkpoints/flatformer_synthetic_tiny.pth", "--points",
                                 _scan(tmp_path)], capsys)
    assert rc == 2 and "Traceback" not in err and err.startswith("error: ")
    assert "likely cause" in err and "missing keys" in err and len(err) < 1500


def test_directory_given_as_a_file(tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    for tool, argv in (("train", [folder]),
                       ("infer", [CONFIG, folder, "--points", _scan(tmp_path)]),
                       ("infer", [CONFIG, "--points", folder]),
                       ("test", [CONFIG, folder]),
                       ("export", [CONFIG, "--example-points", folder]),
                       ("register", [folder, folder])):
        rc, err = run_tool(tool, argv, capsys)
        assert_one_line(rc, err, folder, "directory")


def test_visualize_and_eval_waymo_share_the_path(tmp_path, capsys):
    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(SystemExit) as stop:
        importlib.import_module("pc3d.cli.visualize").main(["--points", str(folder), "--out", str(tmp_path / "o.png")])
    assert stop.value.code == 2 and "directory" in str(stop.value)
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and str(folder) in err
    rc, err = run_tool("eval_waymo", [tmp_path / "none.bin", tmp_path / "none.bin"], capsys)
    assert rc == 2 and "none.bin" in err and "Traceback" not in err


def test_config_without_sections(tmp_path, capsys):
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: only a name\n")
    for tool, argv in (("infer", [bare, "--points", _scan(tmp_path)]), ("export", [bare]), ("train", [bare]),
                       ("test", [bare, REPO / "checkpoints/flatformer_synthetic_tiny.pth"])):
        rc, err = run_tool(tool, argv, capsys)
        assert_one_line(rc, err, bare, "section")
