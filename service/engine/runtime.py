"""The served model's lifecycle: open the session, warm every batch shape, self-check, ready.

Readiness is a state machine: loading -> warming -> ready, or -> not_ready with a reason
(GPU required but missing, golden self-check drift, warm-up failure). Only `ready` serves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from service.metrics import Metrics
from service.pipeline import faces as face_pipeline
from service.pipeline.detect import DetectorCalibration, detector_boxes_to_center_scale
from service.settings import Settings

from .batcher import BatchTiming, DynamicBatcher
from .detector import FaceDetector
from .golden import GoldenCheckError, flip_on_host, run_golden_check
from .graph import load_model, wrap_model, wrap_refusal
from .session import create_session, open_session, run_session

log = logging.getLogger("service.engine")


@dataclass
class Readiness:
    state: str = "loading"  # loading | warming | ready | not_ready
    reason: str = ""
    warmed_batch_sizes: list[int] = field(default_factory=list)
    warmup_seconds: float | None = None
    golden: dict | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class LandmarkRuntime:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.readiness = Readiness()
        self._stopping = False
        # The requests' CPU work (decode, crops, DARK, drawing) runs on this pool, one thread
        # per core of this worker's share (at least 2, so one slow image cannot stall the
        # rest). Parallelism comes from concurrent requests, so OpenCV's own thread pool is
        # off: per call it would only add hand-offs (and with N workers, N x all-cores
        # threads). Measured: 4x fewer context switches, about 15 % less server CPU per face.
        self.cpu_threads = max(2, settings.cores_per_worker)
        self.cpu_pool = ThreadPoolExecutor(self.cpu_threads, thread_name_prefix="landmarks-cpu")
        cv2.setNumThreads(1)
        self.session, self.info = open_session(
            settings.model_path, settings.provider_list, settings.device_id,
            settings.max_batch_size, settings.ort_threads, auto=settings.providers_auto,
        )
        # The face detector (None with LANDMARKS_DETECTOR=none): same providers as the model.
        self.detector: FaceDetector | None = None
        self.calibration: DetectorCalibration | None = None
        if settings.detector == "retinaface":
            spinning = settings.ort_spinning if settings.ort_spinning is not None else not self.info.on_gpu
            self.detector = FaceDetector(settings.detector_path, self.info.active_providers,
                                         settings.device_id, settings.ort_threads, spinning)
            self.calibration = DetectorCalibration.load(self._calibration_path())
            log.info("face detector %s on %s", settings.detector_path, self.detector.provider)
        info = self.info
        log.info("model %s (%s, sha256 %s) on %s; requested %s", info.name, info.precision,
                 info.sha256[:12], info.active_providers, info.requested_providers,
                 extra={"provider": info.provider})
        for warning in info.warnings:
            log.warning(warning)
        metrics.model_info.labels(info.name, info.sha256, info.provider, info.precision,
                                  str(info.trained).lower()).set(1)
        self.in_graph, self.runs = self._open_served_graphs()
        self.batcher = DynamicBatcher(
            self.runs, settings.max_batch_size, settings.batch_timeout_ms, settings.max_queue,
            # Fixed shapes matter on GPUs (cuDNN autotuning, TensorRT profiles); on CPU,
            # padding would only burn cycles.
            pad_to_buckets=info.on_gpu,
            on_batch=metrics.batch_size.observe,
            on_depth=metrics.queue_depth.set,
        )

    @property
    def config(self):
        return self.info.config

    def _open_served_graphs(self):
        """-> (in_graph, batcher run functions).

        On a GPU (or with LANDMARKS_PREPROCESS_IN_GRAPH=true), a plain model file is wrapped
        at load time into two graphs taking uint8 crops, with
        normalisation and (in one of them) the flip test inside: 4x less data to the device,
        half the data back, no host-side flip copies or merge, and bit-identical results
        (tests/service/test_graph_wrap.py). Files that cannot be wrapped keep the host path.
        """
        settings, info = self.settings, self.info
        wanted = settings.preprocess_in_graph
        if wanted is None:
            wanted = info.on_gpu
        if not wanted:
            log.info("normalisation and flip test run on the host (LANDMARKS_PREPROCESS_IN_GRAPH "
                     "unset on %s, or false)", info.provider)
            return False, self.run_batch
        refusal = wrap_refusal(info.path, info.config)
        if refusal is not None:
            log.info("normalisation and flip test run on the host: %s", refusal)
            return False, self.run_batch
        spinning = settings.ort_spinning if settings.ort_spinning is not None else not info.on_gpu
        original = load_model(info.path)  # parsed once for both wraps
        self.graphs = {}
        for flip in (True, False):
            self.graphs[flip] = create_session(
                wrap_model(original, info.config, flip), info.active_providers, settings.device_id,
                settings.max_batch_size, settings.ort_threads, quiet=True,
                cache_dir=info.path.parent / ".trt_cache", spinning=spinning)
        self.session = None  # the plain graph is not served; let its memory go
        names = {flip: (g.get_inputs()[0].name, g.get_outputs()[0].name) for flip, g in self.graphs.items()}

        def runner(flip: bool):
            graph, (input_name, output_name) = self.graphs[flip], names[flip]
            return lambda rows: graph.run([output_name], {input_name: rows})[0]

        log.info("normalisation and flip test run inside the graph (uint8 crops in)")
        return True, {flip: runner(flip) for flip in (True, False)}

    def _calibration_path(self):
        # A calibration refitted on WFLW (`model_export calibrate-detector`) sits beside the
        # detector weights; otherwise the one fitted on the project's sample faces is used.
        path = self.settings.detector_path.with_name("detector_calibration.json")
        return path if path.is_file() else None

    async def run_cpu(self, fn, *args):
        """fn(*args) on the request CPU pool, awaited from the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, functools.partial(fn, *args))

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        return run_session(self.session, self.info, batch)

    def prepare(self, rgb: np.ndarray, center: np.ndarray, scale: np.ndarray,
                flip_test: bool) -> face_pipeline.PreparedFaces:
        """Crops for this runtime's network (thread-safe)."""
        return face_pipeline.prepare(rgb, center, scale, self.config, flip_test, in_graph=self.in_graph)

    async def infer(self, faces: face_pipeline.PreparedFaces,
                    timeout_s: float) -> tuple[np.ndarray, BatchTiming]:
        """Heatmap rows for `faces.rows`, through the dynamic batcher."""
        variant = faces.flip_test if self.in_graph else None
        return await self.batcher.submit(faces.rows, timeout_s=timeout_s, variant=variant)

    def detector_centers_and_scales(self, boxes_xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detector boxes -> the center/scale the landmark model was trained on (calibrated)."""
        return detector_boxes_to_center_scale(boxes_xywh, self.calibration, self.config)

    def warm_up_and_check(self) -> None:
        """Blocking: runs in a worker thread while /healthz already answers."""
        readiness = self.readiness
        readiness.state = "warming"
        width, height = self.config.input_size
        started = time.perf_counter()
        try:
            if self.in_graph:
                readiness.warmed_batch_sizes = self.batcher.warm_up((height, width, 3), np.uint8)
            else:
                readiness.warmed_batch_sizes = self.batcher.warm_up((3, height, width))
            if self.detector is not None:
                self.detector.warm_up(self.settings.detect_max_side)
            readiness.warmup_seconds = round(time.perf_counter() - started, 3)
            tolerance = self.settings.golden_tolerance_px
            if self.in_graph:
                readiness.golden = run_golden_check(self.runs[True], self.info, tolerance, in_graph=True)
                # The graph that serves flip_test=false is a second graph: check it as well,
                # through the host-side flip test (same record).
                plain = run_golden_check(flip_on_host(self.runs[False], self.config), self.info,
                                         tolerance, in_graph=True, graph="plain graph")
                if readiness.golden.get("status") == "passed":
                    readiness.golden["plain_graph_max_deviation_px"] = plain.get("max_deviation_px")
            else:
                readiness.golden = run_golden_check(self.run_batch, self.info, tolerance)
        except GoldenCheckError as exc:
            return self._not_ready(str(exc))
        except Exception as exc:  # a provider that fails at run time, out of memory, ...
            log.exception("warm-up failed")
            return self._not_ready(f"warm-up failed: {str(exc)[:300]}")
        if self.settings.require_gpu and not self.info.on_gpu:
            return self._not_ready(
                f"LANDMARKS_REQUIRE_GPU is set but onnxruntime runs on {self.info.provider} "
                f"(requested {self.info.requested_providers})"
            )
        if self._stopping:  # shutdown began while warming up: never start serving
            return
        self.batcher.start()
        readiness.state = "ready"
        self.metrics.ready.set(1)
        log.info("ready: warmed batch sizes %s in %.2f s", readiness.warmed_batch_sizes,
                 readiness.warmup_seconds)

    def _not_ready(self, reason: str) -> None:
        self.readiness.state = "not_ready"
        self.readiness.reason = reason
        self.metrics.ready.set(0)
        log.error("NOT READY: %s", reason)

    def stop(self) -> None:
        self._stopping = True
        self.metrics.ready.set(0)
        self.batcher.stop()
        self.cpu_pool.shutdown(wait=True)
