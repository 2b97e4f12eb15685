"""Section 1, the network alone: PyTorch eager vs onnxruntime at batch 1, 8 and 32.

Both run the same weights (the random-init export is `build_model` + `randomize_for_demo`
with seed 0, rebuilt here for PyTorch and checked against the ONNX output). On a GPU the
onnxruntime CUDA / TensorRT providers, the fp16 file, IO binding and CUDA graphs and PyTorch on
CUDA (fp32, fp16) join in. The FLOP count comes from torch's FlopCounterMode; the floor is
FLOPs / the measured peak of a large matmul on the same machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.engine.session import open_session

from .common import (
    Context,
    SectionResult,
    ensure_model,
    flat,
    interleaved,
    loadavg,
    log,
    median,
    ms,
    ratio_text,
    round_ratios,
    stamp,
    table,
)

BATCHES = (1, 8, 32)


# --------------------------------------------------------------------------- runners


def _ort_runner(session, info, batch: np.ndarray) -> Callable[[], object]:
    feed = {info.input_name: batch}
    names = [info.output_name]
    return lambda: session.run(names, feed)


def _ort_iobinding_runner(session, info, batch: np.ndarray, device_id: int = 0):
    """Input copied to the GPU once, output left there: the network without PCIe copies."""
    import onnxruntime as ort

    value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", device_id)
    binding = session.io_binding()
    binding.bind_ortvalue_input(info.input_name, value)
    binding.bind_output(info.output_name, "cuda", device_id)

    def run():
        session.run_with_iobinding(binding)
    return run


def _ort_cuda_graph_runner(path, info, batch: np.ndarray, device_id: int = 0):
    """CUDA graphs need fixed input/output addresses: one session per shape, IO binding."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path), options,
        providers=[("CUDAExecutionProvider", {"device_id": device_id, "enable_cuda_graph": "1"})])
    out_shape = (len(batch), info.config.num_keypoints, info.config.heatmap_size[1],
                 info.config.heatmap_size[0])
    x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", device_id)
    y = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", device_id)
    binding = session.io_binding()
    binding.bind_ortvalue_input(info.input_name, x)
    binding.bind_ortvalue_output(info.output_name, y)
    session.run_with_iobinding(binding)  # the first run captures the graph

    def run():
        session.run_with_iobinding(binding)
    return run


def _torch_model():
    from model_export.model import build_model, randomize_for_demo

    model = build_model("hrnetv2_w18")
    randomize_for_demo(model, seed=0)  # the same weights as the exported file
    return model.eval()


def _torch_runner(model, batch: np.ndarray, device: str = "cpu", half: bool = False):
    import torch

    x = torch.from_numpy(batch).to(device)
    if half:
        x = x.half()
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def run():
        with torch.inference_mode():
            out = model(x)
        sync()
        return out
    return run


# --------------------------------------------------------------------------- FLOPs + peak


