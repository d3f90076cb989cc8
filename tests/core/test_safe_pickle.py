import os
import pickle

import numpy as np
import pytest

from pc3d.io.safe_pickle import UnsafePickleError, safe_load


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_malicious_pickle(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"infos": [_Exploit()]}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*(posix|os)\.system"):
        safe_load(path)


def test_refuses_arbitrary_class(tmp_path):
    path = tmp_path / "cls.pkl"
    path.write_bytes(pickle.dumps(pytest.MonkeyPatch))
    with pytest.raises(UnsafePickleError):
        safe_load(path)


def test_loads_numpy_and_builtins(tmp_path):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, 2.5, "x", (3, None)], "c": np.float64(2.0)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    out = safe_load(path)
    np.testing.assert_array_equal(out["a"], obj["a"])
    assert out["b"] == obj["b"] and out["c"] == 2.0


def test_corrupt_and_missing(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=r"bad\.pkl"):
        safe_load(path)
    with pytest.raises(FileNotFoundError, match="nope"):
        safe_load(tmp_path / "nope.pkl")


def test_real_info_pickles(shared_data):
    info = safe_load(shared_data / "nuscenes/mmdet3d_demo/n015-2018-07-24-11-22-45+0800.pkl")
    assert isinstance(info, dict)
    pairs = safe_load(shared_data / "3dmatch/metadata/3DMatch.pkl")
    assert len(pairs) == 1623


def test_legacy_torch_pth_fragment(shared_data):
    points = safe_load(shared_data / "3dmatch/fragments/predator_demo/cloud_bin_21.pth")
    assert points.shape == (25337, 3)
