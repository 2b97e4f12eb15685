"""Prometheus metrics, all prefixed `landmarks_`, on a registry owned by one app instance.

With several worker processes (`LANDMARKS_WORKERS` > 1) prometheus_client runs in its
multiprocess mode: `python -m service` points `PROMETHEUS_MULTIPROC_DIR` at an empty
directory before the workers start, each worker writes its values to files there, and
`/metrics` (whichever worker answers it) reads them all. Counters and histograms are then
sums over every worker that ever ran; each gauge says how its per-process values combine:

- queue depth and in-flight requests: `livesum`, the service's total, over live workers
  (a dead worker's queue is gone, so its last value must not linger);
- ready: `livesum`, the number of live workers that are ready (1 or 0 with one process).
  The kernel hands a new connection to any worker, so the service answers every request
  only when this equals LANDMARKS_WORKERS; a minimum would hide how many are missing, and
  a worker that has not yet created its metrics would not lower it (`ready_workers()`
  gives the count to /readyz, which compares it with the expected number);
- model info: `livemax`, 1 for each model/provider some live worker serves.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGES = ("decode", "detect", "preprocess", "queue", "inference", "postprocess")
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, or None in single-process mode."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "landmarks_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "landmarks_request_duration_seconds", "HTTP request latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_latency = Histogram(
            "landmarks_stage_duration_seconds",
            "Per-request time spent in each pipeline stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "landmarks_batch_size", "Network inputs per onnxruntime run (before bucket padding)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self.queue_depth = Gauge(
            "landmarks_queue_depth", "Network inputs waiting for the batcher", registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "landmarks_inflight_requests",
            "POST requests whose body has arrived and that are being served", registry=r,
            multiprocess_mode="livesum",
        )
        self.faces = Counter("landmarks_faces", "Faces processed", registry=r)
        self.rejections = Counter(
            "landmarks_rejections", "Requests rejected, by reason (error code)", ["reason"], registry=r
        )
        self.model_info = Gauge(
            "landmarks_model_info", "The served model (value 1); provider is the one in use",
            ["model", "sha256", "provider", "precision", "trained"], registry=r,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge("landmarks_ready", "Worker processes ready to serve (1 with one process; "
                           "all are when it equals LANDMARKS_WORKERS)",
                           registry=r, multiprocess_mode="livesum")
        for stage in STAGES:  # export every series from the start, so dashboards see zeros
            self.stage_latency.labels(stage)

    def exposition(self) -> tuple[bytes, str]:
        """(Prometheus text, its content type): this process's registry, or with worker
        processes the combination of every worker's values."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=directory)
        return generate_latest(combined), CONTENT_TYPE_LATEST


    def ready_workers(self) -> int | None:
        """How many live worker processes are ready (the combined `landmarks_ready`), or None
        with one process, where this process's own readiness is the whole answer."""
        directory = multiprocess_dir()
        if directory is None:
            return None
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=directory)
        value = combined.get_sample_value("landmarks_ready")
        return int(value or 0)


def mark_worker_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters stay in the sums)."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)
