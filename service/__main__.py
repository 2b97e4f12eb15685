"""`python -m service`: serve with uvicorn; host, port and everything else from LANDMARKS_*.

`LANDMARKS_WORKERS=1` (default): one process serves, as an in-process uvicorn server.
`LANDMARKS_WORKERS=N`: uvicorn's supervisor starts N worker processes with the
multiprocessing *spawn* method (a fresh interpreter each, never a fork of a process that may
have initialised CUDA); each builds its own app from the environment
(`service.app:create_app`, as a factory), with its own onnxruntime session, batcher, warm-up
and golden self-check. They share one listening socket, bound here first. Before spawning:
onnxruntime's intra-op threads are divided among the workers (when LANDMARKS_ORT_THREADS is
0), and Prometheus's multiprocess directory is prepared so /metrics adds up all workers.

Everything that can be checked before serving is, so a mistake ends start-up at once with
one line and a non-zero exit: a bad setting (exit 2, naming its environment variable), a
missing model file or a directory in its place, a port that is taken (exit 3). A model that
fails to load ends start-up the same way (one log line, exit 3).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from .api.middleware import read_timeout_protocol
from .logs import logging_config
from .metrics import MULTIPROC_DIR_ENV, mark_worker_dead
from .settings import Settings

log = logging.getLogger("service")

INVALID_SETTINGS = 2
APP_FACTORY = "service.app:create_app"
# Settings whose values are never echoed back in an error line.
SECRET_SETTINGS = frozenset({"api_key"})


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the operator reads."""


def settings_error_line(exc: ValidationError) -> str:
    """One line naming each bad environment variable, e.g.
    `LANDMARKS_MAX_BATCH_SIZE: Input should be less than or equal to 1024 (given '5000')`."""
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error.get("loc") else ""
        name = f"LANDMARKS_{field.upper()}" if field else "LANDMARKS_*"
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        given = error.get("input")
        if field and field not in SECRET_SETTINGS and isinstance(given, (str, int, float)):
            message += f" (given {str(given)[:60]!r})"
        parts.append(f"{name}: {message}")
    return "invalid setting: " + "; ".join(parts)


def check_model_path(path: Path) -> None:
    """Fail before binding or spawning anything when there is no model file to open."""
    if path.is_dir():
        raise StartupError(f"LANDMARKS_MODEL_PATH is a directory, not an ONNX file: {path}")
    if not path.exists():
        raise StartupError(f"model file not found: {path} (LANDMARKS_MODEL_PATH). Run `make model` "
                           "(official checkpoint) or `make model-demo` (untrained weights).")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening address, bound before the model loads: a taken port ends start-up at
    once instead of after the warm-up. uvicorn listens on it (in every worker)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = {
            errno.EADDRINUSE: "another server is using it; stop it or set LANDMARKS_PORT",
            errno.EACCES: "ports below 1024 need privileges; set LANDMARKS_PORT",
            errno.EADDRNOTAVAIL: "no such address on this host; check LANDMARKS_HOST",
        }.get(exc.errno, "check LANDMARKS_HOST and LANDMARKS_PORT")
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc} ({hint})") from None
    except (socket.gaierror, UnicodeError) as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc} (check LANDMARKS_HOST)") from None
    sock.set_inheritable(True)
    return sock


def worker_ort_threads(settings: Settings) -> int:
    """onnxruntime intra-op threads per worker: the setting if given, else the cores shared
    out, so N workers do not each start one thread per core and oversubscribe them."""
    return settings.ort_threads or settings.cores_per_worker


class MetricsDir:
    """PROMETHEUS_MULTIPROC_DIR for the workers: the operator's (emptied of a previous run's
    files, as prometheus_client requires) or a fresh temporary one (removed at exit)."""

    def __init__(self) -> None:
        given = os.environ.get(MULTIPROC_DIR_ENV)
        self.owned = not given
        self.path = Path(given) if given else Path(tempfile.mkdtemp(prefix="landmarks-metrics-"))
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob("*.db"):
            stale.unlink()
        os.environ[MULTIPROC_DIR_ENV] = str(self.path)

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
            os.environ.pop(MULTIPROC_DIR_ENV, None)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor (spawned workers, restarted when they die, SIGTERM passed
    on to each and waited for), plus: a worker that fails to start makes the whole service
    exit non-zero, and a dead worker's live gauges leave /metrics."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.startup_failed = False
        self._pids: set[int] = set()

    def init_processes(self) -> None:
        super().init_processes()
        self._pids = {p.pid for p in self.processes}

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        if any(p.exitcode == STARTUP_FAILURE for p in self.processes):
            self.startup_failed = True
        live = {p.pid for p in self.processes}
        for pid in self._pids - live:  # replaced after dying, or retired (SIGHUP/SIGTTOU)
            mark_worker_dead(pid)
        self._pids = live

    def run(self) -> None:
        try:
            super().run()
        finally:
            for pid in self._pids:
                mark_worker_dead(pid)


def serve(settings: Settings) -> int:
    """Bind, then serve with one process or a supervisor and workers; -> exit code."""
    check_model_path(settings.model_path)
    workers = settings.workers
    common = {
        "log_config": logging_config(settings.log_level), "access_log": False,
        "http": read_timeout_protocol(settings.read_timeout_s),
        # SIGTERM: stop accepting, let in-flight requests finish for up to this long.
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
    sock = bind_socket(settings.host, settings.port)
    if workers == 1:
        from .app import create_app  # the supervisor of N workers never loads the app itself

        config = uvicorn.Config(create_app(settings), **common)
        log.info("bound http://%s:%d; serving once the model is loaded", settings.host, settings.port)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])  # a failed start-up exits here with STARTUP_FAILURE
        return 0 if server.started else STARTUP_FAILURE
    threads = worker_ort_threads(settings)
    os.environ["LANDMARKS_ORT_THREADS"] = str(threads)  # spawned workers read the environment
    metrics_dir = MetricsDir()
    try:
        config = uvicorn.Config(APP_FACTORY, factory=True, workers=workers, **common)
        log.info("listening on http://%s:%d with %d workers (%d onnxruntime threads each, "
                 "metrics in %s)", settings.host, settings.port, workers, threads, metrics_dir.path)
        supervisor = Supervisor(config, sockets=[sock])
        supervisor.run()
        return STARTUP_FAILURE if supervisor.startup_failed else 0
    finally:
        sock.close()
        metrics_dir.close()


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(settings_error_line(exc), file=sys.stderr)
        return INVALID_SETTINGS
    try:
        return serve(settings)
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
