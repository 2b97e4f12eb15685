"""Section "GPU network (PyTorch)": HRNetV2-W18 on the GPU with nothing but torch.

For a GPU host without onnxruntime-gpu (or without the service's packages) this still gives
the GPU's rate, the number the serving layer has to feed: crops/s of the network by batch size
in fp32 (torch defaults, cuDNN TF32 on) and fp16, with the input already on the device; and
the same in fp16 with what serving adds around it: uint8 crops copied from pinned host memory,
normalised on the device, heatmaps copied back as float32. GPU memory per configuration says
what one worker process costs. Run with `python -m bench --only gpu_network` (not part of the
default run, which has no GPU).
"""

from __future__ import annotations

import time

from .common import Context, SectionResult, loadavg, log, median, ms, stamp, table

BATCHES = (1, 8, 32, 64, 128)
QUICK_BATCHES = (1, 32)
INPUT = 256  # crop side
DEVICE = "cuda"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _timed(fn, sync, seconds: float, min_calls: int = 5) -> list[float]:
    """Per-call seconds (each call synchronised) for at least `seconds`."""
    for _ in range(3):
        fn()
    sync()
    samples, start = [], time.perf_counter()
    while len(samples) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return samples


def _runners(torch, model32, model16, batch: int) -> dict:
    """configuration -> one call of the network on `batch` crops."""
    device = DEVICE
    x32 = torch.randn(batch, 3, INPUT, INPUT, device=device)
    x16 = x32.half()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    crops = torch.randint(0, 256, (batch, INPUT, INPUT, 3), dtype=torch.uint8).pin_memory()
    host_out = torch.empty(batch, 98, INPUT // 4, INPUT // 4, dtype=torch.float32).pin_memory()

    def served():
        x = crops.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        y = model16(((x - mean) / std).half())
        host_out.copy_(y.float(), non_blocking=True)

    return {
        "fp32, input on the device": lambda: model32(x32),
        "fp16, input on the device": lambda: model16(x16),
        "fp16 + uint8 crops host->device + normalise + heatmaps device->host": served,
    }


def run(ctx: Context) -> SectionResult:
    import torch

    load0 = loadavg()
    if not torch.cuda.is_available():
        return SectionResult("gpu_network", "GPU network (PyTorch)",
                             f"Not measured: torch {torch.__version__} sees no CUDA device.\n", {})
    from model_export.model import build_model, randomize_for_demo

    torch.backends.cudnn.benchmark = True  # per shape, like the warmed buckets of a server
    model32 = build_model("hrnetv2_w18")
    randomize_for_demo(model32, seed=0)
    model32 = model32.eval().to(DEVICE)
    model16 = build_model("hrnetv2_w18")
    randomize_for_demo(model16, seed=0)
    model16 = model16.eval().to(DEVICE).half()
    seconds = ctx.scale(2.0, 0.5)
    rows, summary, memory = [], {"crops_per_s": {}}, {}
    for batch in (QUICK_BATCHES if ctx.quick else BATCHES):
        for name, fn in _runners(torch, model32, model16, batch).items():
            torch.cuda.reset_peak_memory_stats()

            def call(fn=fn):
                with torch.inference_mode():
                    fn()
            samples = _timed(call, torch.cuda.synchronize, seconds)
            lat = median(samples)
            memory[name] = max(memory.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
            summary["crops_per_s"].setdefault(name, {})[str(batch)] = batch / lat
            rows.append([name, batch, ms(lat, 3), ms(lat / batch, 4), f"{batch / lat:,.0f}",
                         len(samples)])
            log(f"gpu_network: {name}, batch {batch}: {batch / lat:,.0f} crops/s")
    best = {name: max(by.values()) for name, by in summary["crops_per_s"].items()}
    summary["best_crops_per_s"] = best
    device = torch.cuda.get_device_name(0)
    md = [
        (f"HRNetV2-W18 (`model_export.model`, random-init weights: the trained model's graph and "
         f"FLOPs) in PyTorch {torch.__version__} eager on **{device}** (CUDA {torch.version.cuda}, "
         "cuDNN benchmark mode on; fp32 = torch defaults, convolutions may use TF32). Each call "
         "is synchronised; median per call over >= "
         f"{seconds:g} s. The served row adds what a serving process moves per batch: uint8 "
         "crops from pinned host memory, normalisation on the device, heatmaps back as float32."),
        "",
        table(["configuration", "batch", "ms per call", "ms per crop", "crops/s", "calls"], rows),
        "",
        table(["configuration", "best crops/s", "peak GPU memory (MiB, largest batch)"],
              [[name, f"{best[name]:,.0f}", f"{memory[name]:,.0f}"] for name in best]),
        "",
        stamp(ctx, load0),
    ]
    return SectionResult("gpu_network", "GPU network (PyTorch)", "\n".join(md), summary)

