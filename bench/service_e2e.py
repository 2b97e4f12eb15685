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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    median,
    ms,
    percentile,
    ratio_text,
    stamp,
    table,
    time_calls,
)
from .loadgen import LoadGen
from .observe import STAGES, Server, load_window, start_server
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
                heatmaps = np.concatenate([out[i:i + 1], out[n + i:n + i + 1]]) if p.merge_on_host \
                    else out[i:i + 1]
                face_list = face_pipeline.face_records(*face_pipeline.finish(heatmaps, p, config),
                                                       self.boxes)
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


@dataclass
class Plan:
    """How long and how often the section measures (quick: a smoke run)."""
    levels: tuple[int, ...]  # concurrency levels
    rounds: int  # rounds at the levels above 1
    c1_rounds: int  # rounds at concurrency 1 (short windows, more of them)
    windows: dict[int, tuple[float, float]]  # concurrency -> (warm-up s, measured s)
    bare_time: float  # seconds per bare timing

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls((1, 16), 1, 1, {1: (0.5, 2.0), 16: (2.0, 3.0)}, 1.5)
        return cls((1, 4, 16, 64), 2, 6, {1: (0.5, 2.5), 4: (2.0, 5.0), 16: (3.0, 6.0),
                                          64: (5.0, 8.0)}, 2.0)


def _best_batch(bare: Bare, quick: bool) -> tuple[dict[int, float], int]:
    """Bare rows/s by batch size (flip off) -> (scan, the best batch)."""
    scan = {}
    for b in BATCH_SCAN if not quick else (1, 8, 32):
        fn = bare.model_fn(False, b)
        fn()
        scan[b] = b / median(time_calls(fn, 1.0 if not quick else 0.3, min_calls=2))
    return scan, max(scan, key=scan.get)


class Recorder:
    """The HTTP windows of one server: stats per (flip, concurrency), peak RSS, request count."""

    def __init__(self, server, loadgen: LoadGen, boxes: np.ndarray, plan: Plan):
        self.server, self.loadgen, self.plan = server, loadgen, plan
        self.boxes_json = json.dumps(boxes.tolist())
        self.http: dict[str, dict[int, list[dict]]] = {}
        self.rss_peaks: dict[tuple, float] = {}
        self.requests = 0

    def window(self, flip: bool, c: int) -> None:
        key = "on" if flip else "off"
        warm, seconds = self.plan.windows[c]
        stats = load_window(self.server, self.loadgen, IMAGE, self.boxes_json, flip, c,
                            seconds=seconds, warmup_s=warm)
        self.rss_peaks[(key, c)] = max(self.rss_peaks.get((key, c), 0.0), stats["rss_peak"])
        self.requests += stats["records_total"]
        self.http.setdefault(key, {}).setdefault(c, []).append(stats)
        log(f"  c={c}: {stats['rps']:.2f} req/s, p50 {ms(stats['p50'], 0)} ms, "
            f"errors {stats['errors']}, mean batch {stats['server']['mean_batch']:.1f}")


