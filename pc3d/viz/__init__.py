"""Visualisation of frames, detections and registrations (headless PNG by default).

- `render_frame(points, gt_boxes, pred_boxes, out, view, width, height, color_by, score_threshold, backend)`
  -> `RenderInfo(path, seconds, backend, camera)`; `camera.project(xyz)` tells where a point lands.
- `show_frame(...)`: the same scene in an interactive Open3D window (needs a display).
- `bev_plot(points, gt, pred, out)`: matplotlib bird's-eye figure with legend and scores, for reports.
- `render_registration(src, ref, transform, correspondences, inlier_mask, out)`: before / after /
  correspondence panels side by side.
Backends and their system requirements: `pc3d.viz.render`.
"""
from pc3d.viz.bev_plot import bev_plot
from pc3d.viz.cameras import Camera, bev_camera, chase_camera, look_at, make_camera, overview_camera
from pc3d.viz.registration import render_registration
from pc3d.viz.render import (BackendUnavailable, RenderInfo, build_frame_scene, probe_open3d, render_frame,
                             render_image, resolve_backend, show_frame)

__all__ = [
    "BackendUnavailable", "Camera", "RenderInfo", "bev_camera", "bev_plot", "build_frame_scene", "chase_camera",
    "look_at", "make_camera", "overview_camera", "probe_open3d", "render_frame", "render_image",
    "render_registration", "resolve_backend", "show_frame",
]
