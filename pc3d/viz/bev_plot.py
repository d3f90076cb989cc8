"""Bird's-eye-view plot for reports (matplotlib, Agg): points, GT / predicted boxes, heading ticks,
scores and a legend, with metre axes. x (forward) points up and y (left) to the left, like the BEV
render.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pc3d.viz.colors import class_color, get_theme, point_colors
from pc3d.viz.geometry import box_corners


def _draw_boxes(ax, boxes, scores, names, color_of, style: str, show_scores: bool, text_color, font):
    """Draw BEV rectangles + heading ticks; returns legend handles keyed by label text."""
    handles = {}
    if len(boxes) == 0:
        return handles
    corners = box_corners(boxes)[:, :4, :2]          # bottom face, (M, 4, 2) in (x, y)
    front_mid = (corners[:, 0] + corners[:, 3]) / 2.0
    for i in range(len(boxes)):
        color = tuple(color_of(i))
        poly = np.vstack([corners[i], corners[i, :1]])
        # plot (y, x): horizontal = y (inverted axis), vertical = x
        (line,) = ax.plot(poly[:, 1], poly[:, 0], color=color, lw=1.4, ls=style, solid_joinstyle="miter")
        ax.plot([boxes[i, 1], front_mid[i, 1]], [boxes[i, 0], front_mid[i, 0]], color=color, lw=1.4)
        key = names(i)
        handles.setdefault(key, line)
        if show_scores and scores is not None:
            ax.text(corners[i, 0, 1], corners[i, 0, 0], f"{scores[i]:.2f}", color=text_color, fontsize=font,
                    ha="left", va="bottom", clip_on=True,
                    bbox=dict(facecolor=color, alpha=0.55, edgecolor="none", pad=0.6))
    return handles


def bev_plot(points, gt=None, pred=None, out="bev.png", score_threshold: float = 0.0, xy_range=None,
             color_by: str = "height", title: str | None = None, theme: str = "white", figsize=None,
             dpi: int = 150, show_scores: bool = True, point_labels=None, max_points: int = 200_000) -> Path:
    """Write a BEV figure of points (N, C>=3) (or a `Frame`) with GT / predicted boxes to `out` (PNG/PDF/SVG).

    gt / pred: `Boxes3D`, (M, 7+) arrays or None; predictions below `score_threshold` are dropped and
    the rest are drawn dashed in per-class colours with their score. xy_range: (x_min, y_min, x_max,
    y_max) metres; default fits the points (1-99 percentile) and boxes. figsize None fits the data
    aspect. Returns the output path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pc3d.viz.render import _box_arrays, _unpack_points

    pts, frame_gt = _unpack_points(points)
    if gt is None:
        gt = frame_gt
    theme_obj = get_theme(theme)
    gt_boxes, gt_labels, _, _ = _box_arrays(gt, "gt")
    pred_boxes, pred_labels, pred_scores, pred_names = _box_arrays(pred, "pred", score_threshold)
    if len(pts) > max_points:  # keeps the vector output small; a deterministic subsample is fine for BEV
        pick = np.random.default_rng(0).choice(len(pts), max_points, replace=False)
        pts = pts[np.sort(pick)]
        point_labels = None if point_labels is None else np.asarray(point_labels)[np.sort(pick)]
    label_palette = "distinct"
    if color_by == "label" and point_labels is None:
        from pc3d.viz.geometry import points_in_boxes_labels
        point_labels = points_in_boxes_labels(pts[:, :3], gt_boxes, gt_labels) \
            if len(gt_boxes) else np.full(len(pts), -1)
        label_palette = "class"
    colors = point_colors(pts, color_by, point_labels, theme_obj, label_palette) if len(pts) else np.zeros((0, 3))

    if xy_range is None:
        from pc3d.viz.cameras import robust_bounds
        extra = box_corners(np.concatenate([gt_boxes, pred_boxes]))[..., :3].reshape(-1, 3) \
            if len(gt_boxes) + len(pred_boxes) else None
        lo, hi = robust_bounds(pts[:, :3] if len(pts) else None, extra)
        x_min, y_min, x_max, y_max = min(lo[0], 0) - 4, min(lo[1], 0) - 4, max(hi[0], 0) + 4, max(hi[1], 0) + 4
    else:
        x_min, y_min, x_max, y_max = (float(v) for v in xy_range)
        if not (x_max > x_min and y_max > y_min):
            raise ValueError(f"xy_range must be (x_min, y_min, x_max, y_max) with max > min, got {xy_range}")
    if figsize is None:
        # Plot area follows the data aspect (x is vertical); 2.6 in on the right for the legend.
        aspect = (x_max - x_min) / (y_max - y_min)
        plot_w = float(np.clip(7.0 / max(aspect, 1e-3), 3.0, 9.0))
        figsize = (plot_w + 2.6, float(np.clip(plot_w * aspect, 3.0, 10.0)) + 0.9)
    fig = Figure(figsize=figsize, dpi=dpi, facecolor=theme_obj.background)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111, facecolor=theme_obj.background)
    # Draw dense points first and small: rasterized keeps PDFs light.
    ax.scatter(pts[:, 1], pts[:, 0], c=colors, s=0.6 if len(pts) > 20000 else 2.0, linewidths=0, rasterized=True)
    ax.plot([0], [0], marker="^", color=theme_obj.text, ms=7, ls="none", label="ego")
    font = 7
    handles = {}
    gt_rgb = np.asarray(theme_obj.gt)
    handles.update(_draw_boxes(ax, gt_boxes, None, lambda i: "ground truth", lambda i: gt_rgb, "-",
                               False, theme_obj.text, font))
    handles.update(_draw_boxes(ax, pred_boxes, pred_scores,
                               lambda i: f"pred: {pred_names[pred_labels[i]]}",
                               lambda i: class_color(pred_labels[i], theme_obj), "--", show_scores, "black", font))
    ax.set_xlim(y_max, y_min)  # +y (left) on the left
    ax.set_ylim(x_min, x_max)
    ax.set_aspect("equal")
    ax.set_xlabel("y [m] (left +)", color=theme_obj.text)
    ax.set_ylabel("x [m] (forward +)", color=theme_obj.text)
    ax.tick_params(colors=theme_obj.text, labelsize=8)
    for spine in ax.spines.values():
        spine.set_color(theme_obj.text)
    ax.grid(True, color=theme_obj.text, alpha=0.12, lw=0.5)
    legend_handles = list(handles.values())
    legend_labels = list(handles.keys())
    if legend_handles:
        ax.legend(legend_handles, legend_labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                  framealpha=0.85, borderaxespad=0.0,
                  facecolor=theme_obj.background, labelcolor=theme_obj.text)
    n_pred = len(pred_boxes)
    default_title = f"{len(pts):,} points, {len(gt_boxes)} GT boxes, {n_pred} predictions"
    if score_threshold > 0:
        default_title += f" (score >= {score_threshold:g})"
    ax.set_title(title or default_title, color=theme_obj.text, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=theme_obj.background)
    return out
