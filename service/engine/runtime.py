"""The served model's lifecycle: open the session, warm every batch shape, self-check, ready.

Readiness is a state machine: loading -> warming -> ready, or -> not_ready with a reason
(GPU required but missing, golden self-check drift, warm-up failure). Only `ready` serves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from service.metrics import Metrics
from service.settings import Settings

from .batcher import DynamicBatcher
from .golden import GoldenCheckError, run_golden_check
from .session import open_session

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
        self.session, self.info = open_session(
            settings.model_path, settings.provider_list, settings.device_id,
            settings.max_batch_size, settings.ort_threads,
        )
        info = self.info
        log.info("model %s (%s, sha256 %s) on %s; requested %s", info.name, info.precision,
                 info.sha256[:12], info.active_providers, info.requested_providers,
                 extra={"provider": info.provider})
        for warning in info.warnings:
            log.warning(warning)
        metrics.model_info.labels(info.name, info.sha256, info.provider, info.precision,
                                  str(info.trained).lower()).set(1)
        self.batcher = DynamicBatcher(
            self.run_batch, settings.max_batch_size, settings.batch_timeout_ms, settings.max_queue,
            # Fixed shapes matter on GPUs (cuDNN autotuning, TensorRT profiles); on CPU,
            # padding would only burn cycles.
            pad_to_buckets=info.on_gpu,
            on_batch=metrics.batch_size.observe,
            on_depth=metrics.queue_depth.set,
        )

    @property
    def config(self):
        return self.info.config

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.info.output_name], {self.info.input_name: batch})[0]

    def warm_up_and_check(self) -> None:
        """Blocking: runs in a worker thread while /healthz already answers."""
        readiness = self.readiness
        readiness.state = "warming"
        width, height = self.config.input_size
        started = time.perf_counter()
        try:
            readiness.warmed_batch_sizes = self.batcher.warm_up((3, height, width))
            readiness.warmup_seconds = round(time.perf_counter() - started, 3)
            readiness.golden = run_golden_check(self.run_batch, self.info,
                                                self.settings.golden_tolerance_px)
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
        self.metrics.ready.set(0)
        self.batcher.stop()
