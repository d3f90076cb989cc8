"""Load OpenPCDet's CenterPoint modules from a checkout (`--ref-root`) on a CPU-only torch, for benchmarks.

Nothing of OpenPCDet is copied here: its files are imported from the given folder. Only what cannot run on
a CPU is replaced: the `pcdet.ops` CUDA extensions (rotated NMS -> pc3d's CPU NMS; unused ones -> empty
modules), `Tensor.cuda()` (-> identity), `SharedArray` (unused), and spconv's fused conv bias, which its CPU
kernels refuse (-> the same conv followed by the bias add). Package `__init__` files are skipped because they
import every model and its CUDA ops; the leaf modules load unchanged.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch

MODULES = ("models.backbones_3d.vfe.mean_vfe", "models.backbones_3d.spconv_backbone",
           "models.backbones_2d.map_to_bev.height_compression", "models.backbones_2d.base_bev_backbone",
           "models.dense_heads.center_head")


class EasyDict(dict):
    """Attribute access on a dict, recursively (what OpenPCDet's configs are)."""

    def __init__(self, d=None):
        super().__init__()
        for k, v in (d or {}).items():
            self[k] = EasyDict(v) if isinstance(v, dict) else [EasyDict(x) if isinstance(x, dict) else x for x in v] \
                if isinstance(v, list) else v

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as err:
            raise AttributeError(k) from err


def _cpu_nms(boxes, scores, thresh, pre_maxsize=None, **kwargs):
    from pc3d.ops import box_geometry
    order = scores.sort(0, descending=True)[1]
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    keep = torch.as_tensor(box_geometry.nms_rotated(boxes[order, :7], scores[order], float(thresh)), dtype=torch.long)
    return order[keep].contiguous(), None


def _patch_spconv_bias():
    import spconv.pytorch.conv as spc
    if getattr(spc.SparseConvolution, "_pc3d_bias_after_conv", False):
        return
    original = spc.SparseConvolution.forward

    def forward(self, input, add_input=None):
        if self.bias is None or input.features.is_cuda:
            return original(self, input, add_input)
        out = self._conv_forward(self.training, input, self.weight, None, add_input, name=self.name,
                                 sparse_unique_name=self._sparse_unique_name, act_type=self.act_type,
                                 act_alpha=self.act_alpha, act_beta=self.act_beta)
        return out.replace_feature(out.features + self.bias)
    spc.SparseConvolution.forward = forward
    spc.SparseConvolution._pc3d_bias_after_conv = True


def load_openpcdet(ref_root) -> dict:
    """`{leaf module name: module}` of OpenPCDet's CenterPoint modules from the checkout at `ref_root`."""
    root = Path(ref_root) / "pcdet"
    if not (root / "models" / "dense_heads" / "center_head.py").is_file():
        raise SystemExit(f"--ref-root {ref_root}: not an OpenPCDet checkout (no pcdet/models/dense_heads/center_head.py)")
    torch.Tensor.cuda = lambda self, *a, **k: self
    _patch_spconv_bias()

    def package(name, path=None):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)] if path else []
        sys.modules[name] = mod

    package("pcdet", root)
    version = types.ModuleType("pcdet.version")
    version.__version__ = "0"
    sys.modules["pcdet.version"] = version
    for sub in ("models", "models/backbones_3d", "models/backbones_3d/vfe", "models/backbones_2d",
                "models/backbones_2d/map_to_bev", "models/dense_heads", "models/model_utils", "utils", "ops",
                "ops/iou3d_nms", "ops/roiaware_pool3d"):
        package("pcdet." + sub.replace("/", "."), root / sub)
    nms = types.ModuleType("pcdet.ops.iou3d_nms.iou3d_nms_utils")
    nms.nms_gpu = nms.nms_normal_gpu = _cpu_nms
    sys.modules[nms.__name__] = nms
    sys.modules["pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils"] = types.ModuleType("roiaware_pool3d_utils")
    sys.modules.setdefault("SharedArray", types.ModuleType("SharedArray"))
    return {name.rsplit(".", 1)[-1]: importlib.import_module("pcdet." + name) for name in MODULES}
