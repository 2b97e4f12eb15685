"""Section 5, memory of one worker: RSS idle, under load, and growth over 10,000 requests.

10,000 requests through W18 would take ~10 minutes of this 2-core machine, so the growth run
serves the *tiny* HRNet export (same I/O contract, same service code path: HTTP, multipart,
decode, crop, batcher, onnxruntime, DARK, JSON) with a small real face image, flip test off.
RSS is read from /proc between chunks of 1,000 requests, with the server idle. W18's own RSS
(idle, under load, after the section-3 requests) is in section 3.
"""

from __future__ import annotations

import json
import time

import cv2

from .common import (
    OUT,
    SAMPLES,
    Context,
    SectionResult,
    dump_json,
    ensure_model,
    loadavg,
    log,
    stamp,
    table,
)
from .loadgen import LoadGen, window_stats
from .observe import RssSampler, start_server

CONCURRENCY = 8


def tiny_face_image() -> tuple[str, str]:
    """A 160x160 crop around a real face, JPEG q90, written to bench/out; and its box."""
    meta = json.loads((SAMPLES / "test_wflw.json").read_text())
    image = meta["images"][0]
    x, y, w, h = next(a["bbox"] for a in meta["annotations"] if a["image_id"] == image["id"])
    bgr = cv2.imread(str(SAMPLES / image["file_name"]), cv2.IMREAD_COLOR)
    cx, cy = int(x + w / 2), int(y + h / 2)
    crop = bgr[max(cy - 80, 0):cy + 80, max(cx - 80, 0):cx + 80]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "tiny_face.jpg"
    cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return str(path), json.dumps([[16, 16, 128, 128]])


def run(ctx: Context) -> SectionResult:
    load0 = loadavg()
    model = ensure_model("tiny")
    image, boxes = tiny_face_image()
    warm_n = 200 if ctx.quick else 1000
    chunk, chunks = (250, 2) if ctx.quick else (1000, 10)
    total = chunk * chunks
    rows = []
    server = start_server(model, providers=ctx.providers, log_name="memory")
    loadgen = LoadGen()
    try:
        server.wait_ready()
        time.sleep(0.5)
        rss_ready = server.rss_mib()
        log(f"memory: warm-up {warm_n} requests")
        warm = window_stats(loadgen.run(server.url + "/landmarks", image, boxes, False,
                                        CONCURRENCY, requests=warm_n))
        time.sleep(0.5)
        baseline = server.rss_mib()
        rows.append(["after start-up + warm-up of the model", 0, f"{rss_ready:.1f}", "", "", ""])
        rows.append([f"after {warm_n} warm-up requests (baseline)", 0, f"{baseline:.1f}",
                     f"{warm['rps']:.0f}", warm["errors"], ""])
        peak = 0.0
        done = 0
        for i in range(chunks):
            with RssSampler(server, 0.1) as sampler:
                stats = window_stats(loadgen.run(server.url + "/landmarks", image, boxes, False,
                                                 CONCURRENCY, requests=chunk))
            done += chunk
            time.sleep(0.3)
            rss = server.rss_mib()
            peak = max(peak, sampler.peak)
            rows.append([f"chunk {i + 1}", done, f"{rss:.1f}", f"{stats['rps']:.0f}",
                         stats["errors"], f"{sampler.peak:.1f}"])
            log(f"memory: {done} requests, RSS {rss:.1f} MiB, {stats['rps']:.0f} req/s")
        final = server.rss_mib()
    finally:
        loadgen.close()
        server.close()
    growth = (final - baseline) / baseline * 100
    dump_json("memory", {"rows": rows, "baseline": baseline, "final": final})
    md = [
        (f"Tiny-HRNet export (`bench/out/tiny_random.onnx`), real server as in section 3 "
        f"(`LANDMARKS_PROVIDERS={ctx.providers}`, defaults otherwise), request = a 160x160 JPEG "
        f"face crop with one 128 px box, flip test off, {CONCURRENCY} requests in flight "
        f"(`bench/loadgen.py`). RSS = VmRSS of the server process from /proc, read with the "
        "server idle after each chunk; peak = highest RSS sampled every 0.1 s during the chunk."),
        "",
        table(["point", "requests after baseline", "RSS (MiB)", "req/s", "errors",
               "peak RSS during chunk (MiB)"], rows),
        "",
        (f"**Growth over {total:,} requests: {final - baseline:+.1f} MiB = {growth:+.2f} %** of "
        f"the {baseline:.1f} MiB baseline (target <= 5 %); {final - rss_ready:+.1f} MiB since "
        f"start-up. Longer runs with W18: [SOAK.md](SOAK.md)."),
        "",
        stamp(ctx, load0),
    ]
    summary = {"growth_pct": growth, "requests": total, "model": "tiny HRNet",
               "baseline_mib": baseline, "final_mib": final, "ready_mib": rss_ready,
               "peak_mib": peak}
    return SectionResult("memory", "5. Memory", "\n".join(md), summary)