def count_flops(model) -> float:
    """FLOPs of one 256x256 face (torch FlopCounterMode: convolutions and matmuls, 2 per MAC;
    BN/ReLU/add/upsample are not counted, they are < 2 % of the work)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 256, 256))
    return float(counter.get_total_flops())


def matmul_peak(quick: bool) -> list[tuple[str, float]]:
    """Measured GFLOP/s of large fp32 matmuls (numpy BLAS and torch), best of several runs."""
    import torch

    results = []
    reps = 2 if quick else 4
    for n in (2048, 4096):
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for name, fn in ((f"numpy {n}x{n} fp32 matmul", lambda a=a, b=b: a @ b),
                         (f"torch {n}x{n} fp32 matmul (CPU)", lambda ta=ta, tb=tb: ta @ tb)):
            fn()
            best = min(_timed(fn) for _ in range(reps))
            results.append((name, 2 * n**3 / best / 1e9))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        n = 8192
        for dtype, label in ((torch.float32, "fp32 (TF32 off)"), (torch.float16, "fp16")):
            ga = torch.randn(n, n, device="cuda", dtype=dtype)
            gb = torch.randn(n, n, device="cuda", dtype=dtype)
            (ga @ gb), torch.cuda.synchronize()

            def fn(ga=ga, gb=gb):
                ga @ gb
                torch.cuda.synchronize()
            best = min(_timed(fn) for _ in range(reps))
            results.append((f"torch {n}x{n} {label} matmul (CUDA)", 2 * n**3 / best / 1e9))
    return results


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- section


Runner = Callable[[np.ndarray], Callable[[], object]]  # input batch -> one timed call
Results = dict[str, dict[int, list[list[float]]]]  # configuration -> batch -> per-round seconds


def _parity(model, session, info, rng) -> float:
    """max |onnxruntime - PyTorch| on one random input, as a fraction of the heatmap range."""
    import torch

    x = rng.standard_normal((1, 3, 256, 256), dtype=np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    got = session.run([info.output_name], {info.input_name: x})[0]
    return float(np.abs(ref - got).max()) / float(ref.max() - ref.min())


def _time_configs(configs: dict[str, Runner], batches, rounds: int, per_round: float, rng,
                  notes: list[str]) -> Results:
    """Every configuration at every batch size, interleaved per batch size."""
    results: Results = {name: {} for name in configs}
    for batch_size in batches:
        batch = rng.standard_normal((batch_size, 3, 256, 256), dtype=np.float32)
        fns = {}
        for name, make in configs.items():
            try:
                fns[name] = make(batch)
            except Exception as exc:  # a GPU variant that cannot run is reported
                notes.append(f"{name} at batch {batch_size}: not measured ({str(exc)[:200]})")
        log(f"model: batch {batch_size}, {len(fns)} configurations interleaved, {rounds} rounds")
        for name, samples in interleaved(fns, rounds=rounds, time_per_round=per_round).items():
            results[name][batch_size] = samples
    return results


@dataclass
class Comparison:
    """onnxruntime CPU vs PyTorch eager CPU, per batch and best vs best."""
    rows: list[list]  # batch, torch per face, ORT per face, ratio text
    ratios: dict[str, float]  # batch -> median per-round ratio
    best_ort_batch: int
    best_ort_s: float  # per face
    best_torch_s: float  # per face

    @property
    def best_ratio(self) -> float:
        return self.best_torch_s / self.best_ort_s


def _compare(results: Results, batches) -> Comparison:
    ort, torch_ = results["onnxruntime CPU"], results["PyTorch eager CPU"]
    rows, ratios = [], {}
    for b in batches:
        if ort.get(b) and torch_.get(b):
            per_round = round_ratios(torch_[b], ort[b])
            ratios[str(b)] = median(per_round)
            rows.append([b, ms(median(flat(torch_[b])) / b, 1), ms(median(flat(ort[b])) / b, 1),
                         ratio_text(per_round)])
    best = min(batches, key=lambda b: median(flat(ort[b])) / b)
    return Comparison(rows, ratios, best, median(flat(ort[best])) / best,
                      min(median(flat(torch_[b])) / b for b in batches))


def _latency_rows(results: Results, batches) -> list[list]:
    rows = []
    for name, by_batch in results.items():
        for b in batches:
            samples = by_batch.get(b)
            if samples:
                lat = median(flat(samples))
                rows.append([name, b, ms(lat, 1), ms(lat / b, 2), f"{b / lat:.1f}", len(flat(samples))])
    return rows


def run(ctx: Context) -> SectionResult:
    import torch

    load0 = loadavg()
    path = ensure_model("w18")
    rng = np.random.default_rng(0)
    batches = (1, 8) if ctx.quick else BATCHES
    rounds = 1 if ctx.quick else 3
    per_round = 0.3 if ctx.quick else 1.0

    cpu_session, info = open_session(path, ["CPUExecutionProvider"], max_batch=max(batches))
    model = _torch_model()
    parity = _parity(model, cpu_session, info, rng)
    configs: dict[str, Runner] = {
        "onnxruntime CPU": lambda b: _ort_runner(cpu_session, info, b),
        "PyTorch eager CPU": lambda b: _torch_runner(model, b),
    }
    gpu_notes: list[str] = []
    if ctx.gpu:
        configs.update(_gpu_configs(path, info, model, gpu_notes, max(batches)))
    results = _time_configs(configs, batches, rounds, per_round, rng, gpu_notes)

    flops = count_flops(model)
    peaks = matmul_peak(ctx.quick)
    cpu_peak = max(g for name, g in peaks if "CUDA" not in name)
    floor_s = flops / (cpu_peak * 1e9)
    cmp = _compare(results, batches)
    rows = _latency_rows(results, batches)
    threads = (cpu_session.get_session_options().intra_op_num_threads, torch.get_num_threads())
    md = [
        (f"Network only (no pre/post-processing), random input, HRNetV2-W18 (random-init export "
         f"`bench/out/w18_random.onnx`; same graph and FLOPs as the trained model). onnxruntime "
         f"{_ort_version()} CPU provider with `open_session` defaults (graph optimisation ALL, "
         f"intra-op threads {threads[0] or 'default = physical cores'}); PyTorch eager, "
         f"`inference_mode`, {threads[1]} intra-op threads. Both run the same weights: max "
         f"|ORT - torch| = {parity:.1e} of the heatmap range. Configurations are timed "
         f"interleaved, {rounds} round(s) of >= {per_round:g} s each per batch size; latency = "
         f"median per `session.run` / forward call."),
        "",
        table(["configuration", "batch", "latency / call (ms)", "per face (ms)", "faces/s",
               "calls timed"], rows),
        "",
        ("**onnxruntime CPU vs PyTorch eager** (per-face time ratio, median of per-round ratios "
         "with the range; target >= 2):"),
        "",
        table(["batch", "PyTorch per face (ms)", "onnxruntime per face (ms)",
               "PyTorch / onnxruntime"], cmp.rows),
        "",
        (f"Best of each (any batch): PyTorch {ms(cmp.best_torch_s, 1)} ms/face, onnxruntime "
         f"{ms(cmp.best_ort_s, 1)} ms/face (batch {cmp.best_ort_batch}) -> "
         f"**{cmp.best_ratio:.2f}x**."),
        "",
        *_floor_md(flops, peaks, floor_s, cmp.best_ort_s),
        *_gpu_md(ctx, rows, peaks, flops, gpu_notes),
        "",
        stamp(ctx, load0),
    ]
    summary = {
        "ort_vs_torch_by_batch": cmp.ratios,
        "ort_vs_torch_best": cmp.best_ratio,
        "ort_best_batch": cmp.best_ort_batch,
        "ort_per_face_ms": {str(b): median(flat(results["onnxruntime CPU"][b])) / b * 1e3
                            for b in batches},
        "flops_g": flops / 1e9,
        "cpu_peak_gflops": cpu_peak,
        "floor_ms": floor_s * 1e3,
    }
    return SectionResult("model", "1. Model: PyTorch eager vs onnxruntime", "\n".join(md), summary)


def _floor_md(flops: float, peaks, floor_s: float, best_ort_s: float) -> list[str]:
    md = [
        "**FLOPs and the floor they imply**",
        "",
        table(["quantity", "value"], [
            ["FLOPs per face (torch FlopCounterMode, 2 per multiply-add)", f"{flops / 1e9:.2f} G"],
            *[[f"measured peak: {name}", f"{g:.0f} GFLOP/s"] for name, g in peaks],
            ["floor per face = FLOPs / best CPU peak", f"{ms(floor_s, 1)} ms"],
            ["onnxruntime CPU best per face / floor",
             (f"{best_ort_s / floor_s:.2f}x (it runs at {floor_s / best_ort_s:.0%} of the "
              "measured matmul rate)")],
        ]),
    ]
    if best_ort_s < floor_s:
        md += ["", ("onnxruntime's convolutions run faster than the numpy/torch sgemm measured "
                    "here, so on this CPU the 'floor' is the measured matmul rate, not a hard "
                    "bound; either way the CPU network is compute-bound, within a few percent of it.")]
    return md


def _gpu_md(ctx: Context, rows, peaks, flops: float, notes: list[str]) -> list[str]:
    md = []
    if ctx.gpu:
        gpu_rows = [r for r in rows if "CPU" not in r[0]]
        gpu_peaks = [g for name, g in peaks if "CUDA" in name]
        if gpu_rows and gpu_peaks:
            md += ["", (f"GPU floor per face: {ms(flops / (max(gpu_peaks) * 1e9), 3)} ms at the "
                        f"best measured CUDA matmul peak ({max(gpu_peaks):.0f} GFLOP/s).")]
    else:
        md += ["", ("No GPU on this machine: the CUDA, TensorRT, fp16, IO-binding and CUDA-graph "
                    "rows come from `bash bench/gpu.sh` on a GPU host (see "
                    "[RESULTS-gpu.md](RESULTS-gpu.md)).")]
    if notes:
        md += [""] + [f"- {n}" for n in notes]
    return md


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _gpu_configs(path, info, model, notes: list[str], max_batch: int) -> dict:
    """GPU variants; each one that cannot be built here is reported, not fatal."""
    import torch

    configs = {}
    try:
        cuda_session, cuda_info = open_session(path, ["CUDAExecutionProvider"], max_batch=max_batch)
        if cuda_info.provider == "CUDAExecutionProvider":
            configs["onnxruntime CUDA fp32"] = lambda b: _ort_runner(cuda_session, cuda_info, b)
            configs["onnxruntime CUDA fp32 + IO binding"] = \
                lambda b: _ort_iobinding_runner(cuda_session, cuda_info, b)
            configs["onnxruntime CUDA fp32 + IO binding + CUDA graph"] = \
                lambda b: _ort_cuda_graph_runner(path, cuda_info, b)
        else:
            notes.append(f"onnxruntime CUDA provider not active (got {cuda_info.active_providers})")
    except Exception as exc:
        notes.append(f"onnxruntime CUDA: {str(exc)[:200]}")
    try:
        fp16_path = ensure_model("w18", fp16=True)
        s16, i16 = open_session(fp16_path, ["CUDAExecutionProvider"], max_batch=max_batch)
        if i16.provider == "CUDAExecutionProvider":
            configs["onnxruntime CUDA fp16"] = lambda b: _ort_runner(s16, i16, b)
            configs["onnxruntime CUDA fp16 + IO binding"] = \
                lambda b: _ort_iobinding_runner(s16, i16, b)
        else:
            notes.append(f"onnxruntime fp16 file: CUDA provider not active (got {i16.active_providers})")
    except Exception as exc:
        notes.append(f"onnxruntime fp16: {str(exc)[:200]}")
    try:
        t0 = time.perf_counter()
        trt_session, trt_info = open_session(
            path, ["TensorrtExecutionProvider", "CUDAExecutionProvider"], max_batch=max_batch)
        if trt_info.provider == "TensorrtExecutionProvider":
            # Engine build happens on the first run of the profile.
            trt_session.run([trt_info.output_name],
                            {trt_info.input_name: np.zeros((1, 3, 256, 256), np.float32)})
            notes.append(f"TensorRT engine build + first run: {time.perf_counter() - t0:.0f} s "
                         "(cached in bench/out/.trt_cache)")
            configs["onnxruntime TensorRT fp32"] = lambda b: _ort_runner(trt_session, trt_info, b)
        else:
            notes.append(f"TensorRT provider not active (got {trt_info.active_providers})")
    except Exception as exc:
        notes.append(f"onnxruntime TensorRT: {str(exc)[:200]}")
    if torch.cuda.is_available():
        gpu_model = _torch_model().cuda()
        configs["PyTorch eager CUDA fp32"] = lambda b: _torch_runner(gpu_model, b, "cuda")
        half_model = _torch_model().cuda().half()
        configs["PyTorch eager CUDA fp16"] = lambda b: _torch_runner(half_model, b, "cuda", True)
    else:
        notes.append("torch.cuda.is_available() is False: no PyTorch GPU rows (CPU torch wheel?)")
    return configs
