"""Colour themes and point / box colouring shared by every renderer in `pc3d.viz`.

Design rule: point colours come from a low-saturation ramp (slate -> ice white on the dark theme,
grey -> ink on the white theme) and box colours are saturated, so boxes stay readable on top of
dense scans and a test can tell box pixels from point pixels by colour alone. Colours are float
RGB in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOR_BY_CHOICES = ("height", "intensity", "label")

# Saturated, colour-blind-friendly-ish palette for predicted classes (Okabe-Ito inspired; green is
# reserved for ground truth and blue/grey tones for points).
CLASS_PALETTE = np.array([
    [1.00, 0.27, 0.20],  # red
    [1.00, 0.62, 0.00],  # orange
    [0.95, 0.25, 0.85],  # magenta
    [1.00, 0.90, 0.10],  # yellow
    [0.00, 0.85, 1.00],  # cyan
    [0.60, 0.35, 1.00],  # violet
    [1.00, 0.55, 0.65],  # pink
    [0.75, 1.00, 0.25],  # lime
    [0.55, 0.35, 0.15],  # brown
    [1.00, 1.00, 1.00],  # white
], dtype=np.float64)

# The same hues, darkened where they would vanish on white paper (yellow, lime, white, cyan).
CLASS_PALETTE_ON_WHITE = np.array([
    [0.90, 0.15, 0.10],
    [0.95, 0.50, 0.00],
    [0.80, 0.10, 0.70],
    [0.80, 0.65, 0.00],
    [0.00, 0.60, 0.80],
    [0.45, 0.20, 0.85],
    [0.90, 0.40, 0.50],
    [0.45, 0.70, 0.00],
    [0.55, 0.35, 0.15],
    [0.20, 0.20, 0.20],
], dtype=np.float64)

GT_COLOR = np.array([0.10, 0.95, 0.30], dtype=np.float64)


@dataclass(frozen=True)
class Theme:
    """Background, point ramp (low -> high) and text colour of a rendering style."""

    name: str
    background: tuple[float, float, float]
    point_ramp: tuple[tuple[float, float, float], ...]
    text: tuple[float, float, float]
    gt: tuple[float, float, float]


THEMES = {
    "dark": Theme("dark", (0.05, 0.05, 0.07),
                  ((0.30, 0.36, 0.50), (0.50, 0.62, 0.78), (0.92, 0.95, 1.00)),
                  (0.95, 0.95, 0.95), tuple(GT_COLOR)),
    # On white the ramp goes light -> dark so tall structure stands out; GT green is darkened so
    # it keeps contrast against white.
    "white": Theme("white", (1.0, 1.0, 1.0),
                   ((0.55, 0.58, 0.66), (0.33, 0.38, 0.50), (0.08, 0.10, 0.20)),
                   (0.05, 0.05, 0.05), (0.0, 0.65, 0.15)),
}


def get_theme(theme: str | Theme) -> Theme:
    if isinstance(theme, Theme):
        return theme
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {sorted(THEMES)}, got {theme!r}")
    return THEMES[theme]


def class_color(label: int, theme: "str | Theme" = "dark") -> np.ndarray:
    """(3,) colour of predicted class `label` (cycles through the palette of the theme)."""
    palette = CLASS_PALETTE_ON_WHITE if get_theme(theme).name == "white" else CLASS_PALETTE
    return palette[int(label) % len(palette)]


def gt_color(theme: str | Theme = "dark") -> np.ndarray:
    return np.asarray(get_theme(theme).gt, dtype=np.float64)


def ramp(values: np.ndarray, stops) -> np.ndarray:
    """Piecewise-linear colour ramp: values (N,) in [0, 1] -> (N, 3) through evenly spaced `stops`."""
    stops = np.asarray(stops, dtype=np.float64)
    t = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, 1.0)
    pos = t * (len(stops) - 1)
    lo = np.minimum(pos.astype(np.int64), len(stops) - 2)
    frac = (pos - lo)[:, None]
    return stops[lo] * (1.0 - frac) + stops[lo + 1] * frac


def robust_normalize(values: np.ndarray, low_pct: float = 2.0, high_pct: float = 98.0) -> np.ndarray:
    """Map values to [0, 1] between two percentiles (outliers clip instead of flattening the ramp)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    lo, hi = np.percentile(values, [low_pct, high_pct])
    if hi - lo < 1e-9:
        return np.full(values.shape, 0.5)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def distinct_label_colors(labels: np.ndarray) -> np.ndarray:
    """(N,) non-negative ints -> (N, 3) pastel colours, hue stepped by the golden ratio.

    Works for sparse id sets (SemanticKITTI's 10, 40, 50, ...) where a modulo palette would collide.
    """
    import colorsys

    unique, inverse = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)
    table = np.array([colorsys.hsv_to_rgb((0.13 + 0.6180339887 * float(k)) % 1.0, 0.55, 0.95) for k in unique])
    return table.reshape(-1, 3)[inverse]


def point_colors(points: np.ndarray, color_by: str = "height", point_labels: np.ndarray | None = None,
                 theme: str | Theme = "dark", label_palette: str = "class") -> np.ndarray:
    """Colours (N, 3) for points (N, C).

    height: z through the theme ramp (2-98 percentile stretch). intensity: column 3 through the same
    ramp (percentile stretch, so KITTI [0, 1] and nuScenes 0-255 both work). label: `point_labels`
    (N,) int, -1 / negative = background (theme ramp low end), k >= 0 = a lightened class colour
    (`label_palette="class"`, matches the box colour of class k) or a golden-ratio hue per id
    (`label_palette="distinct"`, for semantic-segmentation ids).
    """
    theme = get_theme(theme)
    n = points.shape[0]
    if color_by not in COLOR_BY_CHOICES:
        raise ValueError(f"color_by must be one of {COLOR_BY_CHOICES}, got {color_by!r}")
    if color_by == "height":
        return ramp(robust_normalize(points[:, 2]), theme.point_ramp)
    if color_by == "intensity":
        if points.shape[1] < 4:
            raise ValueError(f"color_by='intensity' needs a 4th point column, points have {points.shape[1]} columns")
        # sqrt stretch: LiDAR intensity is heavy-tailed, most returns are dim.
        values = np.sqrt(np.clip(points[:, 3].astype(np.float64), 0.0, None))
        return ramp(robust_normalize(values, 1.0, 99.5), theme.point_ramp)
    if point_labels is None:
        raise ValueError("color_by='label' needs point_labels (N,) or boxes to derive them from")
    labels = np.asarray(point_labels).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"point_labels has {labels.shape[0]} entries for {n} points")
    colors = np.tile(np.asarray(theme.point_ramp[0], dtype=np.float64), (n, 1))
    fg = labels >= 0
    if fg.any() and label_palette == "distinct":
        colors[fg] = distinct_label_colors(labels[fg])
    elif fg.any():
        # Lighten towards white so labelled points read as "belongs to class k" without being
        # mistaken for a box edge of the same class.
        base = CLASS_PALETTE[labels[fg].astype(np.int64) % len(CLASS_PALETTE)]
        colors[fg] = 0.6 * base + 0.4 * np.asarray(theme.point_ramp[-1])
    return colors


def to_uint8(colors: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(colors) * 255.0), 0, 255).astype(np.uint8)
