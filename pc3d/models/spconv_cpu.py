"""Make spconv 2.3.x usable for training on a CPU-only torch build.

spconv's backward kernels (e.g. `indice_conv_backward`, `implicit_gemm_backward`) call
`get_current_stream()` unconditionally, which evaluates `torch.cuda.current_stream()` and raises
"Torch not compiled with CUDA enabled" on a CPU-only torch, although the CPU kernels ignore the
stream. `spconv.pytorch.ops` imports the function by name from `spconv.pytorch.cppcore`, so the
name has to be replaced in the `ops` module namespace (patching `cppcore` would not reach it).

Importing this module applies the patch once (idempotent) and only when CUDA is unavailable.
"""
from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def one_thread(device: torch.device):
    """Run spconv on the CPU with one intra-op thread, restoring the caller's count afterwards.

    spconv 2.3.8's CPU kernels give wrong, non-deterministic results with more than one thread (checked
    against a brute-force convolution), so pc3d never runs them multi-threaded; on CUDA this is a no-op.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bias_after_conv(conv_cls):
    """A spconv conv class whose bias is added after the convolution when the features are on the CPU.

    spconv 2.3.x's CPU kernels cannot fuse a bias (they assert "cpu don't support act and bias"), while
    OpenPCDet's `VoxelResBackBone8x` residual blocks have biased SubM convs; on CUDA the fused path is used.
    """
    class BiasAfterConv(conv_cls):
        def forward(self, input, add_input=None):
            if self.bias is None or input.features.is_cuda:
                return super().forward(input, add_input)
            out = self._conv_forward(self.training, input, self.weight, None, add_input, name=self.name,
                                     sparse_unique_name=self._sparse_unique_name, act_type=self.act_type,
                                     act_alpha=self.act_alpha, act_beta=self.act_beta)
            return out.replace_feature(out.features + self.bias)

    BiasAfterConv.__name__ = BiasAfterConv.__qualname__ = f"{conv_cls.__name__}BiasAfterConv"
    return BiasAfterConv


try:
    import spconv.pytorch as _spconv

    SubMConv3d = _bias_after_conv(_spconv.SubMConv3d)
except ImportError:  # spconv is optional; only the spconv backbone needs it
    SubMConv3d = None
