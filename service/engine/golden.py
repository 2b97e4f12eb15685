"""Golden self-check: the exporter stores the landmarks the model gives on a deterministic
synthetic input; at start-up the service recomputes them on the provider it actually got.

A corrupt file, a broken fp16 conversion or a misbehaving execution provider shows up as a
deviation in pixels before the first user request, not after.

Only keypoints with a clear heatmap peak are recorded ("stable" points): on an untrained
model many maps have near-equal peaks whose argmax may legitimately flip under fp16 or a
different kernel, which would be a false alarm rather than a fault.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from service.pipeline.config import PipelineConfig
from service.pipeline.faces import finish, prepare
from service.pipeline.flip import merge_flip

log = logging.getLogger("service.engine")

GOLDEN_VERSION = 1
# A point is recorded only if its peak beats everything > PEAK_RADIUS heatmap px away by
# this fraction of the peak value.
PEAK_MARGIN = 0.10
PEAK_RADIUS = 2


class GoldenCheckError(RuntimeError):
    pass


def golden_image(size: tuple[int, int]) -> np.ndarray:
    """A fixed smooth RGB pattern `[H, W, 3]` uint8 (closed form: no RNG, no files)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127.5 + 127.5 * np.sin(0.045 * x + 0.031 * y + 0.9 * c) * np.cos(0.027 * y - 0.013 * x * c)
        for c in range(3)
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def _golden_geometry(config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    width, height = config.input_size
    center = np.array([[width / 2, height / 2]], np.float32)
    scale = np.array([[width / config.pixel_std, height / config.pixel_std]], np.float32)
    return center, scale


def _stable_points(heatmaps: np.ndarray) -> np.ndarray:
    """heatmaps `[K, h, w]` -> bool `[K]`: maps whose peak is clearly the global maximum."""
    k, h, w = heatmaps.shape
    flat = heatmaps.reshape(k, -1)
    peak_index = flat.argmax(axis=1)
    peak = flat[np.arange(k), peak_index]
    py, px = np.divmod(peak_index, w)
    yy, xx = np.mgrid[0:h, 0:w]
    far = (np.abs(yy[None] - py[:, None, None]) > PEAK_RADIUS) | (
        np.abs(xx[None] - px[:, None, None]) > PEAK_RADIUS)
    runner_up = np.where(far, heatmaps, -np.inf).reshape(k, -1).max(axis=1)
    return (peak > 0) & (peak - runner_up > PEAK_MARGIN * np.abs(peak))


def _run_golden(run: Callable[[np.ndarray], np.ndarray], config: PipelineConfig,
                in_graph: bool = False):
    """-> landmarks `[K, 2]` and the heatmaps DARK decoded `[K, h, w]`.

    in_graph: `run` is the served flip-test graph taking uint8 crops (it merges itself).
    """
    center, scale = _golden_geometry(config)
    faces = prepare(golden_image(config.input_size), center, scale, config, flip_test=True,
                    in_graph=in_graph)
    rows = run(faces.rows)
    landmarks, _ = finish(rows, faces, config)
    decoded = merge_flip(rows[:1], rows[1:], config.flip_pairs, config.shift_heatmap) \
        if faces.merge_on_host else rows[:1]
    return landmarks[0], decoded[0]


def flip_on_host(run_plain: Callable[[np.ndarray], np.ndarray], config: PipelineConfig
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """A served *plain* graph (uint8 crops `[N, H, W, 3]` -> heatmaps, no flip test) as a
    flip-test run: crops and their mirror images in one batch, merged on the host.

    Mirroring the uint8 crop before the graph normalises it equals mirroring the normalised
    input (normalisation is per pixel), so this is the flip test of the host path; the
    golden record (flip test on) then checks the plain graph too.
    """
    def run(crops: np.ndarray) -> np.ndarray:
        count = len(crops)
        rows = run_plain(np.concatenate([crops, np.ascontiguousarray(crops[:, :, ::-1])]))
        return merge_flip(rows[:count], rows[count:], config.flip_pairs, config.shift_heatmap)

    return run


def make_golden_record(run: Callable[[np.ndarray], np.ndarray], config: PipelineConfig) -> dict:
    """What the exporter stores in metadata (`landmarks.golden`)."""
    landmarks, heatmaps = _run_golden(run, config)
    stable = _stable_points(heatmaps)
    return {
        "version": GOLDEN_VERSION,
        "input": "golden_image sinusoid pattern, center = crop centre, scale = input/pixel_std, flip test on",
        "points": np.flatnonzero(stable).tolist(),
        "landmarks": landmarks[stable].astype(float).round(5).tolist(),
    }


def run_golden_check(run: Callable[[np.ndarray], np.ndarray], info, tolerance_px: float,
                     in_graph: bool = False, graph: str = "") -> dict:
    """Recompute the golden landmarks through the served graph (`run`, on the provider in use);
    raise GoldenCheckError if they drift past tolerance. `graph` names the graph checked in
    the messages when a process serves more than one."""
    record = info.golden
    if not record:
        log.warning("golden self-check skipped: %s carries no golden data (not exported by "
                    "model_export?)", info.path.name)
        return {"status": "skipped", "reason": "no golden data in the model file"}
    if record.get("version") != GOLDEN_VERSION:
        log.warning("golden self-check skipped: unknown golden record version %s", record.get("version"))
        return {"status": "skipped", "reason": f"golden record version {record.get('version')}"}
    points = np.asarray(record["points"], int)
    if len(points) == 0:
        return {"status": "skipped", "reason": "no keypoint with a clear peak to check"}
    landmarks, _ = _run_golden(run, info.config, in_graph)
    expected = np.asarray(record["landmarks"], np.float64)
    deviation = np.linalg.norm(landmarks[points].astype(np.float64) - expected, axis=1)
    worst = float(np.nan_to_num(deviation, nan=np.inf).max())
    result = {"status": "passed", "points_checked": int(len(points)),
              "max_deviation_px": round(worst, 4), "tolerance_px": tolerance_px}
    where = f"{info.provider} ({graph})" if graph else info.provider
    if not worst <= tolerance_px:
        kp = int(points[int(np.nan_to_num(deviation, nan=np.inf).argmax())])
        raise GoldenCheckError(
            f"golden self-check failed on {where}: landmarks deviate by up to {worst:.3f} px "
            f"(keypoint {kp}; tolerance {tolerance_px} px over {len(points)} points). The model file "
            "is corrupt, its fp16 conversion is broken, or the execution provider misbehaves."
        )
    log.info("golden self-check passed on %s: max deviation %.4f px over %d points",
             where, worst, len(points))
    return result
