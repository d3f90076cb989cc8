"""Headless rendering of frames (points + GT / predicted boxes) to PNG, and an interactive viewer.

Backends:
- "open3d": Open3D's legacy `Visualizer(visible=False)`. Without a display it renders through Mesa
  EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1; `import open3d` also needs libusb-1.0-0).
  It honours point size and line width. Whether it works is probed once per process in a
  *subprocess*, because a broken GL stack may abort the process instead of raising.
- "software": numpy rasteriser (`pc3d.viz.raster`), same camera, no native dependency.
- "auto": "open3d" when the probe passes, else "software". The environment variable
  `PC3D_VIZ_BACKEND=software|open3d` overrides what "auto" picks (e.g. for CI machines without EGL).

Open3D's Filament `OffscreenRenderer` is deliberately not used: it needs Vulkan (libvulkan1 +
mesa-vulkan-drivers) and aborts the process when they are missing.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pc3d.viz.cameras import VIEWS, Camera, make_camera
from pc3d.viz.colors import class_color, get_theme, point_colors, to_uint8
from pc3d.viz.geometry import (as_numpy_boxes, as_numpy_points, box_corners, box_segments,
                               points_in_boxes_labels, segments_per_box)
from pc3d.viz.raster import rasterize

BACKENDS = ("auto", "open3d", "software")
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RenderInfo:
    """What `render_frame` produced: the PNG path, wall time, backend actually used and its camera."""

    path: Path
    seconds: float
    backend: str
    camera: Camera


class BackendUnavailable(RuntimeError):
    """The requested rendering backend cannot run on this machine."""


_PROBE_SCRIPT = r"""
import numpy as np, open3d as o3d
o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
vis = o3d.visualization.Visualizer()
if not vis.create_window(visible=False, width=64, height=48):
    raise SystemExit("create_window failed")
pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])))
pc.colors = o3d.utility.Vector3dVector(np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
vis.add_geometry(pc)
ro = vis.get_render_option(); ro.point_size = 8.0; ro.background_color = np.zeros(3); del ro
img = np.asarray(vis.capture_screen_float_buffer(do_render=True))
vis.destroy_window(); del vis
red = (img[..., 0] > 0.9) & (img[..., 1] < 0.1)
raise SystemExit(0 if red.any() else "rendered image has no red pixel")
"""


@functools.lru_cache(maxsize=None)
def probe_open3d(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Can Open3D's legacy visualizer render offscreen here? Runs in a subprocess (cached per process).

    Returns (ok, reason). A crash (abort, segfault) of the child shows up as a non-zero exit.
    """
    _ensure_runtime_dir()
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"open3d probe timed out after {timeout:.0f}s"
    if proc.returncode == 0:
        return True, "ok"
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
    return False, f"open3d probe exited with {proc.returncode}: {' | '.join(tail)}"


def resolve_backend(backend: str = "auto") -> str:
    """Concrete backend name for a request ("auto" -> "open3d" or "software")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get("PC3D_VIZ_BACKEND", "").strip().lower()
        if forced in ("open3d", "software"):
            backend = forced
        else:
            return "open3d" if probe_open3d()[0] else "software"
    if backend == "open3d":
        ok, reason = probe_open3d()
        if not ok:
            raise BackendUnavailable(f"Open3D offscreen rendering is unavailable: {reason}. Install the Debian "
                                     "packages libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1, or "
                                     "use backend='software'.")
    return backend


# --------------------------------------------------------------------------------------------------
# Backends: (camera, geometry) -> uint8 (H, W, 3)
# --------------------------------------------------------------------------------------------------

def _ensure_runtime_dir() -> None:
    """GLFW complains on stderr when XDG_RUNTIME_DIR is unset (headless shells, CI): give it a private one."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        import tempfile
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="pc3d-xdg-")


