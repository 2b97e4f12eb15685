"""Section 4, the serving layer: the real service with an instant network.

The network is replaced by a constant: an ONNX graph that returns one fixed, realistic heatmap
stack for every input row (Gaussian peaks where the sample face's WFLW landmarks are, plus a
little noise, no exact zeros: zeros and denormals send DARK's blur and log onto slow paths).
Everything else is the product: `python -m service` (uvicorn) in a subprocess, the 1024x661
WFLW JPEG with its one face box, multipart, 16 clients. So the server's CPU is the serving
layer's cost, the most a GPU host can be fed with per core.

Measured side by side in one run (windows interleaved, ABBA):
  - faces/s and **server CPU ms per face** (CPU of the server's process tree over a load job
    / the faces it served), flip test off and on, 1 and 2 worker processes
    (`LANDMARKS_WORKERS`);
  - the **inherent per-face work** done with plain OpenCV/NumPy calls in a tight
    single-threaded loop (imdecode, one warpAffine, normalise, one GaussianBlur over the 98
    maps, argmax, json.dumps of a 98-point record), and the ratio server / inherent;
  - c = 1: HTTP latency per face vs a bare `session.run` of the same ONNX file (flip off: 1
    row, on: 2 rows), for HRNetV2-W18 (the ratio the targets are about) and for the instant
    network (where the difference is the serving layer's own latency).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.engine.golden import make_golden_record
from service.engine.session import open_session
from service.pipeline import faces as face_pipeline
from service.pipeline.config import METADATA_PREFIX, PipelineConfig
from service.pipeline.preprocess import decode_image

from .common import (
    OUT,
    SAMPLES,
    Context,
    SectionResult,
    dump_json,
    ensure_model,
    loadavg,
    log,
    median,
    ms,
    ratio_text,
    stamp,
    table,
    time_calls,
)
from .loadgen import LoadGen
from .observe import Server, load_window, start_server

IMAGE = SAMPLES / "36_Football_americanfootball_ball_36_415.jpg"  # 1024x661, one face
CLIENTS = 16
MAX_PIXELS = 50_000_000
NOISE_STD = 0.01  # background of a trained network's heatmaps: small values of either sign
TINY = 1e-6  # no heatmap value closer to 0 than this (no zeros, no denormals after the blur)


@dataclass
class SampleFace:
    data: bytes  # the JPEG
    box: np.ndarray  # [4] x, y, w, h
    points: np.ndarray  # [K, 2] annotated landmarks, image px


def sample_face() -> SampleFace:
    meta = json.loads((SAMPLES / "test_wflw.json").read_text())
    image = next(i for i in meta["images"] if i["file_name"] == IMAGE.name)
    ann = next(a for a in meta["annotations"] if a["image_id"] == image["id"])
    points = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)[:, :2]
    return SampleFace(IMAGE.read_bytes(), np.asarray(ann["bbox"], np.float64), points)


# --------------------------------------------------------------------------- the instant network


def realistic_heatmaps(face: SampleFace, config: PipelineConfig, seed: int = 0) -> np.ndarray:
    """`[K, h, w]` float32: per keypoint a Gaussian of the codec's sigma (the training
    target's shape), amplitude 0.5-0.9, centred where the face's annotated landmark falls in
    the heatmap frame of its crop, plus N(0, NOISE_STD) noise; |value| >= TINY everywhere."""
    center, scale = face_pipeline.centers_and_scales(face.box[None], config)
    span = scale[0].astype(np.float64) * config.pixel_std  # crop size in image px (w, h)
    hm_w, hm_h = config.heatmap_size
    peaks = (face.points - center[0] + span / 2) / span * (hm_w, hm_h)  # [K, 2] heatmap px
    yy, xx = np.mgrid[0:hm_h, 0:hm_w]
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.5, 0.9, len(peaks))
    d2 = (xx[None] - peaks[:, 0, None, None]) ** 2 + (yy[None] - peaks[:, 1, None, None]) ** 2
    maps = amplitude[:, None, None] * np.exp(-d2 / (2 * config.sigma ** 2))
    maps += rng.normal(0.0, NOISE_STD, maps.shape)
    maps = np.where(np.abs(maps) < TINY, np.copysign(TINY, maps), maps)
    return maps.astype(np.float32)


def build_instant_model(heatmaps: np.ndarray, config: PipelineConfig, path: Path) -> Path:
    """ONNX: `input` float32 [N, 3, H, W] -> `heatmaps` float32 [N, K, h, w] = `heatmaps`
    broadcast over N (Shape -> Slice N -> Concat -> Expand), with the metadata the service
    reads (pipeline config, name, precision, trained=false) and a golden record computed from
    the constant, so the start-up self-check passes exactly (no tolerance setting needed)."""
    k, hm_h, hm_w = heatmaps.shape
    width, height = config.input_size
    initializers = [
        numpy_helper.from_array(heatmaps[None], "stack"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([k, hm_h, hm_w], np.int64), "map_dims"),
    ]
    nodes = [
        helper.make_node("Shape", ["input"], ["input_shape"]),
        helper.make_node("Slice", ["input_shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "map_dims"], ["output_shape"], axis=0),
        helper.make_node("Expand", ["stack", "output_shape"], ["heatmaps"]),
    ]
    graph = helper.make_graph(
        nodes, "instant_heatmaps",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", k, hm_h, hm_w])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="bench.serving")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)

    def run(rows: np.ndarray) -> np.ndarray:
        return np.repeat(heatmaps[None], len(rows), axis=0)

    props = {**config.to_metadata(), **{METADATA_PREFIX + key: json.dumps(value) for key, value in {
        "model_name": "instant_heatmaps (constant network, bench/serving.py)",
        "precision": "fp32", "trained": False,
        "golden": make_golden_record(run, config)}.items()}}
    onnx.helper.set_model_props(model, props)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def ensure_instant_model(face: SampleFace) -> tuple[Path, np.ndarray]:
    """bench/out/instant_heatmaps.onnx (rebuilt every run: deterministic, < 1 s) and its maps."""
    config = PipelineConfig()
    heatmaps = realistic_heatmaps(face, config)
    return build_instant_model(heatmaps, config, OUT / "instant_heatmaps.onnx"), heatmaps


# --------------------------------------------------------------------------- inherent work


class InherentWork:
    """The per-face work no serving layer can avoid, as plain library calls: decode the JPEG,
    one warpAffine of the face box to the network input, normalise to float32 NCHW RGB, one
    cv2.GaussianBlur over the 98 maps (the DARK modulation), argmax, and json.dumps of a
    98-point record. Single-threaded (OpenCV's own threads off while it runs)."""

    def __init__(self, face: SampleFace, heatmaps: np.ndarray, config: PipelineConfig):
        self.buffer = np.frombuffer(face.data, np.uint8)
        self.box = face.box
        self.heatmaps = heatmaps  # [K, h, w] what the network returns
        self.input_size = config.input_size
        self.kernel = config.modulate_kernel
        center, scale = face_pipeline.centers_and_scales(face.box[None], config)
        self.center, self.span = center[0].astype(np.float64), scale[0] * config.pixel_std
        self.mean_bgr = np.array(config.mean[::-1], np.float32)
        self.std_bgr = np.array(config.std[::-1], np.float32)

    # the steps, each a plain call or two
    def decode(self) -> np.ndarray:
        return cv2.imdecode(self.buffer, cv2.IMREAD_COLOR)

    def warp(self, bgr: np.ndarray) -> np.ndarray:
        width, height = self.input_size
        sx, sy = width / self.span[0], height / self.span[1]
        origin = self.center - self.span / 2
        matrix = np.array([[sx, 0.0, -origin[0] * sx], [0.0, sy, -origin[1] * sy]])
        return cv2.warpAffine(bgr, matrix, (width, height), flags=cv2.INTER_LINEAR)

    def normalise(self, crop: np.ndarray) -> np.ndarray:
        scaled = (crop.astype(np.float32) * np.float32(1 / 255) - self.mean_bgr) / self.std_bgr
        return np.ascontiguousarray(scaled.transpose(2, 0, 1)[::-1])  # BGR HWC -> RGB CHW

    def blur(self) -> np.ndarray:
        maps = np.ascontiguousarray(self.heatmaps.transpose(1, 2, 0))  # [h, w, K]: one call
        return cv2.GaussianBlur(maps, (self.kernel, self.kernel), 0)

    def argmax(self, blurred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = blurred.reshape(-1, blurred.shape[2])
        index = flat.argmax(axis=0)
        return index, flat[index, np.arange(flat.shape[1])]

    def record(self, index: np.ndarray, scores: np.ndarray) -> str:
        hm_h, hm_w = self.heatmaps.shape[1:]
        xy = np.stack([index % hm_w, index // hm_w], axis=1) * (self.span / (hm_w, hm_h)) \
            + (self.center - self.span / 2)
        return json.dumps({"bbox": self.box.tolist(), "landmarks": xy.tolist(),
                           "scores": scores.tolist(), "score": float(scores.mean())})

    def once(self) -> str:
        self.normalise(self.warp(self.decode()))
        return self.record(*self.argmax(self.blur()))

    def cpu_per_face(self, seconds: float) -> tuple[float, float]:
        """Tight loop for `seconds` -> (CPU s per face, wall s per face)."""
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            self.once()
            count, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
            while count < 3 or time.perf_counter() - wall0 < seconds:
                self.once()
                count += 1
            return (time.process_time() - cpu0) / count, (time.perf_counter() - wall0) / count
        finally:
            cv2.setNumThreads(threads)

    def step_times(self, seconds: float) -> dict[str, float]:
        """Median seconds of each step alone (single-threaded)."""
        bgr = self.decode()
        crop = self.warp(bgr)
        blurred = self.blur()
        index, scores = self.argmax(blurred)
        steps = {
            "cv2.imdecode (1024x661 JPEG -> BGR)": self.decode,
            "cv2.warpAffine (box -> 256x256)": lambda: self.warp(bgr),
            "normalise (NumPy: /255, -mean, /std, -> RGB NCHW float32)": lambda: self.normalise(crop),
            "cv2.GaussianBlur over the 98 maps (one call)": self.blur,
            "argmax of the 98 maps": lambda: self.argmax(blurred),
            "json.dumps of a 98-point record": lambda: self.record(index, scores),
        }
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return {name: median(time_calls(fn, seconds, min_calls=5)) for name, fn in steps.items()}
        finally:
            cv2.setNumThreads(threads)


# --------------------------------------------------------------------------- measurements


@dataclass
class Plan:
    rounds: int
    warmup_s: float  # per load job, before its measuring window
    load_s: float  # measuring window of a load job
    inherent_s: float  # inherent loop after each load job
    c1_warmup_s: float
    c1_s: float
    bare_s: float

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(1, 0.5, 2.0, 1.0, 0.3, 1.5, 0.5)
        # Six short rounds rather than three long ones: this machine's speed drifts by
        # +-10 % over minutes, and the per-round ratios' median only cancels that drift when
        # the configurations alternate often.
        return cls(6, 1.0, 3.0, 1.0, 0.5, 2.5, 1.0)


@dataclass
class Fleet:
    """The servers of this section: the instant network with 1 and 2 workers, W18 with 1."""
    instant: dict[int, Server] = field(default_factory=dict)
    w18: Server | None = None
    ready: dict[str, dict] = field(default_factory=dict)

    def all(self) -> list[Server]:
        return [*self.instant.values(), *([self.w18] if self.w18 else [])]


def _start_fleet(ctx: Context, instant_path: Path, w18_path: Path) -> Fleet:
    fleet = Fleet()
    for workers in sorted({1, *ctx.serving_workers}):
        # ort_spinning=false: what the service does on a GPU (the host CPU only feeds the
        # device); on the CPU provider it would spin-wait a core between instant runs.
        fleet.instant[workers] = start_server(instant_path, providers=ctx.providers,
                                              log_name=f"serving_instant_w{workers}",
                                              workers=workers, ort_spinning=False)
    fleet.w18 = start_server(w18_path, providers=ctx.providers, log_name="serving_w18")
    for workers, server in fleet.instant.items():
        fleet.ready[f"instant_w{workers}"] = server.wait_ready(300)
    fleet.ready["w18"] = fleet.w18.wait_ready(300)
    return fleet


def _bare_runner(path: Path, providers: list[str], face: SampleFace):
    """flip -> a function doing one bare `session.run` of the face's rows (1 row, 2 with flip)."""
    session, info = open_session(path, providers)
    rgb = decode_image(face.data, MAX_PIXELS)
    center, scale = face_pipeline.centers_and_scales(face.box[None], info.config)
    out = {}
    for flip in (False, True):
        feed = {info.input_name: face_pipeline.prepare(rgb, center, scale, info.config, flip).rows}
        out[flip] = lambda feed=feed: session.run([info.output_name], feed)
        out[flip]()
    return out


def _load_rounds(fleet: Fleet, loadgen: LoadGen, inherent: InherentWork, plan: Plan,
                 boxes_json: str) -> tuple[dict, list[tuple[float, float]]]:
    """Load jobs at CLIENTS concurrency on the instant servers, (workers, flip) in ABBA order
    per round, each followed at once by the inherent loop (servers idle), so every job's
    ratio compares two measurements seconds apart (this machine's speed drifts over minutes).
    -> ({(workers, flip): [stats per round, with "inherent_cpu_s"]},
    [(inherent CPU s, wall s) per face, per job])."""
    order = [(w, flip) for w in fleet.instant for flip in (False, True)]
    load: dict[tuple[int, bool], list[dict]] = {key: [] for key in order}
    inherent_runs = []
    for r in range(plan.rounds):
        for workers, flip in (order if r % 2 == 0 else order[::-1]):
            stats = load_window(fleet.instant[workers], loadgen, IMAGE, boxes_json, flip, CLIENTS,
                                seconds=plan.load_s, warmup_s=plan.warmup_s)
            stats.pop("latencies")
            inherent_runs.append(inherent.cpu_per_face(plan.inherent_s))
            stats["inherent_cpu_s"] = inherent_runs[-1][0]
            load[(workers, flip)].append(stats)
            log(f"serving: round {r + 1}/{plan.rounds}, {workers} worker(s), flip "
                f"{'on' if flip else 'off'}: {stats['rps']:.1f} faces/s, "
                f"{stats['server_cpu_s'] / max(stats['ok_total'], 1) * 1e3:.2f} ms CPU/face, "
                f"inherent {stats['inherent_cpu_s'] * 1e3:.2f} ms")
    return load, inherent_runs


def _c1_rounds(servers: dict[str, Server], bares: dict[str, dict], loadgen: LoadGen, plan: Plan,
               boxes_json: str) -> dict:
    """c = 1 HTTP windows against bare session.run timings, ABBA per round.
    -> {(model, flip): {"http": [stats], "bare": [[s, ...] per round]}}"""
    out: dict[tuple[str, bool], dict] = {}
    for r in range(plan.rounds):
        for model, server in servers.items():
            for flip in (False, True):
                entry = out.setdefault((model, flip), {"http": [], "bare": []})
                bare = bares[model][flip]
                if r % 2:
                    entry["bare"].append(time_calls(bare, plan.bare_s, min_calls=3))
                stats = load_window(server, loadgen, IMAGE, boxes_json, flip, 1,
                                    seconds=plan.c1_s, warmup_s=plan.c1_warmup_s)
                stats.pop("latencies")
                entry["http"].append(stats)
                if not r % 2:
                    entry["bare"].append(time_calls(bare, plan.bare_s, min_calls=3))
        log(f"serving: c=1 round {r + 1}/{plan.rounds} done")
    return out


def run(ctx: Context) -> SectionResult:
    load0 = loadavg()
    plan = Plan.of(ctx.quick)
    face = sample_face()
    instant_path, heatmaps = ensure_instant_model(face)
    w18_path = ensure_model("w18")
    config = PipelineConfig()
    inherent = InherentWork(face, heatmaps, config)
    boxes_json = json.dumps([face.box.tolist()])
    bares = {"instant": _bare_runner(instant_path, ctx.ort_providers, face),
             "w18": _bare_runner(w18_path, ctx.ort_providers, face)}

    log("serving: starting servers (instant network x 1 and 2 workers, W18)")
    fleet = _start_fleet(ctx, instant_path, w18_path)
    loadgen = LoadGen()
    try:
        processes = {w: len(s.pids()) for w, s in fleet.instant.items()}
        settings = {w: s.settings for w, s in fleet.instant.items()}
        load, inherent_runs = _load_rounds(fleet, loadgen, inherent, plan, boxes_json)
        c1 = _c1_rounds({"instant": fleet.instant[1], "w18": fleet.w18}, bares, loadgen, plan,
                        boxes_json)
    finally:
        loadgen.close()
        for server in fleet.all():
            server.close()
    steps = inherent.step_times(ctx.scale(0.5, 0.1))
    dump_json("serving", {"load": {f"w{w} flip {int(f)}": v for (w, f), v in load.items()},
                          "inherent": inherent_runs, "steps": steps, "processes": processes,
                          "c1": {f"{m} flip {int(f)}": v for (m, f), v in c1.items()}})
    measured = Measured(plan, load, inherent_runs, steps, c1, processes, settings, fleet.ready)
    return _report(ctx, load0, measured)


# --------------------------------------------------------------------------- report


@dataclass
class Measured:
    plan: Plan
    load: dict[tuple[int, bool], list[dict]]
    inherent: list[tuple[float, float]]  # per load job (CPU s, wall s) per face
    steps: dict[str, float]
    c1: dict[tuple[str, bool], dict]
    processes: dict[int, int]
    settings: dict[int, dict]
    ready: dict[str, dict]

    def workers_pending(self) -> bool:
        """True when LANDMARKS_WORKERS=N > 1 did not give more processes than 1 worker."""
        return any(n <= self.processes[1] for w, n in self.processes.items() if w > 1)


def _cpu_per_face(stats: dict) -> float:
    return stats["server_cpu_s"] / stats["ok_total"] if stats["ok_total"] else float("nan")


def _load_table(m: Measured, summary: dict) -> list[list]:
    rows = []
    for (workers, flip), rounds in m.load.items():
        key, wkey = ("on" if flip else "off"), f"w{workers}"
        per_face = [_cpu_per_face(s) for s in rounds]
        inherent_cpu = [s["inherent_cpu_s"] for s in rounds]  # measured right after each job
        ratios = [p / i for p, i in zip(per_face, inherent_cpu)]
        rps = [s["rps"] for s in rounds]
        served = sum(s["ok_total"] for s in rounds)
        counted = sum(s["faces_counted"] for s in rounds)
        wall = sum(s["wall_s"] for s in rounds)
        cpu = {who: sum(s[f"{who}_cpu_s"] for s in rounds) / wall for who in ("server", "client", "others")}
        errors = sum(s["records_total"] - s["ok_total"] for s in rounds)
        summary.setdefault("faces_per_s", {}).setdefault(wkey, {})[key] = median(rps)
        summary.setdefault("server_cpu_ms_per_face", {}).setdefault(wkey, {})[key] = median(per_face) * 1e3
        summary.setdefault("cpu_ratio", {}).setdefault(wkey, {})[key] = median(ratios)
        rows.append([workers, m.processes[workers], key, f"{median(rps):.1f}",
                     ms(median(per_face), 2), f"{1 / median(per_face):.0f}",
                     ms(median(inherent_cpu), 2), ratio_text(ratios),
                     f"{median([s['server']['mean_batch'] for s in rounds]):.1f}",
                     f"{counted:.0f} / {served}", errors,
                     f"{cpu['server']:.0%} / {cpu['client']:.0%} / {cpu['others']:.0%}"])
    return rows


def _workers_rows(m: Measured, summary: dict) -> list[list]:
    """Throughput of N workers against 1, per round; efficiency = (N / 1) / N."""
    if m.workers_pending():
        summary["workers2"] = "pending"
        return []
    rows = []
    for workers in sorted(w for w in m.processes if w > 1):
        for flip in (False, True):
            key = "on" if flip else "off"
            one, many = m.load[(1, flip)], m.load[(workers, flip)]
            ratios = [b["rps"] / a["rps"] if a["rps"] else float("nan") for a, b in zip(one, many)]
            summary.setdefault("workers_tput_ratio", {}).setdefault(str(workers), {})[key] = \
                median(ratios)
            rows.append([workers, m.processes[workers], key, f"{median([s['rps'] for s in one]):.1f}",
                         f"{median([s['rps'] for s in many]):.1f}", ratio_text(ratios),
                         f"{median(ratios) / workers:.0%}"])
    if 2 in m.processes:
        summary["workers2_tput_ratio"] = summary["workers_tput_ratio"]["2"]
        summary["workers2_processes"] = m.processes[2]
        summary["workers2_faces_counted_ok"] = all(
            s["faces_counted"] == s["ok_total"] for f in (False, True) for s in m.load[(2, f)])
    return rows


def _c1_table(m: Measured, summary: dict) -> list[list]:
    rows = []
    for (model, flip), entry in m.c1.items():
        key = "on" if flip else "off"
        http = [s["p50"] for s in entry["http"]]
        bare = [median(b) for b in entry["bare"]]
        ratios = [h / b for h, b in zip(http, bare)]
        extra = [h - b for h, b in zip(http, bare)]
        summary.setdefault(f"c1_ratio_{model}", {})[key] = median(ratios)
        summary.setdefault(f"c1_extra_ms_{model}", {})[key] = median(extra) * 1e3
        w18 = model == "w18"
        # With an instant network the ratio divides by ~0: only the difference means something.
        rows.append(["HRNetV2-W18 (random-init)" if w18 else "instant network", key,
                     2 if flip else 1, ms(median(http), 2), ms(median(bare), 2),
                     ratio_text(ratios) if w18 else "-", ms(median(extra), 2),
                     "<= 1.10" if w18 else "(info)"])
    return rows


def _report(ctx: Context, load0: str, m: Measured) -> SectionResult:
    summary: dict = {"inherent_cpu_ms_per_face": median([c for c, _ in m.inherent]) * 1e3,
                     "processes": {f"w{w}": n for w, n in m.processes.items()}}
    load_rows = _load_table(m, summary)
    worker_rows = _workers_rows(m, summary)
    c1_rows = _c1_table(m, summary)
    step_rows = [[name, ms(s, 3)] for name, s in m.steps.items()]
    step_rows.append(["sum of the steps", ms(sum(m.steps.values()), 3)])
    md = _report_markdown(ctx, load0, m, load_rows, worker_rows, step_rows, c1_rows)
    return SectionResult("serving", "4. Serving layer (instant network)", "\n".join(md), summary)


def _report_markdown(ctx: Context, load0: str, m: Measured, load_rows, worker_rows, step_rows,
                     c1_rows) -> list[str]:
    plan = m.plan
    ready = m.ready.get("instant_w1", {})
    md = [
        ("The real service (`python -m service`, uvicorn, `LANDMARKS_PROVIDERS="
         f"{ctx.providers}`, `LANDMARKS_ORT_SPINNING=false` as on a GPU host, defaults "
         "otherwise) serving an **instant network**: an ONNX graph "
         "that returns one fixed heatmap stack for every row (Gaussian peaks of the codec's "
         "sigma at the sample face's WFLW landmarks, amplitude 0.5-0.9, N(0, 0.01) noise, no "
         "value within 1e-6 of zero; `bench/out/instant_heatmaps.onnx`, built by "
         "`bench/serving.py` with onnx.helper, carrying the pipeline metadata and a golden "
         "record computed from the constant, so the start-up self-check passes exactly; "
         f"provider in use: {ready.get('provider', '?')}). Request: the 1024x661 WFLW JPEG "
         f"({IMAGE.stat().st_size // 1024} KiB) with its one face box, multipart; {CLIENTS} "
         "clients in a separate process (`bench/loadgen.py`, httpx, closed loop). Each row: "
         f"{plan.rounds} round(s) of {plan.warmup_s:g} s warm-up + {plan.load_s:g} s measured, "
         "all configurations interleaved (ABBA)."),
        "",
        ("**Server CPU per face** = CPU seconds of the server's whole process tree (uvicorn "
         "supervisor and workers, all threads, from /proc) over the load job / the faces it "
         "answered with 200. **Inherent work** = the same face done with plain library calls in "
         "a tight single-threaded loop in this process, right after each load job (servers idle): "
         "cv2.imdecode, one cv2.warpAffine to 256x256, normalise, one cv2.GaussianBlur over the "
         "98 maps, argmax, json.dumps of a 98-point record. Ratio = each job's server CPU / the "
         "inherent loop run right after it (median over the rounds, range in brackets); target <= 1.5 with flip on and 1 worker. The ceiling "
         "column is 1000 / server CPU ms per face: the most faces per second one core of this "
         "machine can feed a network that costs nothing, i.e. what a GPU host can at most be "
         "fed with per serving core."),
        "",
        table(["workers", "processes", "flip", "faces/s", "server CPU ms/face",
               "ceiling: faces/s per core", "inherent CPU ms/face", "server / inherent", "mean batch",
               "faces in /metrics / faces served", "errors",
               "CPU: server / client / other processes"], load_rows),
        "",
    ]
    if worker_rows:
        md += [
            ("**Worker processes** (`LANDMARKS_WORKERS=N`; processes = the server's process "
             f"tree, {m.processes[1]} with 1 worker). Targets: with 2 workers >= 3 processes, every "
             "face counted by `/metrics` (column above), throughput >= 1.05x one worker on 2 "
             "cores; on a many-core GPU host >= 80 % efficiency per worker up to the GPU's rate."),
            "",
            table(["workers", "processes", "flip", "1 worker faces/s", "N workers faces/s",
                   "N / 1", "efficiency (N / 1) / N"], worker_rows),
            "",
        ]
    else:
        md += [("**Worker processes: pending.** `LANDMARKS_WORKERS` > 1 gave no more processes "
                f"than 1 worker ({m.processes}): the setting is not implemented in this build, "
                "so the multi-worker rows above measure one process."), ""]
    md += [
        "**Inherent work, step by step** (median ms per call, single-threaded):",
        "",
        table(["step", "ms"], step_rows),
        "",
        ("**Concurrency 1: HTTP latency per face vs a bare `session.run` of the same ONNX "
         "file** (flip off: 1 row, flip on: 2 rows; the bare run is in this process with the "
         "server idle; HTTP p50 from "
         f"{plan.c1_warmup_s:g} s warm-up + {plan.c1_s:g} s windows, {plan.rounds} round(s), "
         "ABBA). For W18 the ratio is the target; for the instant network the difference is "
         "what the serving layer itself adds to one request's latency."),
        "",
        table(["model", "flip", "rows", "HTTP p50 (ms)", "bare session.run (ms)", "HTTP / bare",
               "HTTP - bare (ms)", "target"], c1_rows),
        "",
        stamp(ctx, load0),
    ]
    return md
