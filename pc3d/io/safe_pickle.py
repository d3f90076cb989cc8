"""Restricted unpickling for `.pkl` info files and legacy `.pth` point arrays from other toolkits.

Pickle runs code on load: a file from the internet may import anything. Only the globals that plain
numpy arrays and scalars need are allowed; anything else is refused with an error naming the file
and the global it asked for.

Protocols 0-2 (and Python 2 pickles) name builtins `__builtin__.*` and copyreg `copy_reg.*`; those
names are translated to their Python 3 modules (as `pickle` itself does) before the allow-list check,
so that e.g. a protocol-2 pickle of an empty numpy array (`__builtin__.bytes`) loads. The extra
allowed callables are constructors of plain values (`bytes`, `str`, `int`, `float`, `bool`, `object`)
and `copyreg._reconstructor`, which only instantiates classes that themselves passed this check.
Never allowed: anything that runs, imports or looks up code (`os.*`, `eval`, `getattr`, `__import__`, ...).
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
from pathlib import Path

_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    # plain-value constructors and the protocol-0/1/2 object rebuild helper (see the module docstring)
    ("builtins", "bytes"), ("builtins", "str"), ("builtins", "int"), ("builtins", "float"), ("builtins", "bool"),
    ("builtins", "object"), ("copyreg", "_reconstructor"),
}


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global outside the numpy/builtins allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        # Python 2 / protocol < 3 names -> Python 3 names, as pickle's own fix_imports does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED or (module.startswith("numpy") and name.startswith("dtype")):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to unpickle global '{module}.{name}' (only numpy arrays and Python "
            f"builtins are allowed; convert the file to plain numpy/JSON first if you trust it)")


def safe_loads(data: bytes, source: str = "<bytes>"):
    return _RestrictedUnpickler(io.BytesIO(data), source).load()


def safe_load(path) -> object:
    """Load a pickle (or a legacy `torch.save` stream of numpy data) allowing only numpy/builtins.

    Legacy `.pth` files written by old `torch.save` are several pickles back to back (magic number,
    protocol, system info, the object, then the list of tensor storage keys); the object is returned.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    data = path.read_bytes()
    if data[:2] == b"PK":
        raise ValueError(f"{path}: is a zip-format torch checkpoint, not a plain pickle; load it with torch.load(weights_only=True)")
    stream = io.BytesIO(data)
    objects = []
    try:
        while stream.tell() < len(data):
            objects.append(_RestrictedUnpickler(stream, str(path)).load())
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as err:
        if not objects:
            raise ValueError(f"{path}: not a readable pickle ({err})") from err
    if not objects:
        raise ValueError(f"{path}: empty pickle file")
    if len(objects) >= 4 and objects[0] == _TORCH_LEGACY_MAGIC:
        if objects[4:] and objects[4]:
            raise ValueError(f"{path}: legacy torch file holds torch tensors, not numpy arrays; use torch.load")
        return objects[3]
    return objects[0]