def _render_open3d(camera: Camera, xyz, colors, segments, segment_colors, point_size, line_width, background,
                   visible: bool = False, interactive: bool = False, title: str = "pc3d") -> np.ndarray | None:
    _ensure_runtime_dir()
    import open3d as o3d

    previous = o3d.utility.get_verbosity_level()
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    vis = o3d.visualization.Visualizer()
    try:
        if not vis.create_window(window_name=title, width=camera.width, height=camera.height, visible=visible):
            raise BackendUnavailable("Open3D could not create a window / EGL context")
        if len(xyz):
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.ascontiguousarray(xyz, dtype=np.float64)))
            cloud.colors = o3d.utility.Vector3dVector(np.ascontiguousarray(colors, dtype=np.float64))
            vis.add_geometry(cloud)
        if segments is not None and len(segments):
            lines = o3d.geometry.LineSet(
                o3d.utility.Vector3dVector(np.ascontiguousarray(segments.reshape(-1, 3), dtype=np.float64)),
                o3d.utility.Vector2iVector(np.arange(2 * len(segments), dtype=np.int32).reshape(-1, 2)))
            lines.colors = o3d.utility.Vector3dVector(np.ascontiguousarray(segment_colors, dtype=np.float64))
            vis.add_geometry(lines)
        # Render option / view control objects must not outlive the window: a live reference
        # keeps the old GL context around and the *next* window renders blank.
        render_option = vis.get_render_option()
        render_option.background_color = np.asarray(background, dtype=np.float64)
        render_option.point_size = float(point_size)
        render_option.line_width = float(line_width)
        render_option.light_on = False
        del render_option
        view = vis.get_view_control()
        params = o3d.camera.PinholeCameraParameters()
        k = camera.intrinsic
        params.intrinsic = o3d.camera.PinholeCameraIntrinsic(camera.width, camera.height, k[0, 0], k[1, 1],
                                                             k[0, 2], k[1, 2])
        params.extrinsic = camera.extrinsic
        ok = view.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)
        back = view.convert_to_pinhole_camera_parameters()
        del view
        # Open3D clamps zoom / field of view; if it moved our camera the projection we expose would
        # be wrong, so refuse rather than return a silently shifted image.
        if not ok or not np.allclose(back.extrinsic, camera.extrinsic, atol=1e-6 * max(1.0, np.abs(camera.extrinsic).max())) \
                or not np.allclose(back.intrinsic.intrinsic_matrix, k, rtol=1e-6):
            raise BackendUnavailable("Open3D's view control could not reproduce the requested camera")
        if interactive:
            vis.run()
            return None
        buffer = vis.capture_screen_float_buffer(do_render=True)
        image = to_uint8(np.asarray(buffer))
        del buffer
        if image.shape[:2] != (camera.height, camera.width):
            raise BackendUnavailable(f"Open3D returned a {image.shape[1]}x{image.shape[0]} image, "
                                     f"expected {camera.width}x{camera.height}")
        return image
    finally:
        vis.destroy_window()
        del vis
        o3d.utility.set_verbosity_level(previous)


def render_image(camera: Camera, xyz: np.ndarray, colors: np.ndarray, segments: np.ndarray | None = None,
                 segment_colors: np.ndarray | None = None, point_size: float = 2.0, line_width: float = 2.0,
                 background=(0.0, 0.0, 0.0), backend: str = "auto") -> tuple[np.ndarray, str]:
    """Render geometry with a camera -> (uint8 image (H, W, 3), backend used).

    xyz (N, 3), colors (N, 3) in [0, 1], segments (L, 2, 3), segment_colors (L, 3).
    With backend="auto" an Open3D failure falls back to the software rasteriser with a warning.
    """
    xyz = np.zeros((0, 3)) if xyz is None else np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    colors = np.zeros((0, 3)) if colors is None else np.asarray(colors, dtype=np.float64).reshape(-1, 3)
    if colors.shape[0] != xyz.shape[0]:
        raise ValueError(f"colors has {colors.shape[0]} rows for {xyz.shape[0]} points")
    if segments is not None:
        segments = np.asarray(segments, dtype=np.float64).reshape(-1, 2, 3)
        segment_colors = np.asarray(segment_colors, dtype=np.float64).reshape(-1, 3)
        if segment_colors.shape[0] != segments.shape[0]:
            raise ValueError(f"segment_colors has {segment_colors.shape[0]} rows for {segments.shape[0]} segments")
    requested = backend
    backend = resolve_backend(backend)
    has_geometry = len(xyz) > 0 or (segments is not None and len(segments) > 0)
    if backend == "open3d" and has_geometry:
        try:
            return _render_open3d(camera, xyz, colors, segments, segment_colors, point_size, line_width,
                                  background), "open3d"
        except BackendUnavailable as err:
            if requested != "auto":
                raise
            warnings.warn(f"{err}; falling back to the software rasteriser", RuntimeWarning, stacklevel=2)
            backend = "software"
    image = rasterize(camera, xyz, colors, segments, segment_colors, point_size, line_width, background)
    return image, "software"


