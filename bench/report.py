"""bench/RESULTS.md: a header, the targets table and one block per section.

Each section sits between `<!-- section:NAME -->` markers with its summary as JSON in a
comment, so `python -m bench --only stages` rewrites that block and keeps the others (and the
targets table is recomputed from all summaries, each row saying when it was measured).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from .common import Context, SectionResult, machine, table, versions_line

ORDER = ("model", "stages", "service", "serving", "memory")
TITLES = {
    "model": "1. Model: PyTorch eager vs onnxruntime",
    "stages": "2. Pipeline stages",
    "service": "3. Service end to end",
    "serving": "4. Serving layer (instant network)",
    "memory": "5. Memory",
    "gpu_network": "GPU network (PyTorch)",
}
# Run only when named in --only (bench/gpu.sh does): they need a GPU.
OPTIONAL = ("gpu_network",)
_SECTION = re.compile(r"<!-- section:(\w+) -->\n(.*?)<!-- /section:\1 -->", re.DOTALL)
_SUMMARY = re.compile(r"<!-- summary (\{.*?\}) -->", re.DOTALL)


def read_sections(path: Path) -> dict[str, tuple[str, dict]]:
    """name -> (markdown body, summary) of the sections already in the file."""
    if not path.is_file():
        return {}
    out = {}
    for name, body in _SECTION.findall(path.read_text()):
        match = _SUMMARY.search(body)
        summary = json.loads(match.group(1)) if match else {}
        body = _SUMMARY.sub("", body).rstrip() + "\n"
        out[name] = (body, summary)
    return out


def _fmt(value, digits=2, suffix="") -> str:
    if value is None:
        return "not measured"
    return f"{value:.{digits}f}{suffix}"


def _verdict(ok) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def targets_table(summaries: dict[str, dict]) -> str:
    m, st, sv, sl, mem = (summaries.get(k, {}) for k in ORDER)
    rows = []

    def when(s):
        return s.get("measured_at", "not run")

    for flip in ("off", "on"):
        model_ratio = sv.get("c1_ratio_model", {}).get(flip)
        pipe_ratio = sv.get("c1_ratio_pipeline", {}).get(flip)
        rows.append([
            f"CPU batch 1, flip {flip}: HTTP per-face latency <= 1.10 x bare `session.run`",
            f"{_fmt(model_ratio)} x bare model; {_fmt(pipe_ratio)} x bare model+pipeline"
            if model_ratio else "not measured",
            _verdict(None if model_ratio is None else model_ratio <= 1.10), when(sv)])
    for flip in ("off", "on"):
        ratio = sv.get("c16_tput_ratio", {}).get(flip)
        pipe = sv.get("c16_tput_ratio_pipeline", {}).get(flip)
        rows.append([
            f"concurrency 16, flip {flip}: throughput >= 0.90 x bare onnxruntime at its best batch",
            f"{_fmt(ratio)} x bare model (batch {sv.get('best_batch', '?')}); "
            f"{_fmt(pipe)} x bare model+pipeline" if ratio else "not measured",
            _verdict(None if ratio is None else ratio >= 0.90), when(sv)])
    speed, per_face = st.get("dark_speedup_n1"), st.get("dark_ms_per_face_n1")
    speed8, per_face8 = st.get("dark_speedup_n8"), st.get("dark_ms_per_face_n8")
    rows.append([
        "DARK, 98 keypoints: >= 10x faster than the per-keypoint loop; <= 1 ms per face",
        f"{_fmt(speed, 1)}x, {_fmt(per_face, 3)} ms/face (1 face); "
        f"{_fmt(speed8, 1)}x, {_fmt(per_face8, 3)} ms/face (8 faces)" if speed else "not measured",
        _verdict(None if speed is None else speed >= 10 and per_face <= 1.0), when(st)])
    r1, best = m.get("ort_vs_torch_by_batch", {}).get("1"), m.get("ort_vs_torch_best")
    by_batch = ", ".join(f"batch {b}: {v:.2f}x" for b, v in m.get("ort_vs_torch_by_batch", {}).items())
    rows.append([
        "onnxruntime CPU >= 2 x PyTorch eager per face",
        f"{by_batch or 'not measured'}; best vs best: {_fmt(best)}x",
        _verdict(None if r1 is None else min(m["ort_vs_torch_by_batch"].values()) >= 2.0),
        when(m)])
    rows += _serving_rows(sl, when)
    growth = mem.get("growth_pct")
    rows.append([
        f"memory growth over {mem.get('requests', 10000):,} requests <= 5 %",
        f"{_fmt(growth, 2, ' %')} ({mem.get('model', '?')} model)" if growth is not None
        else "not measured",
        _verdict(None if growth is None else growth <= 5.0), when(mem)])
    return table(["target", "measured", "verdict", "measured at"], rows)


def _serving_rows(sl: dict, when) -> list[list]:
    """Issue 10's serving-layer targets, from section 4."""
    rows = []
    ratio = sl.get("cpu_ratio", {}).get("w1", {}).get("on")
    cpu = sl.get("server_cpu_ms_per_face", {}).get("w1", {}).get("on")
    rows.append([
        ("serving layer (instant network, 1 MP JPEG, one face, flip on, 1 worker): server CPU per "
        "face <= 1.5 x the inherent per-face work"),
        f"{_fmt(ratio)}x ({_fmt(cpu)} ms vs {_fmt(sl.get('inherent_cpu_ms_per_face'))} ms)"
        if ratio is not None else "not measured",
        _verdict(None if ratio is None else ratio <= 1.5), when(sl)])
    if sl.get("workers2") == "pending":
        rows.append([("LANDMARKS_WORKERS=2: >= 3 processes, /metrics counts every face, "
                     "throughput >= 1.05 x one worker"), "pending: the setting gave one process",
                     "n/a", when(sl)])
    elif sl.get("workers2_tput_ratio"):
        tput = sl["workers2_tput_ratio"]
        procs, counted = sl.get("workers2_processes", 0), sl.get("workers2_faces_counted_ok")
        ok = procs >= 3 and bool(counted) and min(tput.values()) >= 1.05
        rows.append([("LANDMARKS_WORKERS=2: >= 3 processes, /metrics counts every face, "
                     "throughput >= 1.05 x one worker"),
                     f"{procs} processes; /metrics counted {'every' if counted else 'NOT every'} "
                     "face; " + ", ".join(f"flip {k}: {v:.2f}x" for k, v in tput.items()),
                     _verdict(ok), when(sl)])
    for flip, ratio in sl.get("c1_ratio_w18", {}).items():
        rows.append([(f"c=1, flip {flip}: HTTP per face <= 1.10 x bare `session.run` (W18, "
                     "section 4 run)"), f"{_fmt(ratio)}x", _verdict(ratio <= 1.10), when(sl)])
    return rows


