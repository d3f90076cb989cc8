"""Build a dataset from the `dataset:` block of a config."""
from __future__ import annotations

from pathlib import Path

from pc3d.config import ConfigError, require_keys

DATASET_KEYS = ("type", "root", "class_names", "point_features", "point_range", "train_split", "val_split",
                "max_frames", "sweeps", "intensity_max", "class_map", "balanced_resampling")


def build_dataset(cfg: dict, split: str, transform=None, root: str | None = None):
    """`cfg` is the config's `dataset:` block; `root` overrides `cfg['root']` (`--data-root`)."""
    require_keys(cfg, DATASET_KEYS, "dataset", required=("type", "root", "class_names", "point_features"))
    root = Path(root or cfg["root"]).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"dataset root {root} (dataset.root in the config, or --data-root) does not exist"
            + (" — generate it with: tools/create_data.py synthetic --out " + str(root) if cfg["type"] == "synthetic" else ""))
    kind = cfg["type"]
    if kind in ("synthetic", "waymo", "info"):
        from pc3d.data.info_dataset import InfoDataset
        return InfoDataset(root, split, cfg["class_names"], cfg["point_features"], transform, cfg.get("max_frames"),
                           class_map=cfg.get("class_map"), sweeps=cfg.get("sweeps") or 1)
    if kind == "kitti":
        from pc3d.data.kitti import KittiDataset
        return KittiDataset(root, split, cfg["class_names"], cfg["point_features"], transform,
                            class_map=cfg.get("class_map"))
    if kind in ("nuscenes", "lyft"):  # Lyft ships its tables in the nuScenes devkit's schema
        if cfg.get("class_map"):
            raise ConfigError(f"dataset.class_map is not supported for {kind} (its devkit maps categories to the "
                              "detection classes); leave it empty")
        from pc3d.data.nuscenes import NuScenesDataset
        return NuScenesDataset(root, split, cfg["class_names"], cfg["point_features"], transform,
                               sweeps=cfg.get("sweeps", 10))
    raise ConfigError(f"dataset.type: unknown dataset type {kind!r}; known: synthetic, waymo, kitti, nuscenes, lyft")
