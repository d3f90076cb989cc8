"""Make spconv 2.3.x usable for training on a CPU-only torch build.

spconv's backward kernels (e.g. `indice_conv_backward`, `implicit_gemm_backward`) call
`get_current_stream()` unconditionally, which evaluates `torch.cuda.current_stream()` and raises
"Torch not compiled with CUDA enabled" on a CPU-only torch, although the CPU kernels ignore the
stream. `spconv.pytorch.ops` imports the function by name from `spconv.pytorch.cppcore`, so the
name has to be replaced in the `ops` module namespace (patching `cppcore` would not reach it).

Importing this module applies the patch once (idempotent) and only when CUDA is unavailable.
"""
from __future__ import annotations

import torch

_PATCHED_ATTR = "_pc3d_cpu_stream_patch"


def _cpu_stream() -> int:
    # CPU kernels accept any stream handle; 0 is the null stream.
    return 0


def apply_spconv_cpu_patch() -> bool:
    """Replace `spconv.pytorch.ops.get_current_stream` when CUDA is unavailable.

    Returns True when the patch is (already) active, False when not needed or spconv is missing.
    """
    if torch.cuda.is_available():
        return False
    try:
        import spconv.pytorch.ops as spconv_ops
    except ImportError:
        return False
    if getattr(spconv_ops, _PATCHED_ATTR, False):
        return True
    spconv_ops.get_current_stream = _cpu_stream
    setattr(spconv_ops, _PATCHED_ATTR, True)
    return True


SPCONV_CPU_PATCHED = apply_spconv_cpu_patch()