def notes(summaries: dict[str, dict]) -> list[str]:
    """Why each missed target is missed, from the measured summaries (no numbers typed in)."""
    st, sv = summaries.get("stages", {}), summaries.get("service", {})
    out = []
    b1 = sv.get("c1_breakdown_ms", {})
    if b1:
        parts = []
        for flip, b in b1.items():
            model = sv["bare_model_c1_ms"][flip]
            pipe = b["decode"] + b["preprocess"] + b["postprocess"]
            http = b["other"] + b["client_minus_server"]
            without_delay = sv["c1_ratio_model"][flip] - b["queue"] / model
            parts.append(
                f"flip {flip}: bare model {model:.1f} ms; on top of it, in sequence, pipeline work "
                f"{pipe:.1f} ms = **{pipe / model:.0%} of the model time** (decode "
                f"{b['decode']:.1f} + preprocess {b['preprocess']:.1f} + DARK/response "
                f"{b['postprocess']:.1f}), batcher delay {b['queue']:.1f} ms "
                f"({b['queue'] / model:.0%}), HTTP/framework/thread hand-offs {http:.1f} ms "
                f"({http / model:.0%}), and server-side inference {b['inference'] - model:+.1f} ms "
                f"vs bare; without the batcher delay the ratio would be about {without_delay:.2f}")
        verdicts = []
        for flip, b in b1.items():
            share = (b["decode"] + b["preprocess"] + b["postprocess"]) / sv["bare_model_c1_ms"][flip]
            verdicts.append(
                f"with flip {flip} the pipeline work alone ({share:.0%}) exceeds the 10 % margin, "
                "so that target cannot be met against the bare model on this CPU" if share >= 0.10
                else f"with flip {flip} the pipeline work ({share:.0%}) leaves {0.10 - share:.0%} "
                "of the model time for the batcher and the HTTP layer")
        out.append(
            "- **Latency at concurrency 1.** " + "; ".join(parts) + ". The pipeline steps "
            "(decode, crop, DARK, JSON) are work every request needs: " + "; ".join(verdicts)
            + ". Against the bare model + pipeline (second figure in the table) the ratio is what "
            "the HTTP service itself adds. The batcher no longer waits for company "
            "(`LANDMARKS_BATCH_TIMEOUT_MS` defaults to 0): what remains above the pipeline work "
            "is HTTP parsing, the multipart body, the thread hand-offs and the JSON answer.")
    b16 = sv.get("c16_breakdown_ms", {})
    if b16 and sv.get("c16_tput_ratio"):
        scan = sv.get("scan_rows_per_s", {})
        best = str(sv.get("best_batch"))
        batch_off = b16.get("off", {}).get("mean_batch", float("nan"))
        near = min(scan, key=lambda k: abs(int(k) - batch_off)) if scan else None
        pipe = st.get("pipeline_ms_per_face", {}).get("off")
        out.append(
            "- **Throughput at concurrency 16.** The bare loop runs only the network on both "
            "cores; the service runs the network *and*, on the same two cores, "
            + (f"about {pipe:.1f} ms of decode/crop/DARK/JSON CPU work per face (section 2) "
               if pipe else "the decode/crop/DARK/JSON work ")
            + "plus HTTP parsing, and the load generator takes its share too (CPU column). "
            f"Its batches hold {batch_off:.1f} rows on average with 16 requests in flight (the "
            "others are being decoded or post-processed); "
            + (f"bare onnxruntime does {scan[near]:.1f} rows/s at batch {near} and "
               f"{scan[best]:.1f} at its best batch {best}, so batch size costs "
               f"{max(0.0, 1 - scan[near] / scan[best]):.0%} here. " if near and best in scan else "")
            + "Against the bare model + pipeline doing the same work at the same batch size the "
            "service is at "
            + ", ".join(f"{v:.2f} (flip {k})" for k, v in sv.get("c16_tput_ratio_pipeline", {}).items())
            + ", so the HTTP layer itself costs little; the gap to the bare model is CPU the "
            "pipeline needs, which a GPU host (network on the GPU) does not take from the model.")
    sl, gn = summaries.get("serving", {}), summaries.get("gpu_network", {})
    cpu = sl.get("server_cpu_ms_per_face", {}).get("w1", {}).get("on")
    if cpu:
        inherent = sl.get("inherent_cpu_ms_per_face", float("nan"))
        # The same figure as the targets table: the median of the per-round ratios.
        ratio = sl.get("cpu_ratio", {}).get("w1", {}).get("on", cpu / inherent)
        text = (f"- **Serving layer.** With an instant network the server spends {cpu:.2f} ms of "
                f"CPU per face (flip on, 1 worker) where the work itself takes {inherent:.2f} ms "
                f"(median of the per-round ratios {ratio:.2f}x): one core feeds at most "
                f"{1000 / cpu:.0f} faces/s")
        best = gn.get("best_crops_per_s", {})
        if best:
            name, rate = max(best.items(), key=lambda kv: kv[1])
            text += (f"; the GPU runs the network at {rate:,.0f} crops/s ({name}), so feeding it "
                     f"takes about {rate * cpu / 1000:.0f} cores of serving work")
        out.append(text + " (section 4).")
    if st.get("dark_speedup_n1"):
        out.append(
            f"- **DARK.** {st['dark_speedup_n1']:.1f}x over the loop and "
            f"{st['dark_ms_per_face_n1']:.2f} ms per face: both implementations must Gaussian-blur "
            "all 98 whole maps (the blurred maximum rescales each map), one OpenCV call that is "
            "most of the vectorised time (section 2); everything else is "
            f"{st.get('dark_speedup_without_blur_n1', float('nan')):.1f}x faster than the loop. "
            "Blurring only near the peaks would need the exact blurred maximum without "
            "blurring the whole map, and the pipeline reproduces mmpose bit for bit.")
    return out


