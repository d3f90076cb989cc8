import pytest

from pc3d.config import ConfigError, apply_override, load_config, require_keys


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def cfg_dir(tmp_path):
    write(tmp_path / "base.yaml", "dataset: {type: synthetic, class_names: [Vehicle, Pedestrian]}\n"
                                  "model:\n  backbone: {type: dsvt, depth: 2, dims: [32, 32], drop: 0.1}\n")
    write(tmp_path / "child.yaml", "_base_: base.yaml\nmodel:\n  backbone: {depth: 4}\n  head: {type: centerpoint}\n")
    return tmp_path


def test_base_inheritance_merges_recursively(cfg_dir):
    cfg = load_config(cfg_dir / "child.yaml")
    assert cfg["model"]["backbone"] == {"type": "dsvt", "depth": 4, "dims": [32, 32], "drop": 0.1}
    assert cfg["model"]["head"] == {"type": "centerpoint"}
    assert cfg["dataset"]["class_names"] == ["Vehicle", "Pedestrian"]


def test_delete_replaces_inherited_dict(cfg_dir):
    write(cfg_dir / "repl.yaml", "_base_: base.yaml\nmodel:\n  backbone: {_delete_: true, type: flat}\n")
    assert load_config(cfg_dir / "repl.yaml")["model"]["backbone"] == {"type": "flat"}


def test_overrides_are_typed(cfg_dir):
    cfg = load_config(cfg_dir / "child.yaml", ["model.backbone.depth=6", "model.backbone.drop=0", "model.backbone.dims=[8, 8]"])
    assert cfg["model"]["backbone"]["depth"] == 6
    assert cfg["model"]["backbone"]["drop"] == 0.0 and isinstance(cfg["model"]["backbone"]["drop"], float)
    assert cfg["model"]["backbone"]["dims"] == [8, 8]


def test_unknown_override_key_names_key_and_file(cfg_dir):
    with pytest.raises(ConfigError, match=r"model\.backbone\.dpth.*child\.yaml.*did you mean 'depth'"):
        load_config(cfg_dir / "child.yaml", ["model.backbone.dpth=3"])


def test_wrong_override_type(cfg_dir):
    with pytest.raises(ConfigError, match="expected int"):
        load_config(cfg_dir / "child.yaml", ["model.backbone.depth=deep"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "model.depth")


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path / "a.yaml", "_base_: missing_base.yaml\n")
    with pytest.raises(ConfigError, match=r"missing_base\.yaml.*included from"):
        load_config(tmp_path / "a.yaml")


def test_unknown_top_level_key_and_bad_yaml(tmp_path):
    write(tmp_path / "a.yaml", "modle: {}\n")
    with pytest.raises(ConfigError, match="unknown top-level key.*modle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "b.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "b.yaml")


def test_sections_nothing_reads_are_rejected(tmp_path):
    """`registration:` and `export:` were accepted but read by nothing: a setting there would be silently ignored."""
    for key in ("registration", "export"):
        write(tmp_path / f"{key}.yaml", f"model: {{type: x}}\n{key}: {{opset: 17}}\n")
        with pytest.raises(ConfigError, match=f"unknown top-level key.*'{key}'"):
            load_config(tmp_path / f"{key}.yaml")


def test_every_shipped_config_loads():
    """Every config under configs/ passes the top-level check (fpfh_ransac.yaml used to be rejected)."""
    from pathlib import Path
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))
    assert any(p.name == "fpfh_ransac.yaml" for p in configs)
    for path in configs:
        if "_base_" not in path.parts:
            assert isinstance(load_config(path)["model"], dict), path


def test_circular_base(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_require_keys():
    require_keys({"type": 1, "dim": 2}, ["type", "dim", "depth"], "model.backbone", required=["type"])
    with pytest.raises(ConfigError, match=r"model\.backbone: unknown key.*'dimm' -> did you mean 'dim'"):
        require_keys({"dimm": 2}, ["type", "dim"], "model.backbone")
    with pytest.raises(ConfigError, match="missing required"):
        require_keys({}, ["type"], "model.backbone", required=["type"])
