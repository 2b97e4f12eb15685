"""The real server (`python -m service`, uvicorn) as a child process on a free loopback port.

The one subprocess harness of the project: the tests use it, and so does `bench/` (bench may
import `tests`, a package, as it already does for `tests.reference`; the tests never import
`bench`, which is not part of the test run). Besides start/stop it reads what the benchmarks
need about the running server: the process tree (uvicorn's supervisor and its workers), CPU
seconds and RSS from /proc, and the Prometheus counters from /metrics.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`command` (normally `python -m service`) with LANDMARKS_* settings, in its own session
    (process group), so close() stops the whole tree.

    `settings` are LANDMARKS_* values without the prefix, e.g. `max_faces=8`, `providers="cuda,cpu"`.
    The server's output goes to `log_path`, else to the terminal with SHOW_SERVER_LOG=1, else away.
    """

    def __init__(self, command: list[str], model: Path, log_path: Path | None = None, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({"LANDMARKS_MODEL_PATH": str(model), "LANDMARKS_PORT": str(self.port),
                    "LANDMARKS_HOST": "127.0.0.1", "LANDMARKS_PROVIDERS": "cpu",
                    "LANDMARKS_LOG_LEVEL": "INFO"})
        env.update({f"LANDMARKS_{k.upper()}": str(v) for k, v in settings.items()})
        # What this server runs with (the report prints it).
        self.settings = {k: v for k, v in env.items() if k.startswith("LANDMARKS_")}
        self.log_path = log_path
        # The log stays open for the server's lifetime and is closed by close().
        if log_path is not None:
            self.log = open(log_path, "w")  # noqa: SIM115
        elif not os.environ.get("SHOW_SERVER_LOG"):
            self.log = open(os.devnull, "w")  # noqa: SIM115
        else:
            self.log = None
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT if self.log else None,
                                        start_new_session=True)

    @classmethod
    def python(cls, model: Path, log_path: Path | None = None, module: str = "service",
               **settings) -> Server:
        """`python -m <module>` with this interpreter (`module`: a drop-in for `service`)."""
        return cls([sys.executable, "-m", module], model, log_path, **settings)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Poll /readyz until 200; -> its body. Fails fast if the server exits or reports a
        permanent `not_ready` (e.g. a failed golden self-check)."""
        where = f"; see {self.log_path}" if self.log_path else ""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode} during "
                                     f"start-up{where}")
            try:
                response = httpx.get(self.url + "/readyz", timeout=5.0)
                if response.status_code == 200:
                    return response.json()
                body = response.json()
                if body.get("state") == "not_ready":
                    raise AssertionError(f"server not ready: {body.get('reason')}{where}")
            except (httpx.TransportError, ValueError):  # not listening yet / not JSON yet
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not become ready in {timeout:.0f} s{where}")

    def terminate(self, group: bool = False) -> None:
        """SIGTERM to the server (group=True: to its whole process group)."""
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signal.SIGTERM)
            else:
                self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.log:
            self.log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- what the benchmarks read

    def pids(self) -> list[int]:
        """The server's process and all its live descendants (uvicorn supervisor + workers)."""
        return process_tree(self.pid)

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the whole process tree (all threads, all workers)."""
        return sum(process_cpu_seconds(pid) for pid in self.pids())

    def rss_mib(self) -> float:
        """Resident memory of the process tree (MiB; shared pages count once per process)."""
        return sum(rss_mib(pid) for pid in self.pids())

    def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value}."""
        return parse_metrics(httpx.get(self.url + "/metrics", timeout=30.0).text)


# --------------------------------------------------------------------------- /proc readers


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):  # exited while we looked
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(sorted(children.get(current, [])))
    return tree


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, plus those of its children it has already reaped
    (0 if it has exited meanwhile)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{label="v",...}': value} (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            out[sample.name + (f"{{{labels}}}" if labels else "")] = float(sample.value)
    return out
