"""The export check judges a config by the 3D-backbone table's `exportable` flag, so no alias slips through."""
import pytest

from pc3d.deploy.onnx_export import ExportError, check_exportable
from pc3d.models.backbones_3d import BACKBONES_3D

SPCONV = [spelling for name, entry in BACKBONES_3D.items() if entry.module == "spconv_resnet"
          for spelling in (name,) + entry.aliases]


def _cfg(kind):
    return {"model": {"backbone_3d": {"type": kind}}}


def test_spconv_has_the_known_spellings():
    # the one that used to pass the check (`sparse_resnet` was not in the export check's own list)
    assert {"spconv_resnet", "sparse_resnet", "SparseResNetBackbone", "VoxelResBackBone8x", "voxelresbackbone8x"} \
        <= set(SPCONV)


@pytest.mark.parametrize("kind", SPCONV + [s.upper() for s in SPCONV])
def test_every_spconv_alias_is_refused_with_the_reason(kind):
    with pytest.raises(ExportError) as err:
        check_exportable(_cfg(kind))
    message = str(err.value)
    assert f"cannot export backbone_3d type {kind!r}" in message
    assert "spconv" in message and "no ONNX" in message and "Export a config with" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", [spelling for entry in BACKBONES_3D.values() if entry.exportable
                                  for spelling in entry.aliases] + ["identity", "DSVT-P", "SST"])
def test_exportable_types_pass(kind):
    check_exportable(_cfg(kind))
    check_exportable({"model": {}})  # no backbone_3d: identity
