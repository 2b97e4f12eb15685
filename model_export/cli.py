"""Train, export and evaluate the face-landmark model, and fetch the face detector.

Every expected failure exits with status 2 and a one-line reason, no traceback.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

# Only modules without torch are imported up here: `fetch-detector` (and `--help`) must work
# in an image that has no torch. The commands import what they need when they run.
from .checkpoint import OFFICIAL_CHECKPOINT_SHA256, OFFICIAL_CHECKPOINT_URL, CheckpointError

# Where the service looks for the official model by default: only trained weights go here.
DEFAULT_MODEL_PATH = Path("models/hrnetv2_w18_wflw_dark.onnx")
# `--random-init` exports land here unless --output says otherwise (`make run-demo` serves it).
DEMO_MODEL_PATH = Path("models/demo_untrained.onnx")
DEFAULT_DETECTOR_PATH = Path("models/retinaface_mnet025.onnx")
# Names of model_export.model.ARCHITECTURES (listed here so the parser needs no torch; a test
# keeps the two in step).
ARCH_NAMES = ("hrnetv2_tiny", "hrnetv2_w18")
CACHE_HELP = "download cache (default: $LANDMARKS_CACHE_DIR or ~/.cache/face-landmarks/checkpoints)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, off flags) or
    the help already states it. Descriptions: paragraphs are re-wrapped, indented lines
    (examples) are kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "(default" in text:
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = textwrap.dedent(text).strip().split("\n\n")
        out = []
        for paragraph in paragraphs:
            if paragraph.startswith(" "):
                out.append(textwrap.indent(paragraph, indent))
            else:
                out.append(textwrap.fill(" ".join(paragraph.split()), width,
                                         initial_indent=indent, subsequent_indent=indent,
                                         break_on_hyphens=False))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    """Every (sub)command parser uses HelpFormatter, whoever registers it."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


# --------------------------------------------------------------------------- export


def _add_export_outputs(p: argparse.ArgumentParser, output_help: str, output_default) -> None:
    p.add_argument("--output", type=Path, default=output_default, help=output_help)
    p.add_argument("--fp16", action="store_true",
                   help="also write a CUDA-targeted fp16 variant (float32 inputs and outputs)")
    p.add_argument("--fp16-output", type=Path, default=None,
                   help="path of the fp16 file (default: <output stem>_fp16.onnx)")
    p.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)


def export_command(args: argparse.Namespace) -> int:
    output = args.output or (DEMO_MODEL_PATH if args.random_init else DEFAULT_MODEL_PATH)
    _export(arch=args.arch, checkpoint=args.checkpoint, sha256=args.sha256,
            random_init=args.random_init, seed=args.seed, sigma=args.sigma, output=output,
            fp16=args.fp16, fp16_output=args.fp16_output, cache_dir=args.cache_dir)
    return 0


def fetch_default_command(args: argparse.Namespace) -> int:
    """The official mmpose checkpoint -> the default model path."""
    try:
        _export(arch="hrnetv2_w18", checkpoint=args.url, sha256=args.sha256, output=args.output,
                fp16=args.fp16, fp16_output=args.fp16_output, cache_dir=args.cache_dir)
    except CheckpointError as exc:
        if "could not download" in str(exc):
            from .checkpoint import default_cache_dir

            name = args.url.rsplit("/", 1)[-1]
            cache = args.cache_dir or default_cache_dir()
            raise CheckpointError(
                f"{exc}\nOffline? Download {args.url} elsewhere and put it at {cache / name} "
                f"(it is checked against sha256 prefix {args.sha256}), or run "
                f"`python -m model_export export --checkpoint /path/to/{name} --output {args.output}`"
            ) from None
        raise
    return 0