def _text_patch(draw, theme, font: float, width_px: int, height_px: int) -> np.ndarray:
    """Render matplotlib artists on a small transparent canvas; return the RGBA crop around them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100.0
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    fig.patch.set_alpha(0.0)
    canvas = FigureCanvasAgg(fig)
    artist = draw(fig)
    canvas.draw()
    box = artist.get_window_extent(canvas.get_renderer())
    rgba = np.asarray(canvas.buffer_rgba())
    # window extent is in display coordinates with the origin at the bottom left
    x0, x1 = max(int(np.floor(box.x0)) - 1, 0), min(int(np.ceil(box.x1)) + 1, rgba.shape[1])
    y0, y1 = max(rgba.shape[0] - int(np.ceil(box.y1)) - 1, 0), min(rgba.shape[0] - int(np.floor(box.y0)) + 1, rgba.shape[0])
    return rgba[y0:y1, x0:x1].copy()


def _paste(image: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Alpha-composite an RGBA patch onto image (in place), clipped to the image."""
    h = min(patch.shape[0], image.shape[0] - top)
    w = min(patch.shape[1], image.shape[1] - left)
    if h <= 0 or w <= 0:
        return
    alpha = patch[:h, :w, 3:4].astype(np.float32) / 255.0
    region = image[top:top + h, left:left + w].astype(np.float32)
    image[top:top + h, left:left + w] = np.round(alpha * patch[:h, :w, :3] + (1 - alpha) * region).astype(np.uint8)


def add_legend(image: np.ndarray, entries: list[tuple[str, np.ndarray]], theme="dark",
               title: str | None = None) -> np.ndarray:
    """Draw a legend (label, colour) in the lower-right corner and an optional title (upper left).

    The legend and title are rendered with matplotlib (Agg) on small patches and composited, so the
    rest of the image is unchanged pixel for pixel (and it stays fast for large images).
    """
    if not entries and not title:
        return image
    from matplotlib.lines import Line2D

    theme = get_theme(theme)
    image = image.copy()
    height, width = image.shape[:2]
    font = max(8.0, min(width, height) / 55.0)
    margin = max(4, int(round(font * 0.6)))
    edge = tuple(0.5 * np.array(theme.text) + 0.25)
    if entries:
        handles = [Line2D([], [], color=tuple(np.asarray(color, dtype=float)), lw=3.0, label=label)
                   for label, color in entries]

        def draw_legend(fig):
            legend = fig.legend(handles=handles, loc="center", fontsize=font, frameon=True, facecolor=theme.background,
                                edgecolor=edge, labelcolor=theme.text, framealpha=0.85)
            legend.get_frame().set_linewidth(0.8)
            return legend

        longest = max(len(label) for label, _ in entries)
        patch = _text_patch(draw_legend, theme, font, int(font * (0.8 * longest + 8)) + 40,
                            int(font * 1.8 * len(entries) + 3 * font) + 20)
        # Bottom right: in every preset that is behind / beside the ego, where boxes are rarest.
        _paste(image, patch, max(height - patch.shape[0] - margin, 0), max(width - patch.shape[1] - margin, 0))
    if title:
        def draw_title(fig):
            return fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=font, color=theme.text,
                            bbox=dict(facecolor=theme.background, edgecolor="none", alpha=0.7, pad=3))

        patch = _text_patch(draw_title, theme, font, int(font * 0.8 * len(title) + 4 * font) + 20, int(font * 3) + 10)
        _paste(image, patch, margin, margin)
    return image


def save_png(image: np.ndarray, out) -> Path:
    from PIL import Image

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"out must be a .png path, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(out)
    return out


