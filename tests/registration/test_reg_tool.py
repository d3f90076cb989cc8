"""tools/register.py end to end on .npy files."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from pc3d.testing.scenes import room_cloud
from scipy.spatial.transform import Rotation

REPO = Path(__file__).resolve().parents[2]


def _room(seed=0, n_per_face=1500):
    return room_cloud(seed, n_per_face, 1500)


def test_register_tool_fpfh_writes_transform(tmp_path):
    ref = _room()
    gt = np.eye(4)
    gt[:3, :3] = Rotation.from_euler("zyx", [25, 5, -3], degrees=True).as_matrix()
    gt[:3, 3] = [0.3, -0.2, 0.1]
    src = (ref - gt[:3, 3]) @ gt[:3, :3]   # so that gt maps src onto ref
    np.save(tmp_path / "src.npy", src.astype(np.float32))
    np.save(tmp_path / "ref.npy", ref.astype(np.float32))
    out = tmp_path / "T.txt"
    proc = subprocess.run([sys.executable, str(REPO / "tools/register.py"), str(tmp_path / "src.npy"), str(tmp_path / "ref.npy"),
                           "--method", "fpfh", "--voxel-size", "0.1", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    t = np.loadtxt(out)
    assert t.shape == (4, 4)
    np.testing.assert_allclose(np.array(info["transform"]), t, atol=1e-8)
    assert info["inliers"] > 0 and info["seconds"] > 0
    np.testing.assert_allclose(t, gt, atol=0.03)


def _tool_main():
    from pc3d.cli.register import main  # tools/register.py is a thin wrapper around it
    return main


def test_register_tool_reports_bad_files(tmp_path, capsys):
    main = _tool_main()
    np.save(tmp_path / "bad.npy", np.zeros((10, 2), np.float32))
    assert main([str(tmp_path / "bad.npy"), str(tmp_path / "bad.npy")]) == 2
    assert "expected (N, 3+)" in capsys.readouterr().err
    assert main([str(tmp_path / "none.npy"), str(tmp_path / "bad.npy")]) == 2
    assert "not found" in capsys.readouterr().err
    nan = np.zeros((10, 3), np.float32)
    nan[3, 1] = np.inf
    np.save(tmp_path / "nan.npy", nan)
    assert main([str(tmp_path / "nan.npy"), str(tmp_path / "nan.npy")]) == 2
    assert "NaN or inf" in capsys.readouterr().err


def test_register_tool_roitr_uses_shipped_checkpoint(tmp_path, capsys):
    from pc3d.models.registration.roitr import DEFAULT_CHECKPOINT
    assert DEFAULT_CHECKPOINT.is_file(), "shipped checkpoint missing"
    assert DEFAULT_CHECKPOINT.stat().st_size < 5 * 2 ** 20
    main = _tool_main()
    ref = _room(1, n_per_face=600)
    np.save(tmp_path / "src.npy", ref[::2].astype(np.float32))
    np.save(tmp_path / "ref.npy", ref.astype(np.float32))
    out = tmp_path / "T.txt"
    assert main([str(tmp_path / "src.npy"), str(tmp_path / "ref.npy"), "--method", "roitr", "--pose", "svd",
                 "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    t = np.loadtxt(out)
    np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-6)
    assert info["method"] == "roitr_svd_verify" and info["num_correspondences"] >= 0 and "icp_fitness" in info
    assert 1 <= info["num_hypotheses"] <= 8
    assert main([str(tmp_path / "src.npy"), str(tmp_path / "ref.npy"), "--method", "roitr", "--pose", "svd",
                 "--verify", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["method"] == "roitr_svd_icp" and "icp_fitness" in info and "num_hypotheses" not in info
    assert main([str(tmp_path / "src.npy"), str(tmp_path / "ref.npy"), "--method", "roitr", "--pose", "svd",
                 "--no-icp", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["method"] == "roitr_svd" and "icp_fitness" not in info
    assert main([str(tmp_path / "src.npy"), str(tmp_path / "ref.npy"), "--verify", "0"]) == 2
    assert "--verify" in capsys.readouterr().err
