"""Start the real server (uvicorn, a separate process) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, command: list[str], model: Path, log_path: Path | None = None, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({"LANDMARKS_MODEL_PATH": str(model), "LANDMARKS_PORT": str(self.port),
                    "LANDMARKS_HOST": "127.0.0.1", "LANDMARKS_PROVIDERS": "cpu",
                    "LANDMARKS_LOG_LEVEL": "INFO"})
        env.update({f"LANDMARKS_{k.upper()}": str(v) for k, v in settings.items()})
        if log_path is not None:
            self.log = open(log_path, "w")
        else:
            self.log = open(os.devnull, "w") if not os.environ.get("SHOW_SERVER_LOG") else None
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT if self.log else None,
                                        start_new_session=True)

    @classmethod
    def python(cls, model: Path, log_path: Path | None = None, **settings) -> "Server":
        return cls([sys.executable, "-m", "service"], model, log_path, **settings)

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode} during start-up")
            try:
                response = httpx.get(self.url + "/readyz", timeout=2.0)
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def terminate(self, group: bool = False) -> None:
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signal.SIGTERM)
            else:
                self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.log:
            self.log.close()
