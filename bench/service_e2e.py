"""Section 3, the service end to end: the real server (`python -m service`, uvicorn, one worker)
on loopback, driven by the closed-loop load generator in another process at concurrency 1, 4,
16 and 64, flip test off and on; the same work through a bare `session.run` loop in this
process is the reference, timed in alternation with the HTTP windows (server idle meanwhile).

    service overhead = service time / bare model time
      c = 1:   HTTP latency per face  /  session.run latency for that face's rows (1, or 2 with flip)
      c >= 4:  bare faces/s at the best batch size  /  HTTP faces/s
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from service.api.landmarks import _finish
from service.engine.session import open_session
from service.pipeline import faces as face_pipeline
from service.pipeline.preprocess import decode_image

from .common import (
    ROOT,
    SAMPLES,
    Context,
    SectionResult,
    dump_json,
    ensure_model,
    flat,
    loadavg,
    log,
    machine_cpu_seconds,
    median,
    ms,
    percentile,
    ratio_text,
    stamp,
    table,
    time_calls,
)
from .loadgen import LoadGen, window_stats
from .server import RssSampler, Server, stage_means
from .stages import response_body

IMAGE = SAMPLES / "36_Football_americanfootball_ball_36_415.jpg"  # 1024x661, one face
MAX_PIXELS = 50_000_000
BATCH_SCAN = (1, 2, 4, 8, 16, 32)


def _face() -> tuple[bytes, np.ndarray]:
    meta = json.loads((SAMPLES / "test_wflw.json").read_text())
    image = next(i for i in meta["images"] if i["file_name"] == IMAGE.name)
    box = next(a["bbox"] for a in meta["annotations"] if a["image_id"] == image["id"])
    return IMAGE.read_bytes(), np.asarray([box], np.float64)


class Bare:
    """The service's work without HTTP or the batcher: same ONNX file, same providers, same
    thread settings (onnxruntime defaults, as the server's LANDMARKS_ORT_THREADS=0)."""

    def __init__(self, path, providers: list[str]):
        self.session, self.info = open_session(path, providers)
        self.config = self.info.config
        self.names = [self.info.output_name]
        self.data, self.boxes = _face()
        self.runtime = type("R", (), {"config": self.config})()
        rgb = decode_image(self.data, MAX_PIXELS)
        center, scale = face_pipeline.centers_and_scales(self.boxes, self.config)
        self.rows = {flip: face_pipeline.prepare(rgb, center, scale, self.config, flip).rows
                     for flip in (False, True)}

    def run(self, rows: np.ndarray) -> np.ndarray:
        return self.session.run(self.names, {self.info.input_name: rows})[0]

    def model_fn(self, flip: bool, faces: int = 1):
        rows = self.rows[flip]
        if faces > 1:  # plain rows of all faces first, then the flipped ones, as prepare() does
            rows = np.concatenate([np.repeat(r[None], faces, axis=0) for r in rows])
        rows = np.ascontiguousarray(rows)
        return lambda: self.run(rows)

    def pipeline_fn(self, flip: bool, faces: int = 1):
        """decode -> boxes -> prepare -> one session.run for all faces -> finish -> JSON, for
        `faces` one-face images (the work of `faces` requests, batched)."""
        config = self.config

        def once():
            prepared = []
            for _ in range(faces):
                rgb = decode_image(self.data, MAX_PIXELS)
                center, scale = face_pipeline.centers_and_scales(self.boxes, config)
                prepared.append((face_pipeline.prepare(rgb, center, scale, config, flip), rgb))
            plain = [p.rows[:p.num_faces] for p, _ in prepared]
            flipped = [p.rows[p.num_faces:] for p, _ in prepared]
            out = self.run(np.concatenate(plain + flipped))
            n = len(prepared)
            for i, (p, rgb) in enumerate(prepared):
                heatmaps = np.concatenate([out[i:i + 1], out[n + i:n + i + 1]]) if p.flip_test \
                    else out[i:i + 1]
                face_list = _finish(self.runtime, heatmaps, p, self.boxes)
                json.dumps(response_body(face_list, flip, rgb.shape[1::-1]))
        return once


def _check_same(server: Server, bare: Bare, flip: bool) -> float:
    """One request through HTTP vs the bare pipeline: max landmark difference in pixels."""
    import httpx

    response = httpx.post(server.url + "/landmarks", timeout=60.0,
                          files={"image": ("image.jpg", bare.data, "image/jpeg")},
                          data={"bboxes": json.dumps(bare.boxes.tolist()),
                                "flip_test": "true" if flip else "false"})
    response.raise_for_status()
    got = np.asarray(response.json()["faces"][0]["landmarks"])
    rows = bare.rows[flip]
    faces = face_pipeline.prepare(decode_image(bare.data, MAX_PIXELS),
                                  *face_pipeline.centers_and_scales(bare.boxes, bare.config),
                                  bare.config, flip)
    expected, _ = face_pipeline.finish(bare.run(rows), faces, bare.config)
    return float(np.abs(got - expected[0]).max())


def run(ctx: Context) -> SectionResult:
    load0 = loadavg()
    path = ensure_model("w18")
    quick = ctx.quick
    levels = (1, 16) if quick else (1, 4, 16, 64)
    rounds = 1 if quick else 2
    c1_rounds = 1 if quick else 6
    windows = {1: (0.5, 2.5), 4: (2.0, 5.0), 16: (3.0, 6.0), 64: (5.0, 8.0)}  # warm-up, measure
    if quick:
        windows = {1: (0.5, 2.0), 16: (2.0, 3.0)}
    bare_time = 1.5 if quick else 2.0

    bare = Bare(path, ctx.ort_providers)
    log("service: bare best-batch scan")
    scan = {}
    for b in BATCH_SCAN if not quick else (1, 8, 32):
        fn = bare.model_fn(False, b)
        fn()
        scan[b] = b / median(time_calls(fn, 1.0 if not quick else 0.3, min_calls=2))
    best = max(scan, key=scan.get)
    log(f"service: best bare batch {best} ({scan[best]:.1f} rows/s)")

    server = Server(path, providers=ctx.providers, log_name="service_e2e")
    loadgen = LoadGen()
    data = {"flip": {}, "bare": {}}
    try:
        ready = server.wait_ready()
        rss_idle = server.rss_mib()
        agreement = {key: _check_same(server, bare, flip) for key, flip in (("off", False), ("on", True))}
        requests_total = 0
        rss_peaks: dict[tuple, float] = {}
        for flip in (False, True):
            key = "on" if flip else "off"
            best_faces = max(best // (2 if flip else 1), 1)
            fns = {
                "model_1": bare.model_fn(flip),
                "pipeline_1": bare.pipeline_fn(flip),
                "model_best": bare.model_fn(flip, best_faces),
                "pipeline_best": bare.pipeline_fn(flip, best_faces),
            }
            for fn in fns.values():
                fn()
            bare_rounds = {k: [] for k in fns}
            http_rounds = {c: [] for c in levels}

            def http_window(c, flip=flip, key=key, http_rounds=http_rounds):
                nonlocal requests_total
                warm, seconds = windows[c]
                before, cpu0 = server.metrics(), server.cpu_seconds()
                all0, own0 = machine_cpu_seconds(), time.process_time()
                with RssSampler(server.pid) as sampler:
                    result = loadgen.run(server.url + "/landmarks", str(IMAGE),
                                         json.dumps(bare.boxes.tolist()), flip, c,
                                         seconds=seconds, warmup_s=warm)
                stats = window_stats(result)
                stats["server"] = stage_means(before, server.metrics())
                stats["server_cpu_s"] = server.cpu_seconds() - cpu0
                # CPU taken by processes other than the server, the client and this one
                stats["others_cpu_s"] = max(0.0, machine_cpu_seconds() - all0 - stats["server_cpu_s"]
                                            - stats["client_cpu_s"] - (time.process_time() - own0))
                stats["rss_peak"] = sampler.peak
                rss_peaks[(key, c)] = max(rss_peaks.get((key, c), 0.0), sampler.peak)
                requests_total += len(result["records"])
                http_rounds[c].append(stats)
                log(f"  c={c}: {stats['rps']:.2f} req/s, p50 {ms(stats['p50'], 0)} ms, "
                    f"errors {stats['errors']}, mean batch {stats['server']['mean_batch']:.1f}")

            # Concurrency 1 against the bare latency: short windows, more rounds, ABBA order.
            for r in range(c1_rounds):
                log(f"service: flip {key}, c=1 round {r + 1}/{c1_rounds}")
                if r % 2:
                    http_window(1)
                for name in ("model_1", "pipeline_1"):
                    bare_rounds[name].append(time_calls(fns[name], bare_time, min_calls=3))
                if not r % 2:
                    http_window(1)
            # Higher concurrency against the bare throughput at the best batch size.
            for r in range(rounds):
                log(f"service: flip {key}, load round {r + 1}/{rounds}")
                for c in levels[1:]:
                    if c == 16 or c == levels[-1]:
                        for name in ("model_best", "pipeline_best"):
                            if len(bare_rounds[name]) == r:
                                bare_rounds[name].append(
                                    time_calls(fns[name], bare_time, min_calls=2))
                    http_window(c)
            data["flip"][key] = http_rounds
            data["bare"][key] = {**bare_rounds, "best_faces": best_faces}
        rss_after = server.rss_mib()
    finally:
        loadgen.close()
        server.close()
    experiment = None if quick else _experiment(ctx, path, bare)
    dump_json("service_e2e", {"scan": scan, "best": best, "data": {
        k: {kk: ({c: [{x: y for x, y in s.items() if x != "latencies"} for s in v]
                  for c, v in vv.items()} if k == "flip" else vv) for kk, vv in d.items()}
        for k, d in data.items() if k == "flip"}})

    return _report(ctx, load0, data, scan, best, levels, (c1_rounds, rounds), windows, ready, rss_idle,
                   rss_after, rss_peaks, requests_total, server.settings, experiment, agreement)


# name -> (module, BENCH_ORT_SPINNING or None, extra LANDMARKS_* settings)
VARIANTS = {
    "the service as it is": ("service", None, {}),
    "LANDMARKS_BATCH_TIMEOUT_MS=0": ("service", None, {"batch_timeout_ms": 0}),
    "onnxruntime intra-op spinning off": ("bench.variant_server", "0", {}),
}
EXPERIMENT_WINDOWS = ((1, False, 0.5, 3.0), (1, True, 0.5, 3.0), (16, False, 3.0, 5.0))


def _experiment(ctx: Context, path, bare: Bare) -> dict:
    """The service against two one-line variants of itself, each a real server, windows
    interleaved: no batch delay, and onnxruntime's intra-op thread spinning off."""
    import os

    options = bare.session.get_session_options()
    try:
        as_is = options.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # noqa: BLE001 - absent key: onnxruntime's default applies
        as_is = ""
    servers, loadgen = {}, LoadGen()
    results: dict[str, dict[str, list]] = {}
    try:
        for name, (module, spin, settings) in VARIANTS.items():
            if spin is not None:
                os.environ["BENCH_ORT_SPINNING"] = spin
            try:
                servers[name] = Server(path, providers=ctx.providers, module=module,
                                       log_name=f"variant_{len(servers)}", **settings)
            finally:
                os.environ.pop("BENCH_ORT_SPINNING", None)
        for server in servers.values():
            server.wait_ready()
        boxes = json.dumps(bare.boxes.tolist())
        for r in range(2):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            log(f"service: experiment (batch delay, spinning), round {r + 1}/2")
            for name in order:
                server = servers[name]
                for c, flip, warm, seconds in EXPERIMENT_WINDOWS:
                    before, cpu0 = server.metrics(), server.cpu_seconds()
                    all0, own0 = machine_cpu_seconds(), time.process_time()
                    stats = window_stats(loadgen.run(server.url + "/landmarks", str(IMAGE), boxes,
                                                     flip, c, seconds=seconds, warmup_s=warm))
                    stats["server"] = stage_means(before, server.metrics())
                    stats["others_cpu"] = max(0.0, machine_cpu_seconds() - all0 - (
                        server.cpu_seconds() - cpu0) - stats["client_cpu_s"] - (
                        time.process_time() - own0)) / stats["wall_s"]
                    stats.pop("latencies")
                    key = f"c{c} flip {'on' if flip else 'off'}"
                    results.setdefault(name, {}).setdefault(key, []).append(stats)
    finally:
        loadgen.close()
        for server in servers.values():
            server.close()
    return {"as_is": as_is or "not set (onnxruntime's default: on)", "results": results}


def _experiment_md(experiment: dict | None) -> list[str]:
    if not experiment:
        return []
    results = experiment["results"]
    names = list(results)
    base = results[names[0]]
    rows = []
    for name in names:
        res = results[name]
        row = [name]
        for key in ("c1 flip off", "c1 flip on"):
            row += [ms(median([s["p50"] for s in res[key]]), 1),
                    ratio_text([a["p50"] / b["p50"] for a, b in zip(res[key], base[key])]),
                    ms(median([s["server"]["queue"] for s in res[key]]), 1)]
        key = "c16 flip off"
        row += [f"{median([s['rps'] for s in res[key]]):.2f}",
                ratio_text([a["rps"] / b["rps"] for a, b in zip(res[key], base[key])]),
                f"{median([s['server']['mean_batch'] for s in res[key]]):.1f}",
                f"{max(s['others_cpu'] for v in res.values() for s in v):.0%}"]
        rows.append(row)
    return [
        "",
        "**Experiment: two one-line changes, measured on the service itself.** Three real "
        "servers side by side (windows interleaved over 2 rounds): the service as it is, the "
        "same with `LANDMARKS_BATCH_TIMEOUT_MS=0` (the batcher never waits for company), and "
        "the same with onnxruntime's `session.intra_op.allow_spinning=0` (forced by "
        "`python -m bench.variant_server`, otherwise identical to `python -m service`). The "
        f"service as it is sets allow_spinning = {experiment['as_is']}. Ratios are against the "
        "first row, per round.",
        "",
        table(["variant", "c=1 flip off p50 (ms)", "vs as is", "queue (ms)",
               "c=1 flip on p50 (ms)", "vs as is", "queue (ms)", "c=16 flip off faces/s",
               "vs as is", "mean batch", "other processes' CPU (max window)"], rows),
    ]


def _report(ctx, load0, data, scan, best, levels, rounds, windows, ready, rss_idle, rss_after,
            rss_peaks, requests_total, settings, experiment=None, agreement=None) -> SectionResult:
    summary = {"c1_ratio_model": {}, "c1_ratio_pipeline": {}, "c16_tput_ratio": {},
               "c16_tput_ratio_pipeline": {}, "best_batch": best}
    perf_rows, target_rows, stage_rows = [], [], []
    for key in ("off", "on"):
        http, bare = data["flip"][key], data["bare"][key]
        best_faces = bare["best_faces"]
        bare_fps = [best_faces / median(r) for r in bare["model_best"]]
        bare_pipe_fps = [best_faces / median(r) for r in bare["pipeline_best"]]
        for c in levels:
            pooled = [x for s in http[c] for x in s["latencies"]]
            rps = [s["rps"] for s in http[c]]
            errors = sum(s["errors"] for s in http[c])
            statuses: dict[str, int] = {}
            for s in http[c]:
                for k, v in s["statuses"].items():
                    statuses[k] = statuses.get(k, 0) + v
            span = sum(s["span_s"] for s in http[c])
            wall = sum(s["wall_s"] for s in http[c])
            client_cpu = sum(s["client_cpu_s"] for s in http[c]) / wall
            server_cpu = sum(s["server_cpu_s"] for s in http[c]) / wall
            others_cpu = sum(s["others_cpu_s"] for s in http[c]) / wall
            tput_ratio = [s["rps"] / b for s, b in zip(http[c], bare_fps)]
            perf_rows.append([
                key, c, f"{median(rps):.2f}", ms(percentile(pooled, 50), 0),
                ms(percentile(pooled, 95), 0), ms(percentile(pooled, 99), 0),
                f"{errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in statuses.items() if k != '200')})"
                               if errors else ""),
                f"{median([s['server']['mean_batch'] for s in http[c]]):.1f}",
                ratio_text(tput_ratio), f"{server_cpu:.0%} / {client_cpu:.0%} / {others_cpu:.0%}",
                f"{rss_peaks[(key, c)]:.0f}", f"{sum(s['ok'] for s in http[c])} in {span:.0f} s",
            ])
            if c == 16:
                summary["c16_tput_ratio"][key] = median(tput_ratio)
                summary["c16_tput_ratio_pipeline"][key] = median(
                    [s["rps"] / b for s, b in zip(http[c], bare_pipe_fps)])
            if c in (1, 16):
                sv = {st: median([s["server"][st] for s in http[c]]) for st in
                      ("decode", "preprocess", "queue", "inference", "postprocess", "request",
                       "mean_batch")}
                client = median([s["mean"] for s in http[c]])
                inside = sum(sv[st] for st in ("decode", "preprocess", "queue", "inference",
                                               "postprocess"))
                stage_rows.append([key, c] + [ms(sv[st], 1) for st in
                                              ("decode", "preprocess", "queue", "inference",
                                               "postprocess")]
                                  + [ms(sv["request"] - inside, 1), ms(sv["request"], 1),
                                     ms(client, 1), ms(client - sv["request"], 1)])
                summary.setdefault(f"c{c}_breakdown_ms", {})[key] = {
                    **{st: sv[st] * 1e3 for st in ("decode", "preprocess", "queue", "inference",
                                                  "postprocess")},
                    "other": (sv["request"] - inside) * 1e3, "client_minus_server":
                    (client - sv["request"]) * 1e3, "mean_batch": sv["mean_batch"]}
        # c = 1 latency vs bare
        c1 = http[1]
        lat_model = [s["p50"] / median(b) for s, b in zip(c1, bare["model_1"])]
        lat_pipe = [s["p50"] / median(b) for s, b in zip(c1, bare["pipeline_1"])]
        summary["c1_ratio_model"][key] = median(lat_model)
        summary["c1_ratio_pipeline"][key] = median(lat_pipe)
        summary.setdefault("bare_model_c1_ms", {})[key] = median(flat(bare["model_1"])) * 1e3
        rows_per_face = 2 if key == "on" else 1
        target_rows.append([
            key, f"c = 1 HTTP p50 latency vs bare `session.run` of {rows_per_face} row(s)",
            ms(median([s["p50"] for s in c1]), 1), ms(median([median(b) for b in bare["model_1"]]), 1),
            ratio_text(lat_model), "<= 1.10"])
        target_rows.append([
            key, "c = 1 HTTP p50 latency vs bare model + pipeline (decode .. JSON)",
            ms(median([s["p50"] for s in c1]), 1),
            ms(median([median(b) for b in bare["pipeline_1"]]), 1), ratio_text(lat_pipe), "(info)"])
        if 16 in http:
            target_rows.append([
                key, f"c = 16 HTTP faces/s vs bare `session.run` at batch {best} rows "
                     f"({best_faces} faces)",
                f"{median([s['rps'] for s in http[16]]):.2f}", f"{median(bare_fps):.2f}",
                ratio_text([s["rps"] / b for s, b in zip(http[16], bare_fps)]), ">= 0.90"])
            target_rows.append([
                key, f"c = 16 HTTP faces/s vs bare model + pipeline at {best_faces} faces per run",
                f"{median([s['rps'] for s in http[16]]):.2f}", f"{median(bare_pipe_fps):.2f}",
                ratio_text([s["rps"] / b for s, b in zip(http[16], bare_pipe_fps)]), "(info)"])

    fivehundreds = sum(s["statuses"].get("500", 0) for key in ("off", "on")
                       for c in levels for s in data["flip"][key][c])
    summary["http_500"] = fivehundreds
    summary["scan_rows_per_s"] = {str(b): v for b, v in scan.items()}
    if experiment:
        res = experiment["results"]
        base = res[next(iter(res))]
        summary["experiment"] = {
            name: {key: {"p50_ratio": median([a["p50"] / b["p50"] for a, b in zip(v, base[key])]),
                         "rps_ratio": median([a["rps"] / b["rps"] for a, b in zip(v, base[key])]),
                         "queue_ms": median([x["server"]["queue"] for x in v]) * 1e3}
                   for key, v in per.items()}
            for name, per in res.items()}
    summary.update({"rss_idle_mib": rss_idle, "rss_after_mib": rss_after,
                    "rss_peak_mib": max(rss_peaks.values()), "requests": requests_total})
    scan_text = ", ".join(f"{b}: {v:.1f}" for b, v in scan.items())
    win = ", ".join(f"c={c}: {w:g} s warm-up + {s:g} s" for c, (w, s) in windows.items())
    shown = {k: v for k, v in settings.items() if k != "LANDMARKS_PORT"}
    shown["LANDMARKS_MODEL_PATH"] = str(Path(shown["LANDMARKS_MODEL_PATH"]).relative_to(ROOT))
    md = [
        f"Real server: `python -m service` (uvicorn, 1 process) on 127.0.0.1 with "
        f"{', '.join(f'`{k}={v}`' for k, v in sorted(shown.items()))}; everything else at its "
        f"default (max batch 32, batch timeout 2 ms, onnxruntime threads = its default). Provider "
        f"in use: {ready.get('provider')}. Model: HRNetV2-W18 random-init export. Request: the "
        f"1024x661 WFLW sample JPEG ({IMAGE.stat().st_size // 1024} KiB) with its one face box, "
        "multipart, as a client would send it. Sanity check: the landmarks the server returns "
        "differ from the bare pipeline's by at most "
        + ", ".join(f"{v:.2g} px (flip {k})" for k, v in (agreement or {}).items()) + ".",
        "",
        f"Load: `bench/loadgen.py`, a separate process (asyncio + httpx, one keep-alive connection "
        f"per in-flight request), closed loop at fixed concurrency; {win}; {rounds[0]} rounds at "
        f"c=1 and {rounds[1]} at the other levels; throughput counts the 200s that completed inside the measuring window, latency "
        "percentiles pool those requests over the rounds. **On this 2-core machine the load "
        "generator competes with the server for CPU** (its share is in the CPU column, 200 % = both "
        "cores), and so does anything else running on the machine (`other processes`, from "
        "/proc/stat: when it is well above 0 %, that row was measured on a busy machine).",
        "",
        f"Reference: the same work in this process, timed between the HTTP windows (server idle): "
        f"`session.run` on the same rows (flip on = 2 rows per face), and model + pipeline "
        f"(decode_image, prepare, session.run, landmarks._finish, json.dumps). Bare throughput "
        f"scan (rows/s by batch): {scan_text} -> best batch **{best}** rows.",
        "",
        table(["flip", "concurrency", "faces/s", "p50 (ms)", "p95 (ms)", "p99 (ms)", "errors",
               "mean batch (server)", "faces/s vs bare best batch",
               "CPU: server / client / other processes",
               "peak RSS (MiB)", "requests measured"], perf_rows),
        "",
        "**Against the targets** (ratios are medians of per-round ratios, range in brackets):",
        "",
        table(["flip", "comparison", "service", "bare", "service / bare", "target"], target_rows),
        "",
        "**Where the time goes inside the server** (mean ms per request from the server's own "
        "`/metrics` stage histograms over the measuring windows; `other` = request time not in a "
        "stage: multipart parsing, routing, response, thread hand-offs; `client - server` = "
        "HTTP, loopback and the client's own latency):",
        "",
        table(["flip", "c", "decode", "preprocess", "queue", "inference", "postprocess", "other",
               "server request", "client latency", "client - server"], stage_rows),
        "",
        *(["", f"**{fivehundreds} responses were HTTP 500** (an internal error, which the API "
                "promises never to leak); their tracebacks are in `bench/out/service_e2e.log`."]
          if fivehundreds else []),
        *_experiment_md(experiment),
        "",
        f"Memory of this worker (W18): RSS {rss_idle:.0f} MiB idle after warm-up, peak "
        f"{max(rss_peaks.values()):.0f} MiB under load, {rss_after:.0f} MiB idle after "
        f"{requests_total} requests (see section 4 for growth over 10,000 requests).",
        "",
        stamp(ctx, load0),
    ]
    return SectionResult("service", "3. Service end to end", "\n".join(md), summary)