# --------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------

def _unpack_points(points):
    """Frame | PointCloud | array (N, C) -> (numpy (N, C), frame gt boxes or None)."""
    from pc3d.structures import Frame, PointCloud

    frame_gt = None
    if isinstance(points, Frame):
        frame_gt = points.gt_boxes
        points = points.points
    if isinstance(points, PointCloud):
        points = points.points
    return as_numpy_points(points, "points"), frame_gt


def _box_arrays(boxes, name: str, score_threshold: float = 0.0):
    """Boxes3D | array (M, 7+) | None -> (boxes (M, 7), labels (M,), scores (M,) | None, class names)."""
    if boxes is None:
        return np.zeros((0, 7)), np.zeros(0, dtype=np.int64), None, ()
    if hasattr(boxes, "boxes") and hasattr(boxes, "labels"):
        arr = as_numpy_boxes(boxes.boxes, name)
        labels = boxes.labels.detach().cpu().numpy().astype(np.int64)
        scores = None if boxes.scores is None else boxes.scores.detach().cpu().numpy().astype(np.float64)
        names = tuple(boxes.class_names)
    else:
        arr = as_numpy_boxes(boxes, name)
        labels = np.zeros(len(arr), dtype=np.int64)
        scores, names = None, ("object",)
    if scores is not None and score_threshold > 0:
        keep = scores >= score_threshold
        arr, labels, scores = arr[keep], labels[keep], scores[keep]
    return arr, labels, scores, names


def default_point_size(num_points: int, width: int, height: int) -> float:
    """Splat size in pixels: 2 for a 120k-point scan at 1280x960, bigger for sparse clouds (1-px
    points read as noise in print, so 2 is the minimum)."""
    if num_points <= 0:
        return 2.0
    return float(np.clip(np.round(0.55 * np.sqrt(width * height / num_points)), 2.0, 5.0))


def default_line_width(width: int, height: int) -> float:
    return float(max(2.0, np.round(min(width, height) / 320.0)))


@dataclass(frozen=True)
class FrameScene:
    """Everything `render_frame` draws, before a backend touches it (exposed for tests and tools)."""

    xyz: np.ndarray              # (N, 3)
    colors: np.ndarray           # (N, 3)
    segments: np.ndarray         # (L, 2, 3)
    segment_colors: np.ndarray   # (L, 3)
    gt_boxes: np.ndarray         # (G, 7)
    pred_boxes: np.ndarray       # (P, 7) after the score threshold
    pred_labels: np.ndarray      # (P,)
    legend: list                 # [(label, colour)]


def build_frame_scene(points, gt_boxes=None, pred_boxes=None, color_by: str = "height",
                      score_threshold: float = 0.0, point_labels=None, theme="dark") -> FrameScene:
    """Colour the points and turn the boxes into coloured line segments (see `render_frame`)."""
    pts, frame_gt = _unpack_points(points)
    if gt_boxes is None:
        gt_boxes = frame_gt
    if not np.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold}")
    theme = get_theme(theme)
    gt, gt_labels, _, gt_names = _box_arrays(gt_boxes, "gt_boxes")
    pred, pred_labels, _, pred_names = _box_arrays(pred_boxes, "pred_boxes", score_threshold)
    label_palette = "distinct"
    if color_by == "label" and point_labels is None:
        # No per-point labels given: label points by the box that contains them (GT first), tinted
        # like the box colour of their class.
        source, labels = (gt, gt_labels) if len(gt) else (pred, pred_labels)
        point_labels = points_in_boxes_labels(pts[:, :3], source, labels)
        label_palette = "class"
    if point_labels is not None:
        try:
            import torch
            if isinstance(point_labels, torch.Tensor):
                point_labels = point_labels.detach().cpu().numpy()
        except ImportError:  # pragma: no cover
            pass
    colors = point_colors(pts, color_by, point_labels, theme, label_palette)
    per_box = segments_per_box()
    segments = np.concatenate([box_segments(gt), box_segments(pred)]).reshape(-1, 2, 3)
    gt_rgb = np.asarray(theme.gt, dtype=np.float64)
    segment_colors = np.concatenate([
        np.tile(gt_rgb, (len(gt) * per_box, 1)),
        np.repeat(np.array([class_color(k, theme) for k in pred_labels]).reshape(-1, 3), per_box, axis=0),
    ]).reshape(-1, 3)
    legend = []
    if len(gt):
        legend.append(("ground truth", gt_rgb))
    for k in sorted(set(pred_labels.tolist())):
        name = pred_names[k] if k < len(pred_names) else str(k)
        legend.append((f"pred: {name}", class_color(k, theme)))
    return FrameScene(pts[:, :3], colors, segments, segment_colors, gt, pred, pred_labels, legend)