def _measure_flip(recorder: Recorder, bare: Bare, flip: bool, best: int) -> dict:
    """HTTP windows at every level for one flip setting, bare timings interleaved with them.

    -> bare per-round samples: model_1 / pipeline_1 (one face), model_best / pipeline_best
    (best_faces faces per run), and best_faces.
    """
    plan, key = recorder.plan, "on" if flip else "off"
    best_faces = max(best // (2 if flip else 1), 1)
    fns = {"model_1": bare.model_fn(flip), "pipeline_1": bare.pipeline_fn(flip),
           "model_best": bare.model_fn(flip, best_faces),
           "pipeline_best": bare.pipeline_fn(flip, best_faces)}
    for fn in fns.values():
        fn()
    rounds: dict[str, list] = {k: [] for k in fns}
    # Concurrency 1 against the bare latency: short windows, more rounds, ABBA order.
    for r in range(plan.c1_rounds):
        log(f"service: flip {key}, c=1 round {r + 1}/{plan.c1_rounds}")
        if r % 2:
            recorder.window(flip, 1)
        for name in ("model_1", "pipeline_1"):
            rounds[name].append(time_calls(fns[name], plan.bare_time, min_calls=3))
        if not r % 2:
            recorder.window(flip, 1)
    # Higher concurrency against the bare throughput at the best batch size.
    for r in range(plan.rounds):
        log(f"service: flip {key}, load round {r + 1}/{plan.rounds}")
        for c in plan.levels[1:]:
            if c in (16, plan.levels[-1]):
                for name in ("model_best", "pipeline_best"):
                    if len(rounds[name]) == r:
                        rounds[name].append(time_calls(fns[name], plan.bare_time, min_calls=2))
            recorder.window(flip, c)
    return {**rounds, "best_faces": best_faces}


def run(ctx: Context) -> SectionResult:
    load0 = loadavg()
    path = ensure_model("w18")
    plan = Plan.of(ctx.quick)
    bare = Bare(path, ctx.ort_providers)
    log("service: bare best-batch scan")
    scan, best = _best_batch(bare, ctx.quick)
    log(f"service: best bare batch {best} ({scan[best]:.1f} rows/s)")

    server = start_server(path, providers=ctx.providers, log_name="service_e2e")
    loadgen = LoadGen()
    try:
        ready = server.wait_ready()
        rss_idle = server.rss_mib()
        agreement = {key: _check_same(server, bare, flip) for key, flip in (("off", False), ("on", True))}
        recorder = Recorder(server, loadgen, bare.boxes, plan)
        bare_data = {("on" if flip else "off"): _measure_flip(recorder, bare, flip, best)
                     for flip in (False, True)}
        rss_after = server.rss_mib()
    finally:
        loadgen.close()
        server.close()
    experiment = None if ctx.quick else _experiment(ctx, path, bare)
    dump_json("service_e2e", {"scan": scan, "best": best, "data": {"flip": {
        key: {c: [{x: y for x, y in s.items() if x != "latencies"} for s in v]
              for c, v in per_c.items()} for key, per_c in recorder.http.items()}}})
    measured = Measured(http=recorder.http, bare=bare_data, scan=scan, best=best, plan=plan,
                        ready=ready, rss_idle=rss_idle, rss_after=rss_after,
                        rss_peaks=recorder.rss_peaks, requests=recorder.requests,
                        settings=server.settings, experiment=experiment, agreement=agreement)
    return _report(ctx, load0, measured)


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
    options = bare.session.get_session_options()
    try:
        as_is = options.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # absent key: onnxruntime's default applies
        as_is = ""
    servers, loadgen = {}, LoadGen()
    results: dict[str, dict[str, list]] = {}
    try:
        for name, (module, spin, settings) in VARIANTS.items():
            if spin is not None:
                os.environ["BENCH_ORT_SPINNING"] = spin
            try:
                servers[name] = start_server(path, providers=ctx.providers, module=module,
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
                for c, flip, warm, seconds in EXPERIMENT_WINDOWS:
                    stats = load_window(servers[name], loadgen, IMAGE, boxes, flip, c,
                                        seconds=seconds, warmup_s=warm)
                    stats["others_cpu"] = stats["others_cpu_s"] / stats["wall_s"]
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
        ("**Experiment: two one-line changes, measured on the service itself.** Three real "
        "servers side by side (windows interleaved over 2 rounds): the service as it is, the "
        "same with `LANDMARKS_BATCH_TIMEOUT_MS=0` (the batcher never waits for company), and "
        "the same with onnxruntime's `session.intra_op.allow_spinning=0` (forced by "
        "`python -m bench.variant_server`, otherwise identical to `python -m service`). The "
        f"service as it is sets allow_spinning = {experiment['as_is']}. Ratios are against the "
        "first row, per round."),
        "",
        table(["variant", "c=1 flip off p50 (ms)", "vs as is", "queue (ms)",
               "c=1 flip on p50 (ms)", "vs as is", "queue (ms)", "c=16 flip off faces/s",
               "vs as is", "mean batch", "other processes' CPU (max window)"], rows),
    ]


# --------------------------------------------------------------------------- report


@dataclass
class Measured:
    """Everything run() measured, for the report."""
    http: dict[str, dict[int, list[dict]]]  # flip key -> concurrency -> per-round window stats
    bare: dict[str, dict]  # flip key -> per-round bare samples (see _measure_flip)
    scan: dict[int, float]  # batch -> bare rows/s
    best: int
    plan: Plan
    ready: dict
    rss_idle: float
    rss_after: float
    rss_peaks: dict[tuple, float]
    requests: int
    settings: dict[str, str]
    experiment: dict | None = None
    agreement: dict | None = None


def _bare_rates(bare: dict) -> tuple[list[float], list[float]]:
    """Per-round bare faces/s at the best batch: model only, model + pipeline."""
    faces = bare["best_faces"]
    return ([faces / median(r) for r in bare["model_best"]],
            [faces / median(r) for r in bare["pipeline_best"]])


def _perf_row(key: str, c: int, windows: list[dict], bare_fps: list[float], rss_peak: float) -> list:
    """One row of the main table: throughput, pooled latency percentiles, errors, CPU shares."""
    pooled = [x for s in windows for x in s["latencies"]]
    errors = sum(s["errors"] for s in windows)
    statuses: dict[str, int] = {}
    for s in windows:
        for k, v in s["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    wall = sum(s["wall_s"] for s in windows)
    cpu = {who: sum(s[f"{who}_cpu_s"] for s in windows) / wall for who in ("server", "client", "others")}
    error_text = f"{errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in statuses.items() if k != '200')})"
                                if errors else "")
    return [key, c, f"{median([s['rps'] for s in windows]):.2f}", ms(percentile(pooled, 50), 0),
            ms(percentile(pooled, 95), 0), ms(percentile(pooled, 99), 0), error_text,
            f"{median([s['server']['mean_batch'] for s in windows]):.1f}",
            ratio_text([s["rps"] / b for s, b in zip(windows, bare_fps)]),
            f"{cpu['server']:.0%} / {cpu['client']:.0%} / {cpu['others']:.0%}", f"{rss_peak:.0f}",
            f"{sum(s['ok'] for s in windows)} in {sum(s['span_s'] for s in windows):.0f} s"]


def _stage_row(key: str, c: int, windows: list[dict]) -> tuple[list, dict]:
    """Mean server stage times at one level -> (table row, summary entry in ms)."""
    sv = {st: median([s["server"][st] for s in windows]) for st in (*STAGES, "request", "mean_batch")}
    client = median([s["mean"] for s in windows])
    inside = sum(sv[st] for st in STAGES)
    row = [key, c, *(ms(sv[st], 1) for st in STAGES), ms(sv["request"] - inside, 1),
           ms(sv["request"], 1), ms(client, 1), ms(client - sv["request"], 1)]
    entry = {**{st: sv[st] * 1e3 for st in STAGES}, "other": (sv["request"] - inside) * 1e3,
             "client_minus_server": (client - sv["request"]) * 1e3, "mean_batch": sv["mean_batch"]}
    return row, entry


def _target_rows(key: str, m: Measured, summary: dict) -> list[list]:
    """The c = 1 latency and c = 16 throughput comparisons against the bare references."""
    http, bare = m.http[key], m.bare[key]
    c1 = http[1]
    lat_model = [s["p50"] / median(b) for s, b in zip(c1, bare["model_1"])]
    lat_pipe = [s["p50"] / median(b) for s, b in zip(c1, bare["pipeline_1"])]
    summary["c1_ratio_model"][key] = median(lat_model)
    summary["c1_ratio_pipeline"][key] = median(lat_pipe)
    summary.setdefault("bare_model_c1_ms", {})[key] = median(flat(bare["model_1"])) * 1e3
    http_p50 = ms(median([s["p50"] for s in c1]), 1)
    rows = [
        [key, f"c = 1 HTTP p50 latency vs bare `session.run` of {2 if key == 'on' else 1} row(s)",
         http_p50, ms(median([median(b) for b in bare["model_1"]]), 1), ratio_text(lat_model), "<= 1.10"],
        [key, "c = 1 HTTP p50 latency vs bare model + pipeline (decode .. JSON)", http_p50,
         ms(median([median(b) for b in bare["pipeline_1"]]), 1), ratio_text(lat_pipe), "(info)"],
    ]
    if 16 in http:
        bare_fps, bare_pipe_fps = _bare_rates(bare)
        rps = [s["rps"] for s in http[16]]
        summary["c16_tput_ratio"][key] = median([r / b for r, b in zip(rps, bare_fps)])
        summary["c16_tput_ratio_pipeline"][key] = median([r / b for r, b in zip(rps, bare_pipe_fps)])
        rows += [
            [key, (f"c = 16 HTTP faces/s vs bare `session.run` at batch {m.best} rows "
                  f"({bare['best_faces']} faces)"), f"{median(rps):.2f}", f"{median(bare_fps):.2f}",
             ratio_text([r / b for r, b in zip(rps, bare_fps)]), ">= 0.90"],
            [key, f"c = 16 HTTP faces/s vs bare model + pipeline at {bare['best_faces']} faces per run",
             f"{median(rps):.2f}", f"{median(bare_pipe_fps):.2f}",
             ratio_text([r / b for r, b in zip(rps, bare_pipe_fps)]), "(info)"],
        ]
    return rows


def _experiment_summary(experiment: dict) -> dict:
    res = experiment["results"]
    base = res[next(iter(res))]
    return {name: {key: {"p50_ratio": median([a["p50"] / b["p50"] for a, b in zip(v, base[key])]),
                         "rps_ratio": median([a["rps"] / b["rps"] for a, b in zip(v, base[key])]),
                         "queue_ms": median([x["server"]["queue"] for x in v]) * 1e3}
                   for key, v in per.items()}
            for name, per in res.items()}


def _report(ctx: Context, load0: str, m: Measured) -> SectionResult:
    summary = {"c1_ratio_model": {}, "c1_ratio_pipeline": {}, "c16_tput_ratio": {},
               "c16_tput_ratio_pipeline": {}, "best_batch": m.best}
    perf_rows, target_rows, stage_rows = [], [], []
    for key in ("off", "on"):
        bare_fps, _ = _bare_rates(m.bare[key])
        for c in m.plan.levels:
            windows = m.http[key][c]
            perf_rows.append(_perf_row(key, c, windows, bare_fps, m.rss_peaks[(key, c)]))
            if c in (1, 16):
                row, entry = _stage_row(key, c, windows)
                stage_rows.append(row)
                summary.setdefault(f"c{c}_breakdown_ms", {})[key] = entry
        target_rows += _target_rows(key, m, summary)
    fivehundreds = sum(s["statuses"].get("500", 0) for per_c in m.http.values()
                       for windows in per_c.values() for s in windows)
    summary.update({"http_500": fivehundreds,
                    "scan_rows_per_s": {str(b): v for b, v in m.scan.items()},
                    "rss_idle_mib": m.rss_idle, "rss_after_mib": m.rss_after,
                    "rss_peak_mib": max(m.rss_peaks.values()), "requests": m.requests})
    if m.experiment:
        summary["experiment"] = _experiment_summary(m.experiment)
    md = _report_markdown(ctx, load0, m, perf_rows, target_rows, stage_rows, fivehundreds)
    return SectionResult("service", "3. Service end to end", "\n".join(md), summary)


def _report_markdown(ctx: Context, load0: str, m: Measured, perf_rows, target_rows, stage_rows,
                     fivehundreds: int) -> list[str]:
    scan_text = ", ".join(f"{b}: {v:.1f}" for b, v in m.scan.items())
    win = ", ".join(f"c={c}: {w:g} s warm-up + {s:g} s" for c, (w, s) in m.plan.windows.items())
    shown = {k: v for k, v in m.settings.items() if k != "LANDMARKS_PORT"}
    shown["LANDMARKS_MODEL_PATH"] = str(Path(shown["LANDMARKS_MODEL_PATH"]).relative_to(ROOT))
    return [
        f"Real server: `python -m service` (uvicorn, 1 process) on 127.0.0.1 with "
        f"{', '.join(f'`{k}={v}`' for k, v in sorted(shown.items()))}; everything else at its "
        f"default (max batch 32, batch timeout 2 ms, onnxruntime threads = its default). Provider "
        f"in use: {m.ready.get('provider')}. Model: HRNetV2-W18 random-init export. Request: the "
        f"1024x661 WFLW sample JPEG ({IMAGE.stat().st_size // 1024} KiB) with its one face box, "
        "multipart, as a client would send it. Sanity check: the landmarks the server returns "
        "differ from the bare pipeline's by at most "
        + ", ".join(f"{v:.2g} px (flip {k})" for k, v in (m.agreement or {}).items()) + ".",
        "",
        (f"Load: `bench/loadgen.py`, a separate process (asyncio + httpx, one keep-alive connection "
        f"per in-flight request), closed loop at fixed concurrency; {win}; {m.plan.c1_rounds} rounds "
        f"at c=1 and {m.plan.rounds} at the other levels; throughput counts the 200s that completed "
        "inside the measuring window, latency percentiles pool those requests over the rounds. "
        "**On this 2-core machine the load generator competes with the server for CPU** (its share "
        "is in the CPU column, 200 % = both cores), and so does anything else running on the "
        "machine (`other processes`, from /proc/stat: when it is well above 0 %, that row was "
        "measured on a busy machine)."),
        "",
        (f"Reference: the same work in this process, timed between the HTTP windows (server idle): "
        f"`session.run` on the same rows (flip on = 2 rows per face), and model + pipeline "
        f"(decode_image, prepare, session.run, finish, face_records, json.dumps). Bare throughput "
        f"scan (rows/s by batch): {scan_text} -> best batch **{m.best}** rows."),
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
        ("**Where the time goes inside the server** (mean ms per request from the server's own "
        "`/metrics` stage histograms over the measuring windows; `other` = request time not in a "
        "stage: multipart parsing, routing, response, thread hand-offs; `client - server` = "
        "HTTP, loopback and the client's own latency):"),
        "",
        table(["flip", "c", *STAGES, "other", "server request", "client latency",
               "client - server"], stage_rows),
        "",
        *(["", (f"**{fivehundreds} responses were HTTP 500** (an internal error, which the API "
                "promises never to leak); their tracebacks are in `bench/out/service_e2e.log`.")]
          if fivehundreds else []),
        *_experiment_md(m.experiment),
        "",
        (f"Memory of this server (W18): RSS {m.rss_idle:.0f} MiB idle after warm-up, peak "
        f"{max(m.rss_peaks.values()):.0f} MiB under load, {m.rss_after:.0f} MiB idle after "
        f"{m.requests} requests (see section 5 for growth over 10,000 requests)."),
        "",
        stamp(ctx, load0),
    ]
