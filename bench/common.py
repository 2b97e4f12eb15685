"""Shared helpers: machine/version lines, model files, timing and statistics.

Every figure the benchmarks print is measured here, never estimated. On a small, shared
machine the absolute numbers drift from minute to minute, so things that are compared are
timed *interleaved* (A, B, A, B, ...) within one run and reported as ratios per round.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"  # git-ignored: exported models, raw JSON, server logs
SAMPLES = ROOT / "tests" / "data" / "wflw_samples"
if str(ROOT) not in sys.path:  # `tests.reference` (the DARK loop) and the packages, from any cwd
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- run context


@dataclass
class Context:
    quick: bool = False
    gpu: bool = False  # run the GPU variants (CUDA / TensorRT providers, torch on CUDA)
    providers: str = "cpu"  # LANDMARKS_PROVIDERS for the server and the bare sessions
    command: str = "make bench"
    notes: list[str] = field(default_factory=list)
    serving_workers: tuple[int, ...] = (1, 2)  # LANDMARKS_WORKERS values the serving section runs

    def scale(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    @property
    def ort_providers(self) -> list[str]:
        names = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}
        return [names[p.strip()] for p in self.providers.split(",") if p.strip()]


@dataclass
class SectionResult:
    name: str  # model | stages | service | serving | memory
    title: str
    markdown: str
    summary: dict


# --------------------------------------------------------------------------- machine + versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
                             check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def machine() -> str:
    cores = os.cpu_count()
    text = f"{_cpu_model()}, {cores} logical CPUs, {_mem_gib():.0f} GiB RAM, {platform.system()} " \
           f"{platform.release()}"
    gpu = gpu_name()
    if gpu:
        text += f"; GPU: {gpu}"
    return text


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for module, name in (("numpy", "numpy"), ("cv2", "opencv"), ("onnxruntime", "onnxruntime"),
                         ("torch", "torch"), ("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                         ("uvloop", "uvloop"), ("httptools", "httptools"), ("orjson", "orjson"),
                         ("prometheus_client", "prometheus-client"), ("httpx", "httpx")):
        try:
            mod = __import__(module)
            out[name] = getattr(mod, "__version__", None) or _dist_version(name)
        except Exception:  # a missing optional package is reported, not fatal
            out[name] = "not installed"
    return out


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def versions_line() -> str:
    return ", ".join(f"{k} {v}" for k, v in versions().items())


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_cpu_seconds() -> float:
    """CPU-seconds all processes have used since boot (from /proc/stat), to tell how much of the
    machine other processes took during a measurement."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def stamp(ctx: Context, started_load: str) -> str:
    """The line printed under every table: when, where, with what, how busy the machine was."""
    return (f"_Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}; {versions_line()}; "
            f"command `{ctx.command}`; 1-min load average {started_load} before -> {loadavg()} "
            f"after this section._")


# --------------------------------------------------------------------------- model files


MODEL_ARCHS = {"w18": "hrnetv2_w18", "tiny": "hrnetv2_tiny"}


def ensure_model(kind: str = "w18", fp16: bool = False) -> Path:
    """Random-init ONNX file exported by model_export into bench/out/ (cached).

    W18 with random weights has exactly the graph, shapes and FLOPs of the trained model,
    and randomize_for_demo gives unit-scale activations (no denormals), so it runs at the
    trained model's speed. `fp16` also writes the CUDA fp16 variant.
    """
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{kind}_random.onnx"
    fp16_path = OUT / f"{kind}_random_fp16.onnx"
    if path.is_file() and (not fp16 or fp16_path.is_file()):
        return fp16_path if fp16 else path
    cmd = [sys.executable, "-m", "model_export", "export", "--random-init", "--seed", "0",
           "--arch", MODEL_ARCHS[kind], "--output", str(path)]
    if fp16:
        cmd += ["--fp16", "--fp16-output", str(fp16_path)]
    log(f"exporting {kind} model: {' '.join(cmd[1:])}")
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return fp16_path if fp16 else path


# --------------------------------------------------------------------------- timing


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def time_calls(fn: Callable[[], object], min_time: float, min_calls: int = 1,
               max_calls: int = 10_000) -> list[float]:
    """Call fn repeatedly for at least min_time seconds (and min_calls); per-call seconds."""
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls and (len(samples) < min_calls or
                                        time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, time_per_round: float,
                min_calls: int = 1, warmup: int = 1) -> dict[str, list[list[float]]]:
    """Time several functions in alternation: round r times each fn for time_per_round s.

    Returns name -> list (per round) of per-call seconds. Everything compared in a ratio goes
    through here, so a burst of load from another process hits all of them alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[list[float]]] = {name: [] for name in fns}
    for r in range(rounds):
        names = list(fns) if r % 2 == 0 else list(reversed(fns))  # ABBA order
        for name in names:
            out[name].append(time_calls(fns[name], time_per_round, min_calls))
    return out


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def percentile(xs, q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def flat(rounds: list[list[float]]) -> list[float]:
    return [x for r in rounds for x in r]


def round_ratios(num: list[list[float]], den: list[list[float]]) -> list[float]:
    """Per-round ratio of medians (num / den)."""
    return [median(a) / median(b) for a, b in zip(num, den)]


def ratio_text(ratios: list[float], digits: int = 2) -> str:
    """'1.23 (1.20-1.27)': median over rounds, with the range."""
    if not ratios:
        return "n/a"
    med = median(ratios)
    if len(ratios) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(ratios):.{digits}f}-{max(ratios):.{digits}f})"


def ms(seconds: float, digits: int = 2) -> str:
    return f"{seconds * 1e3:.{digits}f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dump_json(name: str, data) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=float))
    return path
