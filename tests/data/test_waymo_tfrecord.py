"""TFRecord reader/writer without TensorFlow: CRC-32C, framing, corruption errors, the real Waymo file."""
import struct
import zlib

import numpy as np
import pytest

from pc3d.io.tfrecord import (TFRecordError, TFRecordWriter, count_records, crc32c, encode_record, iter_tfrecord,
                              masked_crc32c, read_tfrecord, write_tfrecord)

VAL_TFRECORD = "waymo/waymo_format/validation/val.tfrecord"


def _crc32c_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32C (independent of the table kernel)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) test vectors
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(bytes([0xFF] * 32)) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0


@pytest.mark.parametrize("size", [1, 7, 8, 9, 63, 1000, 4099])
def test_crc32c_matches_bitwise_reference(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc32c_reference(data)
    assert crc32c(np.frombuffer(data, np.uint8)) == crc32c(data)
    # crc32c differs from zlib's crc32 (a different polynomial): guards against using the wrong one
    if size > 8:
        assert crc32c(data) != zlib.crc32(data)


def test_crc32c_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        crc32c(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="bytes-like"):
        crc32c("text")


def test_round_trip(tmp_path):
    records = [b"", b"a", bytes(range(256)) * 40, np.random.default_rng(0).bytes(100_003)]
    path = tmp_path / "x.tfrecord"
    assert write_tfrecord(path, records) == 4
    assert read_tfrecord(path) == records
    assert count_records(path) == 4
    # framing by hand: first record's length and both masked CRCs
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] == 0
    assert struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])
    assert struct.unpack("<I", raw[12:16])[0] == masked_crc32c(b"")


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "y.tfrecord"
    with pytest.raises(RuntimeError):
        with TFRecordWriter(path) as writer:
            writer.write(b"abc")
            raise RuntimeError("interrupted")
    assert not path.exists() and not list(tmp_path.iterdir())


def _two_records(tmp_path):
    path = tmp_path / "two.tfrecord"
    write_tfrecord(path, [b"first record", b"second record payload"])
    return path, bytearray(path.read_bytes())


def test_corrupt_data_crc_names_file_and_offset(tmp_path):
    path, raw = _two_records(tmp_path)
    second = len(encode_record(b"first record"))
    raw[second + 12 + 3] ^= 0x01          # flip a bit inside the second record's data
    bad = tmp_path / "bad_data.tfrecord"
    bad.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="data CRC mismatch") as info:
        read_tfrecord(bad)
    assert str(bad) in str(info.value)
    assert info.value.offset == second + 12
    assert f"byte offset {second + 12}" in str(info.value)
    # the first record is still delivered before the error
    it = iter_tfrecord(bad)
    assert next(it) == b"first record"
    # CRC checks can be disabled
    assert len(read_tfrecord(bad, check_crc=False)) == 2


def test_corrupt_length_crc(tmp_path):
    path, raw = _two_records(tmp_path)
    raw[8] ^= 0xFF
    bad = tmp_path / "bad_len.tfrecord"
    bad.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="length CRC mismatch") as info:
        read_tfrecord(bad)
    assert info.value.offset == 8 and str(bad) in str(info.value)


@pytest.mark.parametrize("cut", [3, 10, 20, 5])
def test_truncated_file(tmp_path, cut):
    path, raw = _two_records(tmp_path)
    bad = tmp_path / "trunc.tfrecord"
    bad.write_bytes(bytes(raw[:-cut]))
    with pytest.raises(TFRecordError, match="truncated") as info:
        read_tfrecord(bad)
    assert str(bad) in str(info.value)
    assert info.value.offset >= len(encode_record(b"first record"))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tfrecord"):
        read_tfrecord(tmp_path / "nope.tfrecord")


def test_real_waymo_tfrecord(shared_data, tmp_path):
    path = shared_data / VAL_TFRECORD
    records = read_tfrecord(path)
    assert len(records) == 1 and len(records[0]) == 8140
    # byte-identical re-encoding: our writer produces the same framing as TensorFlow's
    out = tmp_path / "copy.tfrecord"
    write_tfrecord(out, records)
    assert out.read_bytes() == path.read_bytes()
    # a corrupted copy (one flipped byte in the payload) is reported with the file and offset
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0x10
    bad = tmp_path / "val_corrupt.tfrecord"
    bad.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match=r"val_corrupt\.tfrecord: corrupt TFRecord at byte offset 12"):
        read_tfrecord(bad)
    truncated = tmp_path / "val_truncated.tfrecord"
    truncated.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(TFRecordError, match=r"val_truncated\.tfrecord: corrupt TFRecord at byte offset 12: truncated"):
        read_tfrecord(truncated)
