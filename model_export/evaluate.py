"""`python -m model_export evaluate`: WFLW NME of an ONNX model, measured through the service's
own pipeline (`service.pipeline.faces.predict` on an onnxruntime session opened by
`service.engine.session.open_session`), so the figures describe exactly what the service serves.

    python -m model_export evaluate --model model.onnx --wflw-root DIR [--split test]
    python -m model_export evaluate --model model.onnx --ann-file FILE.json --img-dir DIR

Each face is cropped from the annotation's centre and scale * 1.25 (PIPELINE.md section 6),
with the flip test on unless --no-flip-test. Reported per evaluation set: NME (inter-ocular,
mmpose's definition; see model_export.metrics), failure rate at 0.10 and AUC@0.10. The sets are
the full split plus the six attribute subsets (pose, illumination, occlusion, blur, makeup,
expression): from the flags for the official text files, from mmpose's
`<stem>_{largepose,...}.json` files next to `--ann-file` for the JSON form. Written under
--out-dir: results.md, results.json (with every face's NME) and ced.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from service.pipeline.config import PipelineConfig
from service.pipeline.faces import predict
from service.pipeline.keypoints import NME_NORM_INDICES

from . import metrics
from .data.transforms import padded_center_scale
from .data.wflw import SUBSET_ORDER, FaceRecord, WFLWError, WFLWSource, find_split, load_rgb


def predict_records(run: Callable[[np.ndarray], np.ndarray], records: Sequence[FaceRecord],
                    config: PipelineConfig, flip_test: bool = True, max_batch: int = 32,
                    progress: bool = False) -> np.ndarray:
    """Landmarks (N, K, 2) float32 of each face, through `faces.predict` (one call per image:
    all faces of an image are cropped from one decode)."""
    groups: dict[Path, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.image_path, []).append(i)
    out = np.zeros((len(records), config.num_keypoints, 2), dtype=np.float32)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="evaluate", unit="face", file=sys.stderr,
                   dynamic_ncols=True)
    try:
        for path, indices in groups.items():
            rgb = load_rgb(path)
            boxes = [padded_center_scale(records[i].center, records[i].scale, config)
                     for i in indices]
            center = np.stack([c for c, _ in boxes])
            scale = np.stack([s for _, s in boxes])
            landmarks, _ = predict(run, rgb, center, scale, config, flip_test, max_batch)
            out[indices] = landmarks
            if bar is not None:
                bar.update(len(indices))
    finally:
        if bar is not None:
            bar.close()
    return out


def record_errors(records: Sequence[FaceRecord], pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised errors (N, K) float32 and validity (N, K) of predictions against the records."""
    gt = np.stack([r.keypoints for r in records]).astype(np.float64)
    visible = np.stack([r.visible for r in records])
    return metrics.keypoint_errors(pred, gt, visible, NME_NORM_INDICES)


def _face_key(record: FaceRecord) -> tuple:
    return (str(record.image_path), record.keypoints.tobytes(), record.center.tobytes(),
            float(record.scale))


def evaluate_sets(run, sets: dict[str, list[FaceRecord]], config: PipelineConfig,
                  flip_test: bool, max_batch: int, threshold: float, progress: bool = False
                  ) -> dict:
    """Predict every distinct face once, then score each set. Returns {"sets", "faces"}."""
    unique: dict[tuple, int] = {}
    records: list[FaceRecord] = []
    for faces in sets.values():
        for record in faces:
            key = _face_key(record)
            if key not in unique:
                unique[key] = len(records)
                records.append(record)
    pred = predict_records(run, records, config, flip_test, max_batch, progress)
    errors, valid = record_errors(records, pred)
    face_nme = metrics.per_face_nme(errors, valid)
    results = {}
    for name, faces in sets.items():
        index = np.array([unique[_face_key(r)] for r in faces], dtype=np.int64)
        summary = metrics.summarize(errors[index], valid[index], threshold)
        summary["face_nme"] = face_nme[index]
        results[name] = summary
    per_face = [
        {"image": r.extra.get("rel_path", str(r.image_path)), "source": r.source,
         "nme": None if np.isnan(face_nme[i]) else float(face_nme[i])}
        for i, r in enumerate(records)
    ]
    return {"sets": results, "faces": per_face}


# --------------------------------------------------------------------------- reporting


def markdown_table(sets: dict[str, dict], threshold: float) -> str:
    """The mmpose-style NME row (x100) and a detailed table per set."""
    names = list(sets)
    head = "| " + " | ".join(f"NME {n}" for n in names) + " |"
    rule = "|" + "---|" * len(names)
    row = "| " + " | ".join(f"{sets[n]['nme'] * 100:.2f}" for n in names) + " |"
    t = f"{threshold:.2f}"
    lines = [head, rule, row, "",
             f"| set | faces | NME (%) | FR@{t} (%) | AUC@{t} |", "|---|---:|---:|---:|---:|"]
    for name in names:
        s = sets[name]
        lines.append(f"| {name} | {s['faces']} | {s['nme'] * 100:.2f} | "
                     f"{s['failure_rate'] * 100:.2f} | {s['auc']:.4f} |")
    return "\n".join(lines)


