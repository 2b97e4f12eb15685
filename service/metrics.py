"""Prometheus metrics, all prefixed `landmarks_`, on a registry owned by one app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGES = ("decode", "preprocess", "queue", "inference", "postprocess")


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
            "landmarks_queue_depth", "Network inputs waiting for the batcher", registry=r
        )
        self.inflight = Gauge(
            "landmarks_inflight_requests", "POST /landmarks requests being served", registry=r
        )
        self.faces = Counter("landmarks_faces", "Faces processed", registry=r)
        self.rejections = Counter(
            "landmarks_rejections", "Requests rejected, by reason (error code)", ["reason"], registry=r
        )
        self.model_info = Gauge(
            "landmarks_model_info", "The served model (value 1); provider is the one in use",
            ["model", "sha256", "provider", "precision", "trained"], registry=r,
        )
        self.ready = Gauge("landmarks_ready", "1 when /readyz answers 200", registry=r)
        for stage in STAGES:  # export every series from the start, so dashboards see zeros
            self.stage_latency.labels(stage)