def _export(*, arch: str, output: Path, checkpoint: str | None = None, sha256: str | None = None,
            random_init: bool = False, seed: int = 0, sigma: float | None = None,
            fp16: bool = False, fp16_output: Path | None = None, cache_dir: Path | None = None):
    """Build the model from a checkpoint (or random weights) and export it; prints a summary."""
    from service.pipeline.config import HeatmapCodec, PipelineConfig

    from .checkpoint import load_checkpoint
    from .export import Provenance, export_onnx
    from .model import build_model, randomize_for_demo

    model = build_model(arch)
    codec = {}
    if random_init:
        randomize_for_demo(model, seed=seed)
        provenance = Provenance(trained=False, source="random-init")
        print("WARNING: exporting an UNTRAINED model (random weights); it is for demos and "
              "tests only and is marked trained=false", file=sys.stderr)
    else:
        loaded = load_checkpoint(model, checkpoint, sha256, cache_dir)
        provenance = Provenance(trained=True, source=str(checkpoint),
                                checkpoint_sha256=loaded.sha256)
        codec = dict(loaded.meta.get("codec") or {})  # recorded by `train`
        print(f"loaded {checkpoint} (sha256 {loaded.sha256})")
    if sigma is not None:
        codec.update(sigma=sigma, blur_kernel=None)  # the kernel follows the sigma
    config = PipelineConfig(num_keypoints=model.config.num_keypoints, codec=HeatmapCodec(**codec))
    result = export_onnx(model, output, config=config, provenance=provenance, fp16=fp16,
                         fp16_output=fp16_output)
    for line in result.summary():
        print(line)
    return result


# --------------------------------------------------------------------------- detector


def fetch_detector_command(args: argparse.Namespace) -> int:
    from .detector import fetch_detector

    path = fetch_detector(args.output, cache_dir=args.cache_dir)
    print(f"wrote {path}")
    return 0


def calibrate_detector_command(args: argparse.Namespace) -> int:
    from .detector import calibrate_detector

    calibrate_detector(args.wflw_root, args.output)  # reports what it wrote
    return 0


# --------------------------------------------------------------------------- train


def train_command(args: argparse.Namespace) -> int:
    from .train import train_command as run

    return run(args)