def plot_ced(sets: dict[str, dict], threshold: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for name, s in sets.items():
        x, y = metrics.ced(s["face_nme"], threshold, steps=1001)
        ax.step(x, y, where="post", label=f"{name} (AUC {s['auc']:.3f}, NME {s['nme'] * 100:.2f}%)",
                linewidth=2.0 if name == next(iter(sets)) else 1.2)
    ax.set_xlim(0, threshold)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME (inter-ocular)")
    ax.set_ylabel("fraction of faces")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command


def _sets_from_args(args) -> tuple[dict[str, list[FaceRecord]], dict]:
    check = not args.no_check_images
    if args.ann_file is not None:
        if args.img_dir is None:
            raise WFLWError("--ann-file needs --img-dir (the folder its file_names are relative to)")
        source = WFLWSource("json", Path(args.ann_file), Path(args.img_dir))
        label = "test"
    else:
        source = find_split(args.wflw_root, args.split)
        label = args.split
    sets = source.read_subsets(check)
    sets = {(label if name == "test" else name): faces for name, faces in sets.items()}
    if args.subsets is not None:
        wanted = [label if s == "test" else s for s in args.subsets]
        sets = {name: sets[name] for name in wanted if name in sets}
    sets = {name: faces for name, faces in sets.items() if faces}
    info = {"form": source.form, "ann_file": str(source.ann_file), "img_dir": str(source.img_dir)}
    return sets, info


def _providers(device: str) -> list[str]:
    if device == "cuda" or (device == "auto" and Path("/dev/nvidiactl").exists()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def evaluate_command(args: argparse.Namespace) -> int:
    from service.engine.session import ModelLoadError, open_session, run_session

    if (args.wflw_root is None) == (args.ann_file is None):
        raise WFLWError("give either --wflw-root DIR or --ann-file FILE.json --img-dir DIR")
    sets, data_info = _sets_from_args(args)
    if not sets:
        raise WFLWError("no faces to evaluate")
    try:
        session, info = open_session(Path(args.model), _providers(args.device),
                                     max_batch=args.batch_size, threads=args.threads)
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    for warning in info.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    flip_test = not args.no_flip_test
    total = len({_face_key(r) for faces in sets.values() for r in faces})
    print(f"evaluating {args.model} on {info.provider}: {total} faces "
          f"({data_info['form']} form, flip test {'on' if flip_test else 'off'})")

    start = time.perf_counter()
    result = evaluate_sets(lambda rows: run_session(session, info, rows), sets, info.config,
                           flip_test, args.batch_size, args.threshold,
                           progress=not args.no_progress)
    seconds = time.perf_counter() - start

    table = markdown_table(result["sets"], args.threshold)
    print(table)
    print(f"{total} faces in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} faces/s)")

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# WFLW evaluation of `{Path(args.model).name}`\n\n"
              f"- model sha256: `{info.sha256}` (trained: {info.trained})\n"
              f"- data: {data_info['ann_file']} ({data_info['form']} form)\n"
              f"- pipeline: service.pipeline, flip test {'on' if flip_test else 'off'}, "
              f"onnxruntime {info.provider}\n"
              f"- NME normalised by the inter-ocular distance (outer eye corners 60-72), mean over "
              f"all visible keypoints; FR = faces with NME > {args.threshold:g}; AUC of the CED "
              f"up to {args.threshold:g}, normalised to [0, 1]\n\n")
    (out_dir / "results.md").write_text(header + table + "\n")
    payload = {
        "model": str(args.model),
        "model_sha256": info.sha256,
        "model_name": info.name,
        "trained": info.trained,
        "provider": info.provider,
        "flip_test": flip_test,
        "data": data_info,
        "threshold": args.threshold,
        "seconds": seconds,
        "sets": {name: {k: v for k, v in s.items() if k != "face_nme"}
                 for name, s in result["sets"].items()},
        "faces": result["faces"],
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_ced(result["sets"], args.threshold, out_dir / "ced.png",
             f"CED, {Path(args.model).name}")
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'ced.png'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="WFLW NME / failure rate / AUC of an ONNX model through service.pipeline",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="ONNX file written by `export`")
    data = p.add_argument_group("data (one of)")
    data.add_argument("--wflw-root", type=Path, default=None,
                      help="WFLW root: WFLW_annotations/ + WFLW_images/ (official), or "
                           "annotations/*.json + images/ (mmpose)")
    data.add_argument("--split", choices=["test", "train"], default="test",
                      help="split under --wflw-root (default: test)")
    data.add_argument("--ann-file", type=Path, default=None,
                      help="mmpose JSON (e.g. face_landmarks_wflw_test.json); subset files "
                           "<stem>_{largepose,...}.json next to it are used when present")
    data.add_argument("--img-dir", type=Path, default=None, help="image folder for --ann-file")
    p.add_argument("--subsets", nargs="+", choices=list(SUBSET_ORDER), default=None, metavar="SET",
                   help=f"evaluate only these sets, from {', '.join(SUBSET_ORDER)} (default: all that exist)")
    p.add_argument("--no-flip-test", action="store_true",
                   help="switch the flip test off (the service and mmpose use it by default)")
    p.add_argument("--out-dir", type=Path, default=Path("eval_results"),
                   help="where results.md, results.json and ced.png go (default: eval_results)")
    p.add_argument("--threshold", type=float, default=metrics.DEFAULT_THRESHOLD,
                   help="failure / AUC threshold on the per-face NME (default: 0.10)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="network rows per onnxruntime call (default: 32)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="onnxruntime provider: auto = CUDA when an NVIDIA device is present")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    p.add_argument("--no-check-images", action="store_true",
                   help="do not check up front that every image file exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=evaluate_command)
