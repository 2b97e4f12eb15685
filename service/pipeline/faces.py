"""The per-request pipeline around the network, composed from the single-step modules.

    prepare(): image + center/scale -> network input rows (crops, normalised; flipped
               copies appended when flip test is on)
    finish():  network output rows -> landmarks in image pixels + per-point scores

The service, the evaluator and the benchmarks all go through these two functions; only
how the rows reach the network differs (dynamic batcher vs a direct session.run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .config import PipelineConfig
from .dark import decode_heatmaps
from .flip import flip_inputs, merge_flip
from .geometry import box_to_center_scale
from .preprocess import crop_faces, normalize


@dataclass
class PreparedFaces:
    rows: np.ndarray  # [F or 2F, 3, H, W] float32; flipped copies follow the originals
    center: np.ndarray  # [F, 2] float32
    scale: np.ndarray  # [F, 2] float32
    flip_test: bool

    @property
    def num_faces(self) -> int:
        return len(self.center)


def centers_and_scales(boxes_xywh: np.ndarray, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """boxes `[F, 4]` (x, y, w, h) -> center `[F, 2]`, scale `[F, 2]` (mmpose convention)."""
    return box_to_center_scale(boxes_xywh, config.aspect_ratio, config.bbox_padding, config.pixel_std)


def prepare(rgb: np.ndarray, center: np.ndarray, scale: np.ndarray, config: PipelineConfig,
            flip_test: bool) -> PreparedFaces:
    """rgb `[H, W, 3]` uint8 + center/scale `[F, 2]` -> network input rows."""
    crops = crop_faces(rgb, center, scale, config.input_size)
    rows = normalize(crops, config.mean, config.std)
    if flip_test and not config.flip_test_in_graph:
        rows = np.concatenate([rows, flip_inputs(rows)])
    return PreparedFaces(rows, np.asarray(center, np.float32), np.asarray(scale, np.float32),
                         flip_test and not config.flip_test_in_graph)


def finish(heatmaps: np.ndarray, faces: PreparedFaces, config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """heatmap rows `[F or 2F, K, h, w]` -> landmarks `[F, K, 2]` (image px), scores `[F, K]`."""
    count = faces.num_faces
    if faces.flip_test:
        heatmaps = merge_flip(heatmaps[:count], heatmaps[count:], config.flip_pairs, config.shift_heatmap)
    return decode_heatmaps(heatmaps, faces.center, faces.scale, config.modulate_kernel)


def predict(run: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, center: np.ndarray,
            scale: np.ndarray, config: PipelineConfig, flip_test: bool,
            max_batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Synchronous prepare -> run (in chunks of max_batch rows) -> finish, for offline use."""
    faces = prepare(rgb, center, scale, config, flip_test)
    outputs = [run(faces.rows[i:i + max_batch]) for i in range(0, len(faces.rows), max_batch)]
    return finish(np.concatenate(outputs), faces, config)
