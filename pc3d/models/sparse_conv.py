"""Which sparse-convolution library the spconv backbone is built on.

`spconv` (2.x) is the field's library: its CPU build runs pc3d's tests, its CUDA builds (`spconv-cu12x`) run on
GPUs it has wheels for. `spconv-triton` is a pure-Python drop-in with the same API and checkpoint layout, written
in Triton: it runs on any GPU that Triton supports (new GPUs with no spconv wheel, AMD), never on the CPU.

`PC3D_SPCONV=auto` (default) takes spconv when it is installed, else spconv-triton; `spconv` / `triton` force one.
"""
from __future__ import annotations

import os

CHOICES = ("auto", "spconv", "triton")


def _load():
    choice = os.environ.get("PC3D_SPCONV", "auto")
    if choice not in CHOICES:
        raise ValueError(f"PC3D_SPCONV must be one of {CHOICES}, got {choice!r}")
    if choice in ("auto", "spconv"):
        try:
            import spconv.pytorch as library

            import pc3d.models.spconv_cpu  # noqa: F401  (patches spconv's CPU backward on import)
            return library, "spconv"
        except ImportError as err:
            if choice == "spconv":
                raise ImportError(f"PC3D_SPCONV=spconv but spconv cannot be imported ({err})") from err
    try:
        import spconv_triton.pytorch as library
        return library, "spconv-triton"
    except ImportError as err:
        raise ImportError("the spconv backbone needs spconv (pip install spconv, or spconv-cu12x on a GPU) or, "
                          f"on a GPU, spconv-triton; neither can be imported ({err})") from err


spconv, BACKEND = _load()
