"""The real server (`python -m service`, uvicorn) as a child process, and what we read about it:
readiness, RSS and CPU time from /proc, and the Prometheus counters from /metrics."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .common import OUT, ROOT, machine_cpu_seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m service` on a free loopback port with LANDMARKS_* settings."""

    def __init__(self, model: Path, providers: str = "cpu", log_name: str = "server",
                 module: str = "service", **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({"LANDMARKS_MODEL_PATH": str(model), "LANDMARKS_PORT": str(self.port),
                    "LANDMARKS_HOST": "127.0.0.1", "LANDMARKS_PROVIDERS": providers})
        env.update({f"LANDMARKS_{k.upper()}": str(v) for k, v in settings.items()})
        self.settings = {k: v for k, v in env.items() if k.startswith("LANDMARKS_")}
        OUT.mkdir(parents=True, exist_ok=True)
        self.log_path = OUT / f"{log_name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 300.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} during start-up; "
                                   f"see {self.log_path}")
            try:
                response = httpx.get(self.url + "/readyz", timeout=5.0)
                if response.status_code == 200:
                    return response.json()
                body = response.json()
                if body.get("state") == "not_ready":
                    raise RuntimeError(f"server not ready: {body.get('reason')}")
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become ready in {timeout:.0f} s; see {self.log_path}")

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the server process (all its threads)."""
        return process_cpu_seconds(self.pid)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(self.url + "/metrics", timeout=30.0).text)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples a process's RSS every `interval` s in a thread while the `with` block runs."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MiB)
        # (perf_counter, CPU-seconds of all processes, CPU-seconds of this pid)
        self.cpu: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = time.perf_counter()
                self.samples.append((now, rss_mib(self.pid)))
                self.cpu.append((now, machine_cpu_seconds(), process_cpu_seconds(self.pid)))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> float:
        return max((m for _, m in self.samples), default=float("nan"))


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _LINE.match(line.strip())
        if match:
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


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
