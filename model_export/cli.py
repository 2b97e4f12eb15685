"""`python -m model_export <command>`: export, fetch-default (and the commands other
modules register). Every expected failure exits 2 with a one-line reason, no traceback."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .checkpoint import (
    OFFICIAL_CHECKPOINT_SHA256,
    OFFICIAL_CHECKPOINT_URL,
    CheckpointError,
    default_cache_dir,
    load_checkpoint,
)
from .model import ARCHITECTURES, build_model, randomize_for_demo

DEFAULT_MODEL_PATH = Path("models/hrnetv2_w18_wflw_dark.onnx")


def _add_export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, default=DEFAULT_MODEL_PATH, help="ONNX file to write")
    p.add_argument("--arch", default="hrnetv2_w18", choices=sorted(ARCHITECTURES))
    p.add_argument("--fp16", action="store_true",
                   help="also write a CUDA-targeted fp16 variant (float32 I/O) next to it")
    p.add_argument("--fp16-output", type=Path, default=None,
                   help="path of the fp16 file (default: <output stem>_fp16.onnx)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"download cache (default {default_cache_dir()})")


def export_command(args: argparse.Namespace) -> int:
    from service.pipeline.config import PipelineConfig

    from .export import (
        add_golden_record, compare_fp16, convert_fp16, export_fp32, provenance,
        verify_against_torch,
    )

    model = build_model(args.arch)
    if args.random_init:
        randomize_for_demo(model, seed=args.seed)
        sha, trained, source = None, False, "random-init"
        print("WARNING: exporting an UNTRAINED model (random weights); it is for demos and "
              "tests only and is marked trained=false", file=sys.stderr)
    else:
        loaded = load_checkpoint(model, args.checkpoint, args.sha256, args.cache_dir)
        sha, trained, source = loaded.sha256, True, str(args.checkpoint)
        print(f"loaded {source} (sha256 {sha})")
    config = PipelineConfig(num_keypoints=model.config.num_keypoints)
    props = provenance(trained, sha, args.arch, "fp32", {"source": source})
    start = time.perf_counter()
    path = export_fp32(model, args.output, config, props)
    seconds = time.perf_counter() - start
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {seconds:.1f} s")
    diff, value_range = verify_against_torch(path, model, config)
    print(f"onnxruntime vs PyTorch: max abs diff {diff:.3g} over heatmap range {value_range:.3g} "
          f"(relative {diff / max(value_range, 1e-12):.2g})")
    golden = add_golden_record(path, config)
    print(f"golden self-check data: {len(golden['points'])} of {config.num_keypoints} keypoints "
          "with a clear peak recorded")
    if args.fp16:
        fp16_path = args.fp16_output or path.with_name(path.stem + "_fp16.onnx")
        convert_fp16(path, fp16_path)
        print(f"wrote {fp16_path} ({fp16_path.stat().st_size / 1e6:.1f} MB)")
        print(compare_fp16(path, fp16_path, config))
    return 0


def fetch_default_command(args: argparse.Namespace) -> int:
    """The official mmpose checkpoint -> models/hrnetv2_w18_wflw_dark.onnx."""
    args.checkpoint = args.url
    args.random_init = False
    args.arch = "hrnetv2_w18"
    args.seed = 0
    try:
        return export_command(args)
    except CheckpointError as exc:
        if "could not download" in str(exc):
            name = args.url.rsplit("/", 1)[-1]
            cache = args.cache_dir or default_cache_dir()
            raise CheckpointError(
                f"{exc}\nOffline? Download {args.url} elsewhere and put it at {cache / name} "
                f"(it is checked against sha256 prefix {args.sha256}), or run "
                f"`python -m model_export export --checkpoint /path/to/{name} --output {args.output}`"
            ) from None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="mmpose checkpoint (file or URL) -> ONNX")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="local .pth or http(s) URL (mmpose format or bare state dict)")
    source.add_argument("--random-init", action="store_true",
                        help="untrained random weights (demos/tests; flagged trained=false)")
    p.add_argument("--sha256", default=None,
                   help="expected sha256 (full or >= 8-hex prefix); URLs default to the prefix in the file name")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    _add_export_options(p)
    p.set_defaults(func=export_command)

    p = sub.add_parser("fetch-default", help="download the official checkpoint and export it")
    p.add_argument("--url", default=OFFICIAL_CHECKPOINT_URL)
    p.add_argument("--sha256", default=OFFICIAL_CHECKPOINT_SHA256)
    _add_export_options(p)
    p.set_defaults(func=fetch_default_command)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Commands that live with their own code (training, evaluation)."""
    registrars = []
    for module in ("train", "evaluate"):
        try:
            mod = __import__(f"model_export.{module}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"model_export.{module}":
                raise
            continue
        registrars.append(mod.register)
    return registrars


def main(argv: list[str] | None = None) -> int:
    from .export import ExportError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ExportError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
