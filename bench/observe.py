"""The real server for the benchmarks, and what we read about it while it runs.

The subprocess harness itself (`Server`, `free_port`, /proc and /metrics readers) is the
tests' `tests/service/server.py`, shared so that there is one; this module adds only what the
benchmarks need on top: a server that logs to bench/out, an RSS/CPU sampler thread and the
per-stage means between two /metrics snapshots.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.service.server import Server, process_cpu_seconds, rss_mib

from .common import OUT, machine_cpu_seconds

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

__all__ = ["STAGES", "RssSampler", "Server", "load_window", "stage_means", "start_server"]


def start_server(model: Path, providers: str = "cpu", log_name: str = "server",
                 module: str = "service", **settings) -> Server:
    """`python -m <module>` on a free loopback port, its log in bench/out/<log_name>.log."""
    OUT.mkdir(parents=True, exist_ok=True)
    return Server.python(model, OUT / f"{log_name}.log", module=module, providers=providers,
                         **settings)


class RssSampler:
    """Samples the server's RSS and CPU every `interval` s in a thread while the `with` block
    runs (the server's process tree as it was when the block began)."""

    def __init__(self, server: Server, interval: float = 0.2):
        self.pids = server.pids()
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MiB)
        # (perf_counter, CPU-seconds of all processes, CPU-seconds of the server's tree)
        self.cpu: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            self.samples.append((now, sum(rss_mib(p) for p in self.pids)))
            self.cpu.append((now, machine_cpu_seconds(),
                             sum(process_cpu_seconds(p) for p in self.pids)))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> float:
        return max((m for _, m in self.samples), default=float("nan"))


STAGES = ("decode", "preprocess", "queue", "inference", "postprocess")


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean seconds per request of each server stage, the whole request and the mean batch size,
    between two /metrics snapshots."""
    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    out = {}
    for stage in STAGES:
        n = delta(f'landmarks_stage_duration_seconds_count{{stage="{stage}"}}')
        s = delta(f'landmarks_stage_duration_seconds_sum{{stage="{stage}"}}')
        out[stage] = s / n if n else float("nan")
    n = delta('landmarks_request_duration_seconds_count{route="/landmarks"}')
    s = delta('landmarks_request_duration_seconds_sum{route="/landmarks"}')
    out["request"] = s / n if n else float("nan")
    bn, bs = delta("landmarks_batch_size_count"), delta("landmarks_batch_size_sum")
    out["mean_batch"] = bs / bn if bn else float("nan")
    out["batches"] = bn
    return out


def load_window(server: Server, loadgen, image: Path, boxes_json: str | None, flip: bool,
                concurrency: int, seconds: float = 0.0, warmup_s: float = 0.0,
                requests: int = 0) -> dict:
    """One closed-loop load job against `server`, with what the server did meanwhile.

    -> `loadgen.window_stats` plus: `server` (stage means from /metrics), `server_cpu_s` (CPU
    of the server's process tree over the whole job, warm-up included), `ok_total` (200s over
    the whole job, so `server_cpu_s / ok_total` is CPU per request), `faces_counted` (the
    `landmarks_faces_total` delta), `others_cpu_s` (CPU of every process that is neither the
    server, the load generator nor this one), `rss_peak` (MiB).
    """
    from .loadgen import window_stats

    before = server.metrics()
    cpu0, all0, own0 = server.cpu_seconds(), machine_cpu_seconds(), time.process_time()
    with RssSampler(server) as sampler:
        result = loadgen.run(server.url + "/landmarks", str(image), boxes_json, flip, concurrency,
                             seconds=seconds, warmup_s=warmup_s, requests=requests)
    server_cpu = server.cpu_seconds() - cpu0
    all_cpu, own_cpu = machine_cpu_seconds() - all0, time.process_time() - own0
    after = server.metrics()
    stats = window_stats(result)
    stats["server"] = stage_means(before, after)
    stats["server_cpu_s"] = server_cpu
    stats["ok_total"] = sum(1 for r in result["records"] if r[2] == 200)
    stats["records_total"] = len(result["records"])
    stats["faces_counted"] = after.get("landmarks_faces_total", 0.0) - before.get(
        "landmarks_faces_total", 0.0)
    stats["others_cpu_s"] = max(0.0, all_cpu - server_cpu - stats["client_cpu_s"] - own_cpu)
    stats["rss_peak"] = sampler.peak
    return stats
