"""Registration figure: source / reference before and after alignment, and the correspondences.

`render_registration` renders three panels with the same backend as `render_frame` and puts them
side by side with titles (matplotlib composite):
1. before: source (orange) and reference (blue) as given;
2. after: source moved by `transform` (p_ref = R p_src + t, docs/conventions.md) over the reference;
3. correspondences: the aligned source shifted sideways next to the reference, with a line per
   correspondence, green for inliers and red for outliers.
"""
from __future__ import annotations

import time

import numpy as np

from pc3d.viz.cameras import principal_axes_camera, refit_camera
from pc3d.viz.colors import get_theme
from pc3d.viz.geometry import as_numpy_points
from pc3d.viz.render import RenderInfo, default_point_size, render_image, save_png

SOURCE_COLOR = np.array([1.00, 0.60, 0.10])
REFERENCE_COLOR = np.array([0.25, 0.60, 1.00])
INLIER_COLOR = np.array([0.10, 0.95, 0.30])
OUTLIER_COLOR = np.array([1.00, 0.20, 0.20])


def _as_transform(transform) -> np.ndarray:
    try:
        import torch
        if isinstance(transform, torch.Tensor):
            transform = transform.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    t = np.asarray(transform, dtype=np.float64)
    if t.shape != (4, 4):
        raise ValueError(f"transform must be a (4, 4) matrix, got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("transform contains NaN/inf")
    return t


def apply_transform(xyz: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """(N, 3) points mapped by a (4, 4) rigid transform."""
    return xyz @ transform[:3, :3].T + transform[:3, 3]


def _correspondence_pairs(correspondences, src: np.ndarray, ref: np.ndarray):
    """(K, 2) int indices (src, ref) or (K, 6) float coordinates -> (src xyz (K, 3), ref xyz (K, 3))."""
    try:
        import torch
        if isinstance(correspondences, torch.Tensor):
            correspondences = correspondences.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    c = np.asarray(correspondences)
    if c.ndim != 2 or c.shape[1] not in (2, 6):
        raise ValueError(f"correspondences must be (K, 2) indices (src, ref) or (K, 6) coordinates, got {c.shape}")
    if c.shape[1] == 2:
        if not np.issubdtype(c.dtype, np.integer):
            raise TypeError(f"correspondences: (K, 2) index pairs must be integers, got {c.dtype}")
        if len(c) and (c.min() < 0 or c[:, 0].max() >= len(src) or c[:, 1].max() >= len(ref)):
            raise ValueError(f"correspondences: indices out of range for {len(src)} source / {len(ref)} reference points")
        return src[c[:, 0]], ref[c[:, 1]]
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        raise ValueError("correspondences contain NaN/inf")
    return c[:, :3], c[:, 3:]


def render_registration(src, ref, transform, correspondences=None, inlier_mask=None, out="registration.png",
                        panel_width: int = 640, panel_height: int = 560, backend: str = "auto",
                        inlier_threshold: float = 0.1, max_correspondences: int = 300, theme: str = "dark",
                        title: str | None = None) -> RenderInfo:
    """Write the registration figure to `out` (PNG) and return `RenderInfo` (camera of the panels).

    src (N, 3+), ref (M, 3+): numpy or torch. transform (4, 4) maps src into ref's frame.
    correspondences: None, (K, 2) int (src index, ref index) or (K, 6) float (src xyz, ref xyz), both
    in their own frames. inlier_mask (K,) bool; when None, a correspondence is an inlier if its
    residual after `transform` is below `inlier_threshold` (metres). At most `max_correspondences`
    lines are drawn (a fixed-seed subsample keeps the inlier ratio).
    """
    start = time.perf_counter()
    src = as_numpy_points(src, "src")[:, :3]
    ref = as_numpy_points(ref, "ref")[:, :3]
    transform = _as_transform(transform)
    theme_obj = get_theme(theme)
    aligned = apply_transform(src, transform)

    camera = principal_axes_camera(np.concatenate([aligned, ref]), panel_width, panel_height,
                                   sensor_origin=ref.mean(axis=0) if len(ref) else (0.0, 0.0, 0.0))
    size = default_point_size(len(src) + len(ref), panel_width, panel_height)

    def cloud(a, b):
        xyz = np.concatenate([a, b])
        colors = np.concatenate([np.tile(SOURCE_COLOR, (len(a), 1)), np.tile(REFERENCE_COLOR, (len(b), 1))])
        return xyz, colors

    panels, used = [], set()
    # Panel 1 uses a camera fitted to its own content so a large initial misalignment stays in view.
    before_xyz, before_colors = cloud(src, ref)
    before_camera = principal_axes_camera(before_xyz, panel_width, panel_height,
                                          sensor_origin=ref.mean(axis=0) if len(ref) else (0.0, 0.0, 0.0))
    image, b = render_image(before_camera, before_xyz, before_colors, None, None, size, 2.0, theme_obj.background,
                            backend)
    panels.append(("before alignment", image)); used.add(b)
    xyz, colors = cloud(aligned, ref)
    image, b = render_image(camera, xyz, colors, None, None, size, 2.0, theme_obj.background, backend)
    panels.append(("after alignment", image)); used.add(b)

    if correspondences is not None:
        c_src, c_ref = _correspondence_pairs(correspondences, src, ref)
        c_src_aligned = apply_transform(c_src, transform)
        if inlier_mask is None:
            inliers = np.linalg.norm(c_src_aligned - c_ref, axis=1) < inlier_threshold
        else:
            inliers = np.asarray(inlier_mask, dtype=bool).reshape(-1)
            if inliers.shape[0] != c_src.shape[0]:
                raise ValueError(f"inlier_mask has {inliers.shape[0]} entries for {c_src.shape[0]} correspondences")
        # Shift the aligned source along the image's horizontal axis by the cloud's on-screen width
        # so matching structure sits side by side and inlier lines run parallel.
        right = camera.extrinsic[0, :3]
        both = np.concatenate([aligned, ref])
        extent = float(np.percentile(both @ right, 99) - np.percentile(both @ right, 1)) if len(both) else 1.0
        shift = 1.1 * extent * right
        shifted_src = aligned + shift
        pick = np.arange(len(c_src))
        if len(pick) > max_correspondences:
            pick = np.sort(np.random.default_rng(0).choice(len(pick), max_correspondences, replace=False))
        segments = np.stack([c_src_aligned[pick] + shift, c_ref[pick]], axis=1)
        seg_colors = np.where(inliers[pick, None], INLIER_COLOR, OUTLIER_COLOR)
        xyz, colors = cloud(shifted_src, ref)
        corr_camera = refit_camera(camera, xyz, width=int(1.6 * panel_width))
        image, b = render_image(corr_camera, xyz, 0.55 * colors + 0.45 * np.asarray(theme_obj.background),
                                segments, seg_colors, size, 1.0, theme_obj.background, backend)
        ratio = float(inliers.mean()) if len(inliers) else 0.0
        panels.append((f"correspondences: {int(inliers.sum())}/{len(inliers)} inliers ({100 * ratio:.1f}%)", image))
        used.add(b)

    figure = _compose(panels, theme_obj, title, with_lines=correspondences is not None)
    path = save_png(figure, out)
    return RenderInfo(path, time.perf_counter() - start, "+".join(sorted(used)), camera)


def _compose(panels, theme, title: str | None, with_lines: bool = False) -> np.ndarray:
    """Panels side by side with titles and a colour key (matplotlib Agg) -> uint8 image. The key lists the
    inlier / outlier line colours only when `with_lines` (a correspondence panel was drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    height = panels[0][1].shape[0]
    widths = [image.shape[1] for _, image in panels]
    total = float(sum(widths))
    dpi = 100.0
    header = 60
    fig = Figure(figsize=(total / dpi, (height + header) / dpi), dpi=dpi, facecolor=theme.background)
    canvas = FigureCanvasAgg(fig)
    left = 0.0
    for (name, image), w in zip(panels, widths):
        ax = fig.add_axes([left / total, 0.0, w / total, height / (height + header)])
        left += w
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, color=theme.text, fontsize=12, pad=4)
    handles = [Line2D([], [], color=SOURCE_COLOR, marker="o", ls="none", label="source"),
               Line2D([], [], color=REFERENCE_COLOR, marker="o", ls="none", label="reference")]
    if with_lines:
        handles += [Line2D([], [], color=INLIER_COLOR, lw=2, label="inlier"),
                    Line2D([], [], color=OUTLIER_COLOR, lw=2, label="outlier")]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=10, frameon=False,
               labelcolor=theme.text)
    if title:
        fig.text(0.005, 0.995, title, ha="left", va="top", fontsize=12, color=theme.text)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