def frame_camera(scene: FrameScene, view: str, width: int, height: int, **kwargs) -> Camera:
    """The preset camera `render_frame` uses for a scene."""
    boxes = np.concatenate([scene.gt_boxes, scene.pred_boxes])
    extra = box_corners(boxes).reshape(-1, 3) if len(boxes) else None
    return make_camera(view, width, height, scene.xyz, extra, **kwargs)


def render_frame(points, gt_boxes=None, pred_boxes=None, out="frame.png", view: str = "bev", width: int = 1280,
                 height: int = 960, color_by: str = "height", score_threshold: float = 0.0, backend: str = "auto",
                 *, point_labels=None, theme: str = "dark", point_size: float | None = None,
                 line_width: float | None = None, camera: Camera | None = None, legend: bool = True,
                 title: str | None = None, camera_kwargs: dict | None = None) -> RenderInfo:
    """Render one frame to a PNG.

    points: `Frame` (its GT boxes are used when `gt_boxes` is None), `PointCloud`, or (N, C>=3)
    numpy / torch. gt_boxes / pred_boxes: `Boxes3D`, (M, 7+) array, or None. GT boxes are drawn in
    one colour (theme green), predictions in per-class colours after dropping scores below
    `score_threshold`; every box has a heading marker (a line from the top centre to the front and
    a cross on the front face). color_by: "height" | "intensity" (column 3) | "label" (`point_labels`
    (N,) int, or derived from the boxes). view: "bev" | "chase" | "overview", or pass `camera`.
    Returns `RenderInfo(path, seconds, backend, camera)`; `camera.project(xyz)` gives pixel positions.
    """
    start = time.perf_counter()
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    scene = build_frame_scene(points, gt_boxes, pred_boxes, color_by, score_threshold, point_labels, theme)
    if camera is None:
        camera = frame_camera(scene, view, width, height, **(camera_kwargs or {}))
    theme_obj = get_theme(theme)
    if point_size is None:
        point_size = default_point_size(len(scene.xyz), camera.width, camera.height)
    if line_width is None:
        line_width = default_line_width(camera.width, camera.height)
    image, used = render_image(camera, scene.xyz, scene.colors, scene.segments, scene.segment_colors,
                               point_size, line_width, theme_obj.background, backend)
    if legend:
        image = add_legend(image, scene.legend, theme_obj, title)
    elif title:
        image = add_legend(image, [], theme_obj, title)
    path = save_png(image, out)
    return RenderInfo(path, time.perf_counter() - start, used, camera)


def has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_frame(points, gt_boxes=None, pred_boxes=None, view: str = "chase", width: int = 1280, height: int = 960,
               color_by: str = "height", score_threshold: float = 0.0, *, point_labels=None, theme: str = "dark",
               point_size: float | None = None, line_width: float | None = None, title: str = "pc3d") -> None:
    """Open an interactive Open3D window with the same scene and starting camera as `render_frame`."""
    if not has_display():
        raise RuntimeError("show_frame needs a display (DISPLAY / WAYLAND_DISPLAY is not set); use render_frame "
                           "to write a PNG instead")
    scene = build_frame_scene(points, gt_boxes, pred_boxes, color_by, score_threshold, point_labels, theme)
    camera = frame_camera(scene, view, width, height)
    _render_open3d(camera, scene.xyz, scene.colors, scene.segments, scene.segment_colors,
                   point_size or default_point_size(len(scene.xyz), width, height),
                   line_width or default_line_width(width, height), get_theme(theme).background,
                   visible=True, interactive=True, title=title)