TRAIN_DESCRIPTION = """\
Train the landmark model on WFLW with mmpose's recipe for hrnetv2_w18_wflw_256x256_dark.

Defaults are mmpose's: Adam lr 2e-3, linear warm-up over 500 iterations, step decay x0.1 at
epochs 40 and 55, 60 epochs, batch 64 per process, JointsMSELoss with target weights, flip /
scale / rotation augmentation and unbiased Gaussian targets of sigma 2 (the exported model
decodes with the DARK blur kernel that matches the sigma: 2 -> 11, 3 -> 17).

  one process:        python -m model_export train --wflw-root DIR --work-dir DIR
  several GPUs/nodes: torchrun --nproc_per_node 8 -m model_export train --wflw-root DIR ...

--batch-size is per process and the learning rate is NOT rescaled with the number of
processes (mmpose's 2e-3 goes with 8 GPUs x 64). Written to --work-dir: log.jsonl,
epoch_<n>.pth and best_NME_epoch_<n>.pth (mmpose's checkpoint format, accepted by
`export --checkpoint`), final.pth, resume.pth (for --resume) and, with --export, the ONNX file.
"""


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train on WFLW with mmpose's schedule (torchrun for "
                                     "several GPUs/nodes)", description=TRAIN_DESCRIPTION)
    data = p.add_argument_group("data")
    data.add_argument("--wflw-root", type=Path, default=None,
                      help="WFLW root in the official layout (WFLW_annotations/, WFLW_images/) "
                           "or mmpose's (annotations/*.json, images/)")
    data.add_argument("--train-ann-file", type=Path, default=None,
                      help="instead of --wflw-root: mmpose JSON for training (with --img-dir)")
    data.add_argument("--val-ann-file", type=Path, default=None, help="mmpose JSON for validation")
    data.add_argument("--img-dir", type=Path, default=None, help="image folder of the JSON files")
    data.add_argument("--val-split", choices=["test", "train"], default="test",
                      help="split validated on (mmpose: test)")
    data.add_argument("--no-check-images", action="store_true",
                      help="skip the up-front check that every image file exists")
    p.add_argument("--work-dir", type=Path, required=True, help="logs and checkpoints go here")
    p.add_argument("--arch", default="hrnetv2_w18", choices=ARCH_NAMES,
                   help="model width/depth (hrnetv2_tiny: a few thousand parameters, for tests)")

    sched = p.add_argument_group("schedule (defaults: mmpose's config)")
    sched.add_argument("--epochs", type=int, default=60, help="total epochs")
    sched.add_argument("--batch-size", type=int, default=64, help="samples per process and iteration")
    sched.add_argument("--lr", type=float, default=2e-3,
                       help="Adam learning rate, for 8 processes x 64; NOT rescaled "
                            "automatically for other world or batch sizes")
    sched.add_argument("--lr-steps", type=int, nargs="*", default=[40, 55],
                       help="epochs at which the learning rate is multiplied by --lr-gamma")
    sched.add_argument("--lr-gamma", type=float, default=0.1, help="step decay factor")
    sched.add_argument("--warmup-iters", type=int, default=500,
                       help="linear warm-up iterations (0 disables)")
    sched.add_argument("--warmup-ratio", type=float, default=0.001,
                       help="warm-up starting learning rate as a fraction of --lr")
    sched.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    sched.add_argument("--seed", type=int, default=0,
                       help="seed of initialisation, sampler and augmentation")

    augment = p.add_argument_group("augmentation and targets (defaults: mmpose's config)")
    augment.add_argument("--flip-prob", type=float, default=0.5,
                         help="probability of a horizontal flip")
    augment.add_argument("--rot-factor", type=float, default=30.0,
                         help="rotation = clip(N(0,1) x this, +-2 x this) degrees")
    augment.add_argument("--rot-prob", type=float, default=0.6,
                         help="probability of applying the rotation")
    augment.add_argument("--scale-factor", type=float, default=0.25,
                         help="scale x clip(1 + N(0,1) x this, 1 -+ this)")
    augment.add_argument("--sigma", type=float, default=2.0,
                         help="target Gaussian sigma in heatmap pixels; sets the DARK blur kernel "
                              "the exported model decodes with")

    run = p.add_argument_group("validation, checkpoints, logging")
    run.add_argument("--val-interval", type=int, default=1,
                     help="validate every N epochs and keep the best NME checkpoint (0: never)")
    run.add_argument("--val-batch-size", type=int, default=32,
                     help="network rows per forward pass in validation")
    run.add_argument("--no-val-flip-test", action="store_true",
                     help="validate without the flip test (mmpose validates with it)")
    run.add_argument("--checkpoint-interval", type=int, default=1,
                     help="save epoch_<n>.pth every N epochs (0: only resume, best and final)")
    run.add_argument("--max-keep-ckpts", type=int, default=-1,
                     help="keep only the newest N epoch_<n>.pth files (-1: all)")
    run.add_argument("--log-interval", type=int, default=5,
                     help="iterations per log.jsonl train record")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                     help="continue from PATH, or with no value from <work-dir>/resume.pth if it "
                          "exists (restores model, optimiser, schedule, AMP scaler and RNG state)")

    init = p.add_argument_group("initialisation and hardware")
    init.add_argument("--pretrained", default=None, metavar="FILE|URL",
                      help="ImageNet HRNetV2 backbone weights, e.g. mmpose's "
                           "open-mmlab://msra/hrnetv2_w18 (understood as its URL); without it "
                           "mmpose's random initialisation")
    init.add_argument("--pretrained-sha256", default=None,
                      help="expected sha256 (prefix) of --pretrained; URLs default to the hash "
                           "in the file name")
    init.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    init.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="auto: CUDA when available (process LOCAL_RANK's GPU)")
    init.add_argument("--no-amp", action="store_true",
                      help="disable mixed precision (used on CUDA only; CPU is always float32)")

    out = p.add_argument_group("export")
    out.add_argument("--export", nargs="?", const="auto", default=None, metavar="ONNX",
                     help="after training, export to ONNX (with no value: "
                          "<work-dir>/<arch>_wflw.onnx)")
    out.add_argument("--export-which", choices=["best", "last"], default="best",
                     help="checkpoint to export: best validation NME or the last epoch")
    p.set_defaults(func=train_command)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m model_export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)

    p = sub.add_parser("export", help="convert an mmpose checkpoint (file or URL) to ONNX",
                       description="Convert an mmpose checkpoint (file or URL) of the landmark "
                                   "model to the ONNX file the service loads.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="local .pth or http(s) URL (mmpose format or a bare state dict)")
    source.add_argument("--random-init", action="store_true",
                        help="untrained random weights, for demos and tests (marked untrained)")
    p.add_argument("--sha256", default=None,
                   help="expected sha256 of the checkpoint (full or >= 8 hex digits); URLs "
                        "default to the prefix in the file name")
    p.add_argument("--arch", default="hrnetv2_w18", choices=ARCH_NAMES, help="model architecture")
    p.add_argument("--sigma", type=float, default=None,
                   help="training target sigma of the checkpoint, which sets the DARK blur "
                        "kernel (default: as recorded by `train` in the checkpoint, else 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --random-init weights")
    _add_export_outputs(p, f"ONNX file to write (default: {DEFAULT_MODEL_PATH}, or "
                           f"{DEMO_MODEL_PATH} with --random-init)", None)
    p.set_defaults(func=export_command)

    p = sub.add_parser("fetch-default",
                       help="download mmpose's published WFLW checkpoint and export it",
                       description="Download mmpose's hrnetv2_w18_wflw_256x256_dark checkpoint, "
                                   "verify its hash and export it to ONNX.")
    p.add_argument("--url", default=OFFICIAL_CHECKPOINT_URL, help="checkpoint URL")
    p.add_argument("--sha256", default=OFFICIAL_CHECKPOINT_SHA256,
                   help="expected sha256 of the download (full or >= 8 hex digits)")
    _add_export_outputs(p, "ONNX file to write", DEFAULT_MODEL_PATH)
    p.set_defaults(func=fetch_default_command)

    _add_train_parser(sub)

    p = sub.add_parser("fetch-detector", help="download and verify the face detector ONNX file",
                       description="Download the RetinaFace-MobileNet0.25 face detector, verify "
                                   "it and write the ONNX file the service loads.")
    p.add_argument("--output", type=Path, default=DEFAULT_DETECTOR_PATH,
                   help="ONNX file to write")
    p.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    p.set_defaults(func=fetch_detector_command)

    p = sub.add_parser("calibrate-detector",
                       help="fit the detector-box to crop-box rule on WFLW",
                       description="Run the face detector on WFLW and fit the rule that turns "
                                   "its boxes into landmark crop boxes.")
    p.add_argument("--wflw-root", type=Path, required=True,
                   help="WFLW root (official or mmpose layout)")
    p.add_argument("--output", type=Path, required=True, help="calibration file to write")
    p.set_defaults(func=calibrate_detector_command)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Commands that register their own options (evaluation)."""
    from . import evaluate

    return [evaluate.register]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, _loaded_expected_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


# Expected failures defined in modules the commands import lazily (torch, onnxruntime).
_LAZY_ERRORS = (("model_export.export", "ExportError"),
                ("model_export.detector", "DetectorFetchError"))


def _loaded_expected_errors() -> tuple[type[BaseException], ...]:
    """The lazily defined error types whose module has been imported (only those can have
    been raised)."""
    found = []
    for module_name, name in _LAZY_ERRORS:
        error = getattr(sys.modules.get(module_name), name, None)
        if isinstance(error, type):
            found.append(error)
    return tuple(found)
