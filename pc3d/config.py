"""YAML configs with `_base_` inheritance and `--set key.path=value` overrides.

A config is a plain nested dict after loading. Rules:
- `_base_: path` or `_base_: [a, b]` (relative to the file) are loaded first, in order; the file's own
  keys are merged on top, dicts recursively, everything else replaced. `_delete_: true` inside a dict
  replaces the inherited dict instead of merging.
- Top-level sections are fixed (`TOP_LEVEL_KEYS`); an unknown one is an error naming the file.
- An override must name a key that exists (unless the parent dict is declared open with
  `_open_: true`), and its value must have the type of the value it replaces (int -> float is allowed).
- Every error names the key and the file it came from.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

# every section something reads: dataset / model / train / eval by the tools, name / description by people
TOP_LEVEL_KEYS = ("dataset", "model", "train", "eval", "name", "description")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the file."""


def load_config(path, overrides: Iterable[str] = (), defaults=None) -> dict:
    """Load `path` with its bases, apply `key.path=value` overrides, validate the top level.

    `defaults(cfg)`, when given, fills in keys a consumer reads at their default values before the overrides
    are applied, so that those keys can be overridden too (`tools/train.py` does this for `train:`)."""
    path = Path(path)
    cfg = _load_with_bases(path, chain=())
    if not cfg:
        raise ConfigError(f"{path}: the config is empty (no sections; expected some of {list(TOP_LEVEL_KEYS)})")
    unknown = [k for k in cfg if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")
    cfg["_source_"] = str(path)
    if defaults is not None:
        defaults(cfg)
    for item in overrides:
        apply_override(cfg, item, source=str(path))
    return cfg


def _load_with_bases(path: Path, chain: tuple) -> dict:
    where = f" (included from {chain[-1]})" if chain else ""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected a YAML config file{where}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in chain:
        raise ConfigError(f"{path}: circular _base_ chain {[str(p) for p in chain + (resolved,)]}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason}); is it a YAML config?") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        merged = merge(merged, _load_with_bases(path.parent / base, chain + (resolved,)))
    return merge(merged, data)


def merge(base: dict, update: dict) -> dict:
    """Recursive merge: dicts merge key by key (unless `_delete_: true`), other values replace."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and value.get("_delete_"):
            out[key] = {k: v for k, v in copy.deepcopy(value).items() if k != "_delete_"}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(cfg: dict, item: str, source: str = "<config>") -> None:
    """Apply `a.b.c=value` (value parsed as YAML) in place, refusing unknown keys and type changes."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {dotted}: cannot parse value {raw!r}: {err}") from err
    node = cfg
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{'.'.join(keys[:depth])}' is not a section in {source}")
        if key not in node:
            if last and node.get("_open_"):
                node[key] = value
                return
            hint = difflib.get_close_matches(key, [k for k in node if not k.startswith("_")], n=1)
            raise ConfigError(
                f"override {dotted}: key '{'.'.join(keys[:depth + 1])}' does not exist in {source}"
                + (f"; did you mean '{hint[0]}'?" if hint else ""))
        if last:
            node[key] = _checked_type(node[key], value, dotted, source)
        else:
            node = node[key]


def _checked_type(old: Any, new: Any, key: str, source: str) -> Any:
    if old is None or new is None:
        return new
    if isinstance(old, bool) != isinstance(new, bool):
        raise ConfigError(f"override {key}: expected {type(old).__name__}, got {new!r} ({source})")
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(new)
    if type(old) is not type(new):
        raise ConfigError(f"override {key}: expected {type(old).__name__}, got {type(new).__name__} {new!r} ({source})")
    return new


def require_keys(section: dict, allowed: Iterable[str], where: str, required: Iterable[str] = ()) -> None:
    """Check a config section's keys: unknown or missing keys are a `ConfigError` naming `where`."""
    allowed = set(allowed)
    unknown = sorted(k for k in section if k not in allowed and not k.startswith("_"))
    if unknown:
        hints = {k: difflib.get_close_matches(k, sorted(allowed), n=1) for k in unknown}
        hint_text = "; ".join(f"'{k}' -> did you mean '{h[0]}'?" for k, h in hints.items() if h)
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}" + (f" ({hint_text})" if hint_text else ""))
    missing = [k for k in required if k not in section]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")


def require_sections(cfg: dict, names: Iterable[str]) -> dict:
    """`cfg` when it has every top-level section in `names` (as mappings); else a `ConfigError` naming the file."""
    for name in names:
        if not isinstance(cfg.get(name), dict):
            raise ConfigError(f"{cfg.get('_source_', 'config')}: has no '{name}' section"
                              + (f" (got {type(cfg[name]).__name__})" if name in cfg else ""))
    return cfg


def dump_config(cfg: dict, path) -> None:
    """Write the config actually used (after bases and overrides) as YAML, atomically."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "_source_"}, sort_keys=False))
    os.replace(tmp, path)
