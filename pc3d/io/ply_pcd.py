""".ply and .pcd point files: header parsed here, vertex data read with numpy, sizes checked.

Why not Open3D alone: on a truncated binary PLY, Open3D prints "Read PLY failed" and still returns every
declared row, a third of them uninitialised memory (inf, ~1e-26); it also drops intensity. Reading the
header ourselves lets us check the declared point count against the bytes (or lines) present and keep an
intensity column. PLY elements with list properties (faces before the vertices, rarely lists inside the
vertex rows) are walked row by row. Only PCD `binary_compressed` (LZF) goes through Open3D, after the
compressed block's size is checked against the file, and with the declared count checked after.

Both readers return `float32 (N, 3)` x, y, z, or `(N, 4)` with intensity when the file has a property /
field named intensity (also `scalar_intensity`, `reflectance`, `remission`, `i`). Every error names the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INTENSITY_NAMES = ("intensity", "scalar_intensity", "reflectance", "remission", "i")

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _columns(path: Path, names: list[str], get) -> np.ndarray:
    """Stack x, y, z (+ intensity) from a record source `get(name)`; missing x/y/z is an error."""
    lower = [n.lower() for n in names]
    missing = [c for c in "xyz" if c not in lower]
    if missing:
        raise ValueError(f"{path}: has no {', '.join(missing)} field (fields: {names})")
    cols = [get(names[lower.index(c)]) for c in "xyz"]
    intensity = next((names[lower.index(n)] for n in INTENSITY_NAMES if n in lower), None)
    if intensity is not None:
        cols.append(get(intensity))
    return np.stack([np.asarray(c, dtype=np.float32).reshape(-1) for c in cols], axis=1)


def _split_header(path: Path, data: bytes, end_marker: bytes, max_len: int = 1 << 16) -> tuple[list[str], int]:
    """Header lines (decoded) and the offset of the first data byte after the line holding `end_marker`."""
    at = data.find(end_marker, 0, max_len)
    if at < 0:
        raise ValueError(f"{path}: no {end_marker.decode().strip()!r} line in the first {max_len} bytes (not a valid "
                         f"{path.suffix} file, or a truncated header)")
    eol = data.find(b"\n", at + len(end_marker))
    start = len(data) if eol < 0 else eol + 1
    try:
        text = data[:start].decode("ascii")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: header is not ASCII ({err})") from err
    return [line.strip() for line in text.splitlines() if line.strip()], start


# ------------------------------------------------------------------------------------------------ PLY
def read_ply(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if not data.startswith(b"ply"):
        raise ValueError(f"{path}: not a PLY file (does not start with 'ply')")
    lines, start = _split_header(path, data, b"end_header")
    fmt, elements = None, []  # elements: [name, count, [(prop name, dtype, or (count dtype, item dtype) of a list)]]
    for line in lines[1:]:
        words = line.split()
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            try:
                elements.append([words[1], int(words[2]), []])
            except ValueError as err:
                raise ValueError(f"{path}: bad PLY header line {line!r}") from err
        elif words[0] == "property" and elements:
            if len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                elements[-1][2].append((words[4], (_PLY_TYPES[words[2]], _PLY_TYPES[words[3]])))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ValueError(f"{path}: unsupported PLY property {line!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unknown PLY format {fmt!r}")
    index = next((k for k, e in enumerate(elements) if e[0] == "vertex"), None)
    if index is None:
        raise ValueError(f"{path}: PLY header declares no 'element vertex'")
    _, count, props = elements[index]
    if count < 0 or any(e[1] < 0 for e in elements):
        raise ValueError(f"{path}: negative element count in the PLY header")
    before = elements[:index]
    names = [n for n, t in props if isinstance(t, str)]
    if fmt == "ascii":
        return _ply_ascii(path, data[start:], sum(e[1] for e in before), count, props)
    order = "<" if fmt == "binary_little_endian" else ">"
    offset = start
    for _, n_rows, element_props in before:
        offset = _skip_binary(path, data, offset, n_rows, element_props, order)
    if any(not isinstance(t, str) for _, t in props):
        # a list inside the vertex element: variable-size rows, walked one by one (rare in point files)
        table, _ = _walk_binary(path, data, offset, count, props, order)
        return _columns(path, names, lambda n: table[:, names.index(n)])
    dtype = np.dtype([(n, order + t) for n, t in props])
    need = offset + count * dtype.itemsize
    if len(data) < need:
        have = max(0, (len(data) - offset) // dtype.itemsize)
        raise ValueError(f"{path}: truncated PLY: the header declares {count} vertices ({need} bytes with the header) "
                         f"but the file has {len(data)} bytes (about {have} whole vertices)")
    rows = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return _columns(path, names, lambda n: rows[n])


def _truncated_ply(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: truncated PLY: the file ends inside {what} the header declares")


def _skip_binary(path: Path, data: bytes, offset: int, n_rows: int, props, order: str) -> int:
    """Offset just past `n_rows` binary rows of an element that precedes the vertices (e.g. faces)."""
    if all(isinstance(t, str) for _, t in props):
        offset += n_rows * np.dtype([(n, order + t) for n, t in props]).itemsize
        if offset > len(data):
            raise _truncated_ply(path, "an element before the vertices")
        return offset
    return _walk_binary(path, data, offset, n_rows, props, order, keep=False)[1]


def _walk_binary(path: Path, data: bytes, offset: int, n_rows: int, props, order: str, keep: bool = True):
    """Walk rows with list properties: (the scalar properties of every row as a float64 table, or None;
    the offset just past the last row)."""
    import struct

    codes = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "f4": "f", "f8": "d"}
    prefix = order
    table = np.empty((n_rows if keep else 0, sum(isinstance(t, str) for _, t in props)))
    pos = offset
    try:
        for r in range(n_rows):
            col = 0
            for _, t in props:
                if isinstance(t, str):
                    value = struct.unpack_from(prefix + codes[t], data, pos)[0]
                    pos += struct.calcsize(codes[t])
                    if keep:
                        table[r, col] = value
                    col += 1
                else:
                    n = struct.unpack_from(prefix + codes[t[0]], data, pos)[0]
                    pos += struct.calcsize(codes[t[0]]) + n * struct.calcsize(codes[t[1]])
                    if pos > len(data):
                        raise struct.error("list past the end")
    except struct.error as err:
        raise _truncated_ply(path, f"row {r} of {n_rows} of an element") from err
    return (table if keep else None), pos


def _ply_ascii(path: Path, body: bytes, skip: int, count: int, props) -> np.ndarray:
    lines = [line for line in body.decode("ascii", errors="replace").splitlines() if line.strip()]
    rows = lines[skip:skip + count]
    if len(rows) < count:
        raise ValueError(f"{path}: truncated PLY: the header declares {count} vertices but only {len(rows)} rows follow")
    names = [n for n, t in props if isinstance(t, str)]
    try:
        if all(isinstance(t, str) for _, t in props):
            table = np.array([row.split()[:len(names)] for row in rows], dtype=np.float64)
        else:  # lists inside the vertex rows: walk the tokens
            table = np.array([_ascii_scalars(row.split(), props) for row in rows], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: a PLY vertex row does not hold the {len(props)} properties of the header ({err})") from err
    if table.ndim != 2 or table.shape[1] != len(names):
        raise ValueError(f"{path}: PLY vertex rows should have {len(names)} values")
    return _columns(path, names, lambda n: table[:, names.index(n)])


def _ascii_scalars(tokens: list[str], props) -> list[str]:
    out, k = [], 0
    for _, t in props:
        if isinstance(t, str):
            out.append(tokens[k])
            k += 1
        else:
            k += 1 + int(tokens[k])
    if k > len(tokens):
        raise IndexError("row shorter than its list lengths")
    return out


# ------------------------------------------------------------------------------------------------ PCD
_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8",
              ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8"}


def read_pcd(path: Path) -> np.ndarray:
    data = path.read_bytes()
    lines, start = _split_header(path, data, b"\nDATA ")
    head = {}
    for line in lines:
        if line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        head[key.upper()] = rest.split()
    try:
        fields = head["FIELDS"]
        sizes = [int(s) for s in head["SIZE"]]
        types = head["TYPE"]
        counts = [int(c) for c in head.get("COUNT", ["1"] * len(fields))]
        points = int(head["POINTS"][0]) if "POINTS" in head else int(head["WIDTH"][0]) * int(head.get("HEIGHT", ["1"])[0])
        kind = head["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"{path}: incomplete PCD header (need FIELDS, SIZE, TYPE, POINTS/WIDTH, DATA): {err}") from err
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise ValueError(f"{path}: PCD header FIELDS / SIZE / TYPE / COUNT lengths differ")
    try:
        parts = [(f"{f}#{k}", _PCD_TYPES[(t.upper(), s)], c) for k, (f, s, t, c) in enumerate(zip(fields, sizes, types, counts))]
    except KeyError as err:
        raise ValueError(f"{path}: unsupported PCD field type/size {err}") from err
    unique = [p[0] for p in parts]  # PCD allows repeated field names ("_" padding); make them unique
    if kind == "ascii":
        rows = [line for line in data[start:].decode("ascii", errors="replace").splitlines() if line.strip()]
        if len(rows) < points:
            raise ValueError(f"{path}: truncated PCD: the header declares {points} points but only {len(rows)} rows follow")
        width = sum(counts)
        try:
            table = np.array([row.split()[:width] for row in rows[:points]], dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{path}: a PCD row is not {width} numbers ({err})") from err
        offsets = np.cumsum([0] + counts[:-1])
        return _columns(path, fields, lambda n: table[:, offsets[fields.index(n)]])
    if kind == "binary":
        dtype = np.dtype([(u, "<" + t, (c,)) if c > 1 else (u, "<" + t) for u, t, c in parts])
        need = start + points * dtype.itemsize
        if len(data) < need:
            raise ValueError(f"{path}: truncated PCD: the header declares {points} points ({need} bytes with the header) "
                             f"but the file has {len(data)} bytes")
        rows = np.frombuffer(data, dtype=dtype, count=points, offset=start)
        return _columns(path, fields, lambda n: _first(rows[unique[fields.index(n)]]))
    if kind == "binary_compressed":
        if len(data) < start + 8:
            raise ValueError(f"{path}: truncated PCD: no compressed block after the header")
        compressed = int.from_bytes(data[start:start + 4], "little")
        if len(data) < start + 8 + compressed:
            raise ValueError(f"{path}: truncated PCD: the compressed block needs {compressed} bytes, "
                             f"{len(data) - start - 8} present")
        return _open3d_checked(path, points)
    raise ValueError(f"{path}: unknown PCD DATA kind {kind!r} (ascii, binary, binary_compressed)")


def _first(column: np.ndarray) -> np.ndarray:
    return column[:, 0] if column.ndim == 2 else column


def _open3d_checked(path: Path, declared: int) -> np.ndarray:
    """Open3D's tensor reader (keeps intensity), refusing a point count other than the declared one."""
    import open3d as o3d  # heavy; only for the layouts read_ply / read_pcd cannot address with numpy

    cloud = o3d.t.io.read_point_cloud(str(path))
    attrs = {name: cloud.point[name].numpy() for name in ("positions", *INTENSITY_NAMES) if name in cloud.point}
    xyz = attrs.get("positions", np.zeros((0, 3)))
    if len(xyz) != declared:
        raise ValueError(f"{path}: Open3D read {len(xyz)} points but the header declares {declared} (corrupt or truncated)")
    cols = [xyz.reshape(-1, 3)]
    intensity = next((attrs[n] for n in INTENSITY_NAMES if n in attrs), None)
    if intensity is not None:
        cols.append(intensity.reshape(len(xyz), -1)[:, :1])
    return np.concatenate(cols, axis=1).astype(np.float32)
