"""`dataset.class_map`: rename a dataset's object types to the config's class names, and refuse a config
class that matches nothing (it would be dropped from training and evaluation and score 0 silently)."""
from __future__ import annotations

from typing import Sequence

from pc3d.config import ConfigError


def resolve_class_map(class_names: Sequence[str], class_map: dict | None, known: Sequence[str],
                      dataset: str) -> dict[str, str]:
    """Dataset type name -> config class name, for the types that some config class takes.

    `class_map` (e.g. `{Car: Vehicle, Van: Vehicle}`) renames dataset types; a type not in it keeps its
    own name. `known` are the dataset's type names; `dataset` names the dataset in errors.
    """
    class_map = dict(class_map or {})
    unknown_keys = [k for k in class_map if k not in known]
    if unknown_keys:
        raise ConfigError(f"dataset.class_map: {unknown_keys} are not {dataset} object types; known: {list(known)}")
    stray = [v for v in class_map.values() if v not in class_names]
    if stray:
        raise ConfigError(f"dataset.class_map maps to {stray}, which are not in dataset.class_names {list(class_names)}")
    mapping = {k: class_map.get(k, k) for k in known}
    produced = set(mapping.values())
    missing = [c for c in class_names if c not in produced]
    if missing:
        example = next((k for k in known if k not in class_map), known[0] if known else "Type")
        raise ConfigError(
            f"dataset.class_names: {missing} match no {dataset} object type ({', '.join(known)}); map them with "
            f"dataset.class_map, e.g. --set 'dataset.class_map={{{example}: {missing[0]}}}'")
    return {k: v for k, v in mapping.items() if v in class_names}
