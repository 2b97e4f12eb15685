"""Soak: steady load on a real server for N minutes; RSS and latency per window -> bench/SOAK.md.

    .venv/bin/python -m bench.soak [--minutes 10] [--window 30] [--concurrency 4]
                                   [--model w18|tiny|PATH] [--flip] [--output bench/SOAK.md]

Not part of `make bench` or `make test`. The server is `python -m service` (uvicorn) on
loopback; the load generator (bench/loadgen.py) runs in its own process, closed loop, and its
records are cut into windows after the run; RSS is sampled every second meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from .common import (
    BENCH,
    SAMPLES,
    dump_json,
    ensure_model,
    loadavg,
    log,
    machine,
    median,
    ms,
    percentile,
    table,
    versions_line,
)
from .loadgen import LoadGen
from .observe import RssSampler, start_server

IMAGE = SAMPLES / "36_Football_americanfootball_ball_36_415.jpg"


def _window_rows(records: list, rss: list, cpu: list, seconds: float,
                 window: float) -> tuple[list[list], list[float]]:
    """One table row per `window` seconds: requests, latency, errors, RSS, CPU shares.

    records: (start s, end s, status) per request; rss: (s, MiB); cpu: (s, CPU-seconds of
    all processes, CPU-seconds of the server). -> (rows, p50 latency per window).
    """
    n_windows = max(1, round(seconds / window))
    rows, window_p50 = [], []
    for w in range(n_windows):
        lo, hi = w * window, (w + 1) * window
        inside = [r for r in records if lo <= r[1] < hi]
        ok = [r[1] - r[0] for r in inside if r[2] == 200]
        errors = len(inside) - len(ok)
        rss_in = [m for t, m in rss if lo <= t < hi]
        rss_last = rss_in[-1] if rss_in else float("nan")
        cpu_in = [x for x in cpu if lo <= x[0] < hi]
        if len(cpu_in) >= 2:
            span = cpu_in[-1][0] - cpu_in[0][0]
            server_cpu = (cpu_in[-1][2] - cpu_in[0][2]) / span
            rest_cpu = (cpu_in[-1][1] - cpu_in[0][1]) / span - server_cpu
        else:
            server_cpu = rest_cpu = float("nan")
        window_p50.append(percentile(ok, 50))
        rows.append([f"{lo / 60:.1f}-{hi / 60:.1f}", len(ok), f"{len(ok) / window:.2f}",
                     ms(percentile(ok, 50), 0), ms(percentile(ok, 95), 0),
                     ms(percentile(ok, 99), 0), errors, f"{rss_last:.0f}",
                     f"{max(rss_in, default=float('nan')):.0f}", f"{server_cpu:.0%}",
                     f"{rest_cpu:.0%}"])
    return rows, window_p50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per table row")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--model", default="w18", help="w18, tiny (random-init exports) or an ONNX path")
    parser.add_argument("--flip", action="store_true", help="flip test on (default off)")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--output", type=Path, default=BENCH / "SOAK.md")
    args = parser.parse_args(argv)
    command = "python -m bench.soak " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    model = ensure_model(args.model) if args.model in ("w18", "tiny") else Path(args.model)
    meta = json.loads((SAMPLES / "test_wflw.json").read_text())
    image_id = next(i["id"] for i in meta["images"] if i["file_name"] == IMAGE.name)
    boxes = json.dumps([next(a["bbox"] for a in meta["annotations"] if a["image_id"] == image_id)])
    seconds = args.minutes * 60
    load0 = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M %Z")

    server = start_server(model, providers=args.providers, log_name="soak")
    loadgen = LoadGen()
    try:
        server.wait_ready()
        time.sleep(0.5)
        rss_ready = server.rss_mib()
        log(f"soak: {args.minutes:g} min at concurrency {args.concurrency}, flip "
            f"{'on' if args.flip else 'off'}, model {model.name}")
        with RssSampler(server, 1.0) as sampler:
            t_start = time.perf_counter()
            result = loadgen.run(server.url + "/landmarks", str(IMAGE), boxes, args.flip,
                                 args.concurrency, seconds=seconds, warmup_s=0.0)
        time.sleep(0.5)
        rss_end = server.rss_mib()
        alive = server.process.poll() is None
    finally:
        loadgen.close()
        server.close()

    records = result["records"]
    rss = [(t - t_start, m) for t, m in sampler.samples]
    cpu = [(t - t_start, a, p) for t, a, p in sampler.cpu]
    rows, window_p50 = _window_rows(records, rss, cpu, seconds, args.window)
    first_rss = next((m for t, m in rss if t >= args.window), rss_ready)
    dump_json("soak", {"records": records, "rss": rss})
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    md = [
        "# Soak results",
        "",
        (f"Started {started}; command `{command}`. Machine: {machine()}. Versions: {versions_line()}. "
        f"1-minute load average {load0} before -> {loadavg()} after."),
        "",
        (f"Real server (`python -m service`, uvicorn, one process, `LANDMARKS_PROVIDERS="
        f"{args.providers}`, defaults otherwise) serving `{model.name}`; {args.concurrency} "
        f"requests in flight from `bench/loadgen.py` (separate process) for {args.minutes:g} "
        f"minutes; request = the 1024x661 WFLW sample JPEG with its face box, flip test "
        f"{'on' if args.flip else 'off'}. RSS = VmRSS from /proc, sampled every second. On a "
        "2-core machine the load generator shares the CPU with the server (200 % = both cores); "
        "the last column shows when other processes took CPU too."),
        "",
        table(["minutes", "requests OK", "req/s", "p50 (ms)", "p95 (ms)", "p99 (ms)", "errors",
               "RSS at window end (MiB)", "RSS max (MiB)", "server CPU",
               "CPU of everything else (load generator + other processes)"], rows),
        "",
        (f"Totals: {len(records)} requests, status counts {statuses}; server "
        f"{'still alive' if alive else 'DIED'} at the end. RSS {rss_ready:.0f} MiB after warm-up, "
        f"{first_rss:.0f} MiB after the first window, {rss_end:.0f} MiB at the end "
        f"({(rss_end - first_rss) / first_rss * 100:+.2f} % after the first window). "
        f"Latency p50 first window {ms(window_p50[0], 0)} ms, last window "
        f"{ms(window_p50[-1], 0)} ms (median of windows {ms(median(window_p50), 0)} ms)."),
        "",
        "See [RESULTS.md](RESULTS.md) for the main benchmarks.",
        "",
    ]
    args.output.write_text("\n".join(md))
    log(f"soak: wrote {args.output}")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
