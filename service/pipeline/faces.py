"""The per-request pipeline around the network, composed from the single-step modules.

    prepare():      image + center/scale -> network input rows: uint8 crops for a graph that
                    normalises and flips itself, or normalised float rows (flipped copies
                    appended when flip test is on) for a plain network
    finish():       network output rows -> landmarks in image pixels + per-point scores
    face_records(): landmarks + scores + boxes (+ detections) -> the response's face records

The service, the evaluator and the benchmarks all go through these two functions; only
how the rows reach the network differs (dynamic batcher vs a direct session.run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import PipelineConfig
from .dark import decode_heatmaps
from .flip import flip_inputs, merge_flip
from .geometry import box_to_center_scale
from .keypoints import NUM_KEYPOINTS, point_set_indices
from .preprocess import crop_faces, normalize


@dataclass
class PreparedFaces:
    """Network input for F faces.

    rows: `[F, H, W, 3]` uint8 crops when the graph normalises (`in_graph`), else `[F or 2F,
    3, H, W]` float32 normalised rows with the flipped copies after the originals.
    """

    rows: np.ndarray
    center: np.ndarray  # [F, 2] float32
    scale: np.ndarray  # [F, 2] float32
    flip_test: bool  # flip test requested (done in the graph or on the host)
    merge_on_host: bool = False  # rows carry flipped copies that finish() must merge

    @property
    def num_faces(self) -> int:
        return len(self.center)


def centers_and_scales(boxes_xywh: np.ndarray, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """boxes `[F, 4]` (x, y, w, h) -> center `[F, 2]`, scale `[F, 2]` (mmpose convention)."""
    return box_to_center_scale(boxes_xywh, config.aspect_ratio, config.bbox_padding, config.pixel_std)


def prepare(rgb: np.ndarray, center: np.ndarray, scale: np.ndarray, config: PipelineConfig,
            flip_test: bool, in_graph: bool = False) -> PreparedFaces:
    """rgb `[H, W, 3]` uint8 + center/scale `[F, 2]` -> network input rows.

    in_graph: the network takes uint8 crops and normalises (and, if asked, flips and merges)
    itself, with the same float32 arithmetic as `normalize`/`merge_flip` (bit-identical).
    """
    center = np.asarray(center, np.float32)
    scale = np.asarray(scale, np.float32)
    crops = crop_faces(rgb, center, scale, config.input_size, config.pixel_std)
    if in_graph:
        return PreparedFaces(crops, center, scale, flip_test, merge_on_host=False)
    rows = normalize(crops, config.mean, config.std)
    merge = flip_test and not config.flip_test_in_graph
    if merge:
        rows = np.concatenate([rows, flip_inputs(rows)])
    return PreparedFaces(rows, center, scale, flip_test, merge_on_host=merge)


def finish(heatmaps: np.ndarray, faces: PreparedFaces, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """heatmap rows `[F or 2F, K, h, w]` -> landmarks `[F, K, 2]` (image px), scores `[F, K]`."""
    count = faces.num_faces
    if faces.merge_on_host:
        heatmaps = merge_flip(heatmaps[:count], heatmaps[count:], config.flip_pairs, config.shift_heatmap)
    return decode_heatmaps(heatmaps, faces.center, faces.scale, config.modulate_kernel, config.pixel_std)


def served_point_indices(point_set: str, num_keypoints: int) -> np.ndarray:
    """Indices of the points a point set returns from a `num_keypoints`-point model; raises
    ValueError for a WFLW view of a model that does not have the WFLW-98 layout."""
    if num_keypoints == NUM_KEYPOINTS:
        return point_set_indices(point_set)
    if point_set == "wflw98":
        return np.arange(num_keypoints)
    raise ValueError(f"point set {point_set!r} is a view of the WFLW 98-point layout; this model "
                     f"has {num_keypoints} keypoints (use wflw98 for all of them)")


def face_records(landmarks: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                 detections=None, point_set: str = "wflw98") -> list[dict]:
    """The response's per-face records, JSON-ready.

    landmarks `[F, K, 2]`, scores `[F, K]`, boxes `[F, 4]` (x, y, w, h, image px);
    detections: None (client boxes) or an object with `scores [F]` and `keypoints [F, 5, 2]`.
    point_set picks and orders the points (`keypoints.POINT_SETS`, views of the WFLW-98
    layout); scores follow their points. For a model with another keypoint count only
    `wflw98` ("all points") is meaningful. A non-finite score (a flat heatmap) becomes null:
    JSON has no NaN.
    """
    index = served_point_indices(point_set, landmarks.shape[1])
    landmarks = landmarks[:, index]
    scores = scores[:, index]
    records = []
    for i, (box, points, point_scores) in enumerate(zip(boxes, landmarks, scores)):
        detection = None
        if detections is not None:
            detection = {"score": float(detections.scores[i]),
                         "keypoints": np.asarray(detections.keypoints[i], np.float64).tolist()}
        mean = float(np.mean(point_scores))
        records.append({
            "bbox": [float(v) for v in box],
            "detection": detection,
            "landmarks": points.tolist(),
            "scores": [v if math.isfinite(v) else None for v in point_scores.tolist()],
            "score": mean if math.isfinite(mean) else None,
        })
    return records


def predict(run: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, center: np.ndarray,
            scale: np.ndarray, config: PipelineConfig, flip_test: bool,
            max_batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Synchronous prepare -> run (in chunks of max_batch rows) -> finish, for offline use."""
    faces = prepare(rgb, center, scale, config, flip_test)
    outputs = [run(faces.rows[i:i + max_batch]) for i in range(0, len(faces.rows), max_batch)]
    return finish(np.concatenate(outputs), faces, config)