def write(path: Path, ctx: Context, results: list[SectionResult], timings: dict[str, float],
          title: str = "Benchmark results") -> None:
    sections = read_sections(path)
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    for result in results:
        result.summary["measured_at"] = stamp
        sections[result.name] = (f"## {result.title}\n\n{result.markdown.rstrip()}\n", result.summary)
    summaries = {name: s for name, (_, s) in sections.items()}
    ran = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    lines = [
        f"# {title}",
        "",
        ("<!-- Generated by `python -m bench` (bench/report.py). Each section block is rewritten "
        "only by the run that measured it; edit bench/*.py, not this file. -->"),
        "",
        (f"Last run: {stamp}, command `{ctx.command}`{' (quick smoke run: short, noisy)' if ctx.quick else ''}; "
        f"sections run: {ran or 'none'}."),
        f"Machine: {machine()}.",
        f"Versions: {versions_line()}.",
        "",
        ("Every ratio below compares things measured side by side in one run (interleaved), "
        "because the absolute numbers on a small shared machine drift. Each section ends with "
        "its own date, machine, versions and the 1-minute load average before/after."),
        ("Related: [SOAK.md](SOAK.md) (`python -m bench.soak`, steady load over minutes), "
        "[RESULTS-gpu.md](RESULTS-gpu.md) (`bash bench/gpu.sh` on a GPU host)."),
        "",
        "## Targets",
        "",
        targets_table(summaries),
        "",
    ]
    explained = notes(summaries)
    if explained:
        lines += ["Where the misses come from (figures from the sections below):", "", *explained, ""]
    for name in ORDER + tuple(k for k in sections if k not in ORDER):  # OPTIONAL last
        if name not in sections:
            continue
        body, summary = sections[name]
        lines += [f"<!-- section:{name} -->", body.rstrip(), "",
                  f"<!-- summary {json.dumps(summary, default=float)} -->",
                  f"<!-- /section:{name} -->", ""]
    lines += [
        "## How to run",
        "",
        ("- `make bench` (= `.venv/bin/python -m bench`): everything, about 15 minutes on 2 cores; "
        "`--quick` for a smoke run, `--only model,stages,service,serving,memory` for some sections "
        "(the other blocks of this file are kept)."),
        ("- `.venv/bin/python -m bench.soak --minutes 10`: steady load against a real server, "
        "writes [SOAK.md](SOAK.md)."),
        ("- `bash bench/gpu.sh`: on a GPU host, offline: the host's packages plus an optional "
        "wheel folder (`WHEELS=/path`); writes [RESULTS-gpu.md](RESULTS-gpu.md)."),
        ("- Models: random-init exports (`python -m model_export export --random-init`) cached "
        "in `bench/out/` (git-ignored) with raw JSON and server logs."),
        "",
    ]
    path.write_text("\n".join(lines))
