"""`pc3d.models.backbones_3d.BACKBONES_3D` is the one table of the 3D-backbone stage: every type name and
every alias in it builds through the detector builder, and the export check reads its `exportable` flag."""
from pathlib import Path

import pytest

from pc3d.config import load_config
from pc3d.models.backbones_3d import BACKBONES_3D, backbone_3d_entry, canonical_backbone_3d
from pc3d.models.build import build_model
from pc3d.testing.configs import tiny_widths

REPO = Path(__file__).resolve().parents[2]
# a published tiny config per backbone module, whose backbone_3d options fit every type of that module
CONFIG_OF_MODULE = {"identity": "pointpillars_tiny", "dsvt": "dsvt_pillar_tiny", "flatformer": "flatformer_tiny",
                    "scatterformer": "scatterformer_tiny", "sst": "sst_tiny", "spconv_resnet": "centerpoint_voxel_tiny"}
SPELLINGS = [(name, spelling) for name, entry in BACKBONES_3D.items() for spelling in (name,) + entry.aliases]


def test_every_module_has_a_config_and_aliases_are_unique():
    assert {entry.module for entry in BACKBONES_3D.values()} == set(CONFIG_OF_MODULE)
    aliases = [alias for entry in BACKBONES_3D.values() for alias in entry.aliases]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & set(BACKBONES_3D)
    for name, spelling in SPELLINGS:
        assert canonical_backbone_3d(spelling) == name
        assert canonical_backbone_3d(spelling.upper().replace("_", "-")) == name
    assert canonical_backbone_3d("no_such_net") is None
    with pytest.raises(ValueError, match="unknown type 'no_such_net'.*sparse_resnet"):
        backbone_3d_entry("no_such_net")


@pytest.mark.parametrize("name, spelling", SPELLINGS)
def test_every_table_entry_builds(name, spelling):
    entry = BACKBONES_3D[name]
    cfg = tiny_widths(load_config(REPO / "configs" / "synthetic" / f"{CONFIG_OF_MODULE[entry.module]}.yaml", []))
    cfg["model"]["backbone_3d"]["type"] = spelling
    model = build_model(cfg)
    assert type(model.backbone_3d) is entry.load()
    assert type(model.backbone_3d).__name__ == entry.class_name
