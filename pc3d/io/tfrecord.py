"""TFRecord files without TensorFlow: reader (both CRCs checked) and writer.

Framing of one record (all little-endian):

    uint64 length
    uint32 masked_crc32c(length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

`masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 (mod 2**32)` with CRC-32C (Castagnoli).
CRC-32C runs in a numba slicing-by-8 kernel (~1 GB/s): a Waymo segment is 100-1000 MB, so a per-byte
Python loop (~5 MB/s) is not an option. `google-crc32c` is used instead when it is installed.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numba
import numpy as np

_CRC32C_POLY_REFLECTED = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class TFRecordError(ValueError):
    """A corrupt or truncated TFRecord; the message names the file and the byte offset."""

    def __init__(self, path, offset: int, problem: str):
        self.path = str(path)
        self.offset = int(offset)
        super().__init__(f"{self.path}: corrupt TFRecord at byte offset {self.offset}: {problem}")


def _make_tables() -> np.ndarray:
    """(8, 256) uint32 slicing-by-8 tables for the reflected CRC-32C polynomial."""
    tables = np.zeros((8, 256), dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLY_REFLECTED if crc & 1 else 0)
        tables[0, byte] = crc
    for k in range(1, 8):
        prev = tables[k - 1]
        tables[k] = (prev >> 8) ^ tables[0][prev & 0xFF]
    return tables


_TABLES = _make_tables()


@numba.njit(cache=True, nogil=True)
def _crc32c_kernel(data, crc, tables):
    # Slicing-by-8: eight table lookups per 8 input bytes instead of one per byte.
    crc = crc ^ np.uint32(0xFFFFFFFF)
    n = data.shape[0]
    i = 0
    while i + 8 <= n:
        lo = crc ^ (np.uint32(data[i]) | (np.uint32(data[i + 1]) << np.uint32(8))
                    | (np.uint32(data[i + 2]) << np.uint32(16)) | (np.uint32(data[i + 3]) << np.uint32(24)))
        crc = (tables[7, lo & np.uint32(0xFF)] ^ tables[6, (lo >> np.uint32(8)) & np.uint32(0xFF)]
               ^ tables[5, (lo >> np.uint32(16)) & np.uint32(0xFF)] ^ tables[4, lo >> np.uint32(24)]
               ^ tables[3, data[i + 4]] ^ tables[2, data[i + 5]] ^ tables[1, data[i + 6]] ^ tables[0, data[i + 7]])
        i += 8
    while i < n:
        crc = tables[0, (crc ^ np.uint32(data[i])) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
        i += 1
    return crc ^ np.uint32(0xFFFFFFFF)


try:  # optional C implementation; same results, slightly faster
    import google_crc32c as _google_crc32c  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    _google_crc32c = None


def crc32c(data, initial: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data` (bytes, bytearray, memoryview or a uint8 array)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"crc32c: data must be uint8, got {data.dtype}")
        array = np.ascontiguousarray(data.reshape(-1))
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if _google_crc32c is not None and initial == 0:
            return int(_google_crc32c.value(bytes(data)))
        array = np.frombuffer(data, dtype=np.uint8)
    else:
        raise TypeError(f"crc32c: data must be bytes-like or a uint8 array, got {type(data).__name__}")
    return int(_crc32c_kernel(array, np.uint32(initial), _TABLES))


def masked_crc32c(data) -> int:
    """The masked CRC-32C TFRecord stores (robust to CRCs of CRC-carrying data)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _read_exact(stream: BinaryIO, size: int, path, offset: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TFRecordError(path, offset, f"truncated {what}: expected {size} bytes, file has {len(data)} left")
    return data


def iter_tfrecord(path, check_crc: bool = True) -> Iterator[bytes]:
    """Yield the payload of every record of a TFRecord file, in order.

    Raises `TFRecordError` (a `ValueError`) naming the file and the byte offset of the bad field
    when a length or data CRC does not match or the file ends inside a record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFRecord file not found: {path}")
    file_size = path.stat().st_size
    with open(path, "rb") as stream:
        offset = 0
        while True:
            header = stream.read(_HEADER.size)
            if not header:
                return
            if len(header) != _HEADER.size:
                raise TFRecordError(path, offset, f"truncated length field ({len(header)} of 8 bytes)")
            (length,) = _HEADER.unpack(header)
            (length_crc,) = _CRC.unpack(_read_exact(stream, 4, path, offset + 8, "length CRC"))
            if check_crc and masked_crc32c(header) != length_crc:
                raise TFRecordError(path, offset + 8, "length CRC mismatch (the length field is corrupt)")
            data_offset = offset + 12
            if data_offset + length + 4 > file_size:
                raise TFRecordError(path, data_offset,
                                    f"truncated record: length says {length} data bytes + 4 CRC bytes, "
                                    f"file has {file_size - data_offset} left")
            data = _read_exact(stream, length, path, data_offset, "record data")
            (data_crc,) = _CRC.unpack(_read_exact(stream, 4, path, data_offset + length, "data CRC"))
            if check_crc and masked_crc32c(data) != data_crc:
                raise TFRecordError(path, data_offset, f"data CRC mismatch in a record of {length} bytes")
            yield data
            offset = data_offset + length + 4


def read_tfrecord(path, check_crc: bool = True) -> list[bytes]:
    """All record payloads of a TFRecord file (see `iter_tfrecord`)."""
    return list(iter_tfrecord(path, check_crc=check_crc))


def count_records(path, check_crc: bool = False) -> int:
    """Number of records (CRCs skipped by default: only the framing is read)."""
    return sum(1 for _ in iter_tfrecord(path, check_crc=check_crc))


def encode_record(data: bytes) -> bytes:
    """One framed record (length, its masked CRC, data, the data's masked CRC)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"TFRecord data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    header = _HEADER.pack(len(data))
    return header + _CRC.pack(masked_crc32c(header)) + data + _CRC.pack(masked_crc32c(data))


class TFRecordWriter:
    """Write records to `path` (context manager). The file appears only when closed without error:
    records go to `<path>.tmp` which is renamed over `path` in `close()`."""

    def __init__(self, path):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._stream = open(self._tmp, "wb")
        self.num_records = 0

    def write(self, data: bytes) -> None:
        self._stream.write(encode_record(data))
        self.num_records += 1

    def close(self) -> None:
        if self._stream is None:
            return
        self._stream.close()
        self._stream = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._stream is None:
            return
        self._stream.close()
        self._stream = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_tfrecord(path, records: Iterable[bytes]) -> int:
    """Write all `records` to a TFRecord file; returns the number written."""
    with TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
        return writer.num_records
