"""`python -m bench [--quick] [--only model,stages,service,serving,memory,gpu_network] [--results PATH]`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path

from .common import BENCH, Context, SectionResult, gpu_name, log
from .report import OPTIONAL, ORDER, TITLES, write

MODULES = {"service": "service_e2e"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run (noisy numbers)")
    parser.add_argument("--only", default=",".join(ORDER),
                        help=f"comma list of sections to run (default all: {','.join(ORDER)}; "
                             f"also: {','.join(OPTIONAL)})")
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md",
                        help="Markdown file to (re)write (default bench/RESULTS.md)")
    parser.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto",
                        help="run the GPU variants (auto: when nvidia-smi finds a GPU)")
    parser.add_argument("--providers", default=None,
                        help="LANDMARKS_PROVIDERS for the service runs (default cpu, or cuda,cpu with a GPU)")
    parser.add_argument("--serving-workers", default="1,2",
                        help="LANDMARKS_WORKERS values for the serving section (default 1,2)")
    args = parser.parse_args(argv)

    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in ORDER + OPTIONAL]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(ORDER + OPTIONAL)}")
    gpu = args.gpu == "yes" or (args.gpu == "auto" and gpu_name() is not None)
    argv_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    ctx = Context(quick=args.quick, gpu=gpu, providers=args.providers or ("cuda,cpu" if gpu else "cpu"),
                  command=f"python -m bench {argv_text}".strip(),
                  serving_workers=tuple(int(w) for w in args.serving_workers.split(",") if w.strip()))
    title = "Benchmark results (GPU)" if gpu else "Benchmark results"

    results: list[SectionResult] = []
    timings: dict[str, float] = {}
    failed = []
    started = time.perf_counter()
    for name in ORDER + OPTIONAL:
        if name not in sections:
            continue
        module = __import__(f"bench.{MODULES.get(name, name)}", fromlist=["run"])
        log(f"section {name} ...")
        t0 = time.perf_counter()
        try:
            result = module.run(ctx)
        except Exception:  # keep the other sections; record the failure in the file
            failed.append(name)
            text = traceback.format_exc()
            log(f"section {name} FAILED:\n{text}")
            result = SectionResult(name, TITLES[name], f"**This section failed:**\n\n```\n{text}```\n", {})
        timings[name] = time.perf_counter() - t0
        log(f"section {name} done in {timings[name]:.0f} s")
        results.append(result)
        write(args.results, ctx, results, timings, title)  # after every section: partial results survive
    log(f"all done in {time.perf_counter() - started:.0f} s -> {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
