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


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    """Protocol 2 (numpy's and Python 2's default) names builtins `__builtin__.*`: an empty array pickles
    its data through `__builtin__.bytes` and was refused as unsafe."""
    obj = {"empty": np.zeros((0, 3), np.float32), "pts": np.arange(12, dtype=np.float64).reshape(4, 3),
           "scalar": np.float32(2.5), "set": {1, 2}, "complex": 1 + 2j, "bytes": b"", "slice": slice(1, 5)}
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = safe_load(path)
    assert out["empty"].shape == (0, 3) and out["empty"].dtype == np.float32
    np.testing.assert_array_equal(out["pts"], obj["pts"])
    assert out["scalar"] == np.float32(2.5) and out["set"] == {1, 2} and out["complex"] == 1 + 2j
    assert out["bytes"] == b"" and out["slice"] == slice(1, 5)
    path.write_bytes(pickle.dumps(np.zeros((0, 4), np.float32), protocol=protocol))
    assert safe_load(path).shape == (0, 4)


def test_python2_style_names_are_translated_but_code_stays_refused(tmp_path):
    # what Python 2 writes for a plain object rebuilt by copy_reg: allowed (it only builds `object`)
    ok = b"ccopy_reg\n_reconstructor\np0\n(c__builtin__\nobject\np1\ng1\nNtp2\nRp3\n."
    (tmp_path / "py2.pkl").write_bytes(ok)
    assert type(safe_load(tmp_path / "py2.pkl")) is object
    evil = {"eval.pkl": b"c__builtin__\neval\n(S'1+1'\ntR.", "getattr.pkl": b"c__builtin__\ngetattr\n(c__builtin__\nobject\nS'x'\ntR.",
            "system.pkl": b"cposix\nsystem\n(S'echo pwned'\ntR.", "import.pkl": b"c__builtin__\n__import__\n(S'os'\ntR.",
            "recon.pkl": b"ccopy_reg\n_reconstructor\n(cos\nsystem\nc__builtin__\nobject\nNtR."}
    for name, data in evil.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnsafePickleError, match=rf"{name}: refusing to unpickle global"):
            safe_load(tmp_path / name)
