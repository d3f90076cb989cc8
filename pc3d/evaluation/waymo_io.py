"""Read and write `waymo_open_dataset.protos.metrics_pb2.Objects` files (ground truth / submissions).

An Objects file is one serialized `Objects` proto: a flat list of `Object`s, each with
`context_name`, `frame_timestamp_micros`, a `label.Box` (centre, length, width, height, heading),
a type, and `score` (predictions) or `num_lidar_points_in_box` / `detection_difficulty_level`
(ground truth). Frames are keyed by `(context_name, frame_timestamp_micros)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from pc3d.structures import Boxes3D

OBJECT_CLASS_NAMES = ("Vehicle", "Pedestrian", "Cyclist", "Sign")
_TYPE_TO_NAME = {1: "Vehicle", 2: "Pedestrian", 3: "Sign", 4: "Cyclist"}
_NAME_TO_TYPE = {"vehicle": 1, "car": 1, "pedestrian": 2, "sign": 3, "cyclist": 4}
LEVEL_2_MAX_POINTS = 5

FrameKey = tuple[str, int]


def read_objects(path, drop_empty_ground_truth: bool = False, require_objects: bool = False,
                 seen_frames: set | None = None) -> dict[FrameKey, Boxes3D]:
    """Objects file -> `{(context_name, timestamp): Boxes3D}` with class_names `OBJECT_CLASS_NAMES`.

    Every frame gets scores (the `score` field), `num_points` and `difficulty`: the stored
    `detection_difficulty_level`, or when it is UNKNOWN, LEVEL_2 iff `num_lidar_points_in_box <= 5`
    (what the official `compute_detection_metrics_main` does). With `drop_empty_ground_truth`, objects
    with no lidar point are dropped (also as the official tool does for ground truth).

    With `require_objects`, a file that holds no object of a Waymo type is an error: an empty file, or
    another proto (a bare `Label` or `Box` parses as an `Objects` with no usable object). `seen_frames`,
    when given, receives the key of every frame in the file, dropped objects' frames included.
    """
    from google.protobuf.message import DecodeError
    from waymo_open_dataset.protos import metrics_pb2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Objects file not found: {path}")
    data = path.read_bytes()
    if require_objects and not data:
        raise ValueError(f"{path}: is empty (0 bytes), not a metrics_pb2.Objects file with objects")
    objects = metrics_pb2.Objects()
    try:
        objects.ParseFromString(data)
    except DecodeError as err:
        raise ValueError(f"{path}: not a waymo metrics_pb2.Objects proto ({err})") from err
    rows: dict[FrameKey, list] = {}
    usable = 0
    for index, obj in enumerate(objects.objects):
        label = obj.object
        name = _TYPE_TO_NAME.get(int(label.type))
        if name is None:
            continue
        usable += 1
        if seen_frames is not None:
            seen_frames.add((obj.context_name, int(obj.frame_timestamp_micros)))
        points = int(label.num_lidar_points_in_box)
        if drop_empty_ground_truth and points <= 0:
            continue
        b = label.box
        box = [b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, b.heading]
        if not np.isfinite(box).all():
            raise ValueError(f"{path}: object {index} has a non-finite box {box}")
        level = int(label.detection_difficulty_level)
        if level == 0:
            level = 2 if points <= LEVEL_2_MAX_POINTS else 1
        key = (obj.context_name, int(obj.frame_timestamp_micros))
        rows.setdefault(key, []).append((box, OBJECT_CLASS_NAMES.index(name), float(obj.score), level, points))
    if require_objects and not usable:
        raise ValueError(
            f"{path}: holds no object of a Waymo type ({len(objects.objects)} Object entries, {len(data)} bytes); "
            "expected a metrics_pb2.Objects file (a bare Label or Box proto, or an empty submission, reads as none)")
    out = {}
    for key, items in rows.items():
        boxes, labels, scores, levels, points = zip(*items)
        out[key] = Boxes3D(np.asarray(boxes, np.float32), np.asarray(labels), OBJECT_CLASS_NAMES,
                           np.asarray(scores, np.float32), np.asarray(levels), np.asarray(points))
    return out


def boxes_to_objects(frames: Iterable[tuple[str, int, Boxes3D]], objects=None):
    """Append one `Object` per box of every `(context_name, timestamp_micros, Boxes3D)` to an
    `Objects` proto (a new one by default) and return it. Boxes of classes that are not Waymo types
    are an error; scores are written when present, difficulty / num_points too."""
    from waymo_open_dataset.protos import metrics_pb2

    objects = metrics_pb2.Objects() if objects is None else objects
    for context_name, timestamp, boxes in frames:
        if not isinstance(boxes, Boxes3D):
            raise TypeError(f"frame {context_name}/{timestamp}: expected Boxes3D, got {type(boxes).__name__}")
        types = []
        for name in boxes.class_names:
            types.append(_NAME_TO_TYPE.get(name.lower(), 0))
        array = boxes.boxes.detach().cpu().numpy().astype(np.float64)
        labels = boxes.labels.tolist()
        scores = boxes.scores.tolist() if boxes.scores is not None else None
        difficulty = boxes.difficulty.tolist() if boxes.difficulty is not None else None
        points = boxes.num_points.tolist() if boxes.num_points is not None else None
        for i, label in enumerate(labels):
            if types[label] == 0:
                raise ValueError(f"frame {context_name}/{timestamp}: class {boxes.class_names[label]!r} is not a Waymo type")
            obj = objects.objects.add()
            obj.context_name = context_name
            obj.frame_timestamp_micros = int(timestamp)
            box = obj.object.box
            box.center_x, box.center_y, box.center_z = array[i, :3]
            box.length, box.width, box.height, box.heading = array[i, 3:7]
            obj.object.type = types[label]
            if scores is not None:
                obj.score = scores[i]
            if difficulty is not None:
                obj.object.detection_difficulty_level = int(difficulty[i])
            if points is not None:
                obj.object.num_lidar_points_in_box = int(points[i])
    return objects


def write_objects(path, frames: Iterable[tuple[str, int, Boxes3D]]) -> int:
    """Write a submission-format Objects file; returns the number of objects written."""
    objects = boxes_to_objects(frames)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(objects.SerializeToString())
    tmp.replace(path)
    return len(objects.objects)


def frame_key(frame_id: str) -> FrameKey:
    """Inverse of the converter's frame id `<context_name>_<timestamp>`."""
    context, _, timestamp = str(frame_id).rpartition("_")
    if not context or not timestamp.isdigit():
        raise ValueError(f"frame id {frame_id!r} is not '<context_name>_<timestamp_micros>'")
    return context, int(timestamp)


def empty_boxes(with_scores: bool = True) -> Boxes3D:
    empty = Boxes3D.empty(OBJECT_CLASS_NAMES, with_scores=with_scores)
    return empty


def paired_frames(predictions: dict[FrameKey, Boxes3D], ground_truths: dict[FrameKey, Boxes3D]):
    """Keys of both (sorted) with an empty `Boxes3D` where a side has no object in that frame."""
    keys = sorted(set(predictions) | set(ground_truths))
    preds = [predictions.get(k, empty_boxes(True)) for k in keys]
    gts = [ground_truths.get(k, empty_boxes(False)) for k in keys]
    return keys, preds, gts

