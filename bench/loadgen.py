"""Closed-loop HTTP load generator in its own process (its own GIL), driven over a pipe.

`LoadGen()` starts `python -m bench.loadgen`; each `run(...)` sends one JSON job line and
waits for one JSON result line. A job keeps `concurrency` requests in flight (asyncio + httpx,
one keep-alive connection each) either for `warmup_s + seconds` or for exactly `requests`
requests, and returns one record per request: (start s, end s, status). The multipart body is
built once per job, so the client spends its CPU on HTTP, not on encoding.

On a 2-core machine this process competes with the server for CPU; each result carries the
CPU seconds the client used so the report can say how much.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from .common import ROOT

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

# --------------------------------------------------------------------------- parent side


class LoadGen:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "bench.loadgen"], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, url: str, image: str, bboxes: str | None, flip: bool, concurrency: int,
            seconds: float = 0.0, warmup_s: float = 0.0, requests: int = 0,
            timeout_s: float = 120.0) -> dict:
        job = {"url": url, "image": image, "bboxes": bboxes, "flip": flip,
               "concurrency": concurrency, "seconds": seconds, "warmup_s": warmup_s,
               "requests": requests, "timeout_s": timeout_s}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("load generator exited")
        result = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"load generator: {result['error']}")
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def window_stats(result: dict) -> dict:
    """Throughput and latency of the requests that *ended* inside the measuring window
    [warmup_s, warmup_s + seconds] (count jobs: all requests)."""
    from .common import percentile

    records = result["records"]
    if result["requests"]:
        lo, hi = 0.0, result["wall_s"]
    else:
        lo, hi = result["warmup_s"], result["warmup_s"] + result["seconds"]
    inside = [r for r in records if lo <= r[1] <= hi]
    ok = [r[1] - r[0] for r in inside if r[2] == 200]
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    span = hi - lo
    return {
        "completed": len(inside), "ok": len(ok), "rps": len(ok) / span if span > 0 else float("nan"),
        "p50": percentile(ok, 50), "p95": percentile(ok, 95), "p99": percentile(ok, 99),
        "mean": sum(ok) / len(ok) if ok else float("nan"),
        "errors": sum(v for k, v in statuses.items() if k != "200"), "statuses": statuses,
        "client_cpu_s": result["cpu_s"], "wall_s": result["wall_s"], "span_s": span,
        "latencies": ok,
    }


# --------------------------------------------------------------------------- child side


_BODIES: dict[tuple, tuple[bytes, str]] = {}


def _body(image: str, bboxes: str | None, flip: bool) -> tuple[bytes, str]:
    import httpx

    key = (image, bboxes, flip)
    if key not in _BODIES:
        with open(image, "rb") as f:
            data = f.read()
        fields = {"flip_test": "true" if flip else "false"}
        if bboxes is not None:
            fields["bboxes"] = bboxes
        request = httpx.Request("POST", "http://x/landmarks", data=fields,
                                files={"image": ("image.jpg", data, "image/jpeg")})
        _BODIES[key] = (request.read(), request.headers["content-type"])
    return _BODIES[key]


async def _job(spec: dict) -> dict:
    import httpx

    body, content_type = _body(spec["image"], spec["bboxes"], spec["flip"])
    concurrency = spec["concurrency"]
    count = spec["requests"]
    stop_at = spec["warmup_s"] + spec["seconds"]
    headers = {"content-type": content_type}
    records: list[tuple[float, float, object]] = []
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with httpx.AsyncClient(limits=limits, timeout=spec["timeout_s"]) as client:
        t0 = time.perf_counter()

        async def worker():
            nonlocal issued
            while True:
                if count:
                    if issued >= count:
                        return
                    issued += 1
                elif time.perf_counter() - t0 >= stop_at:
                    return
                start = time.perf_counter() - t0
                try:
                    response = await client.post(spec["url"], content=body, headers=headers)
                    status: object = response.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                records.append((start, time.perf_counter() - t0, status))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"records": records, "cpu_s": cpu, "wall_s": wall, "warmup_s": spec["warmup_s"],
            "seconds": spec["seconds"], "requests": count, "concurrency": concurrency}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = asyncio.run(_job(json.loads(line)))
        except Exception as exc:  # reported to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
