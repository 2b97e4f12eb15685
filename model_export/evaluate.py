"""`python -m model_export evaluate`: WFLW NME of an ONNX model, measured through the service's
own pipeline (`service.pipeline.faces.predict` on an onnxruntime session opened by
`service.engine.session.open_session`), so the figures describe exactly what the service serves.

    python -m model_export evaluate --model model.onnx --wflw-root DIR [--split test]
    python -m model_export evaluate --model model.onnx --ann-file FILE.json --img-dir DIR
    python -m model_export evaluate ... --boxes detector   # also with detected face boxes

Each face is cropped from the annotation's centre and scale * 1.25 (PIPELINE.md section 6),
with the flip test on unless --no-flip-test. Reported per evaluation set: NME (inter-ocular,
mmpose's definition; see model_export.metrics), failure rate at 0.10 and AUC@0.10. The sets are
the full split plus the six attribute subsets (pose, illumination, occlusion, blur, makeup,
expression): from the flags for the official text files, from mmpose's
`<stem>_{largepose,...}.json` files next to `--ann-file` for the JSON form. Written under
--out-dir: results.md, results.json (with every face's NME) and ced.png.

With `--boxes detector` the same faces are also measured the way the service handles a request
without boxes: the RetinaFace detector (docs/DETECTOR.md) runs on each image, its boxes are
matched one to one with the annotated faces (IoU of the calibrated face box with the
annotation's square face box >= 0.3) and the matched faces are cropped from the calibrated
detector box. Faces the detector misses are reported as misses (count and rate; counted as
failures in the "with misses" figures), never silently dropped; the annotation-box NME of the
same detected faces is printed beside, so the cost of detection is visible.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from service.pipeline.config import PipelineConfig
from service.pipeline.detect import DetectorCalibration, detector_boxes_to_center_scale
from service.pipeline.faces import predict
from service.pipeline.keypoints import NME_NORM_INDICES

from . import metrics
from .data.transforms import padded_center_scale
from .data.wflw import SUBSET_ORDER, FaceRecord, WFLWError, WFLWSource, find_split, load_rgb
from .detector import DEFAULT_OUTPUT as DEFAULT_DETECTOR_PATH
from .detector import MATCH_MIN_IOU, detect_and_match, fetch_detector

BOX_SOURCES = ("annotation", "detector")


def predict_records(run: Callable[[np.ndarray], np.ndarray], records: Sequence[FaceRecord],
                    config: PipelineConfig, flip_test: bool = True, max_batch: int = 32,
                    progress: bool = False,
                    crops: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Landmarks (N, K, 2) float32 of each face, through `faces.predict` (one call per image:
    all faces of an image are cropped from one decode). Crops: the annotations' centre and
    scale * padding, or `crops` = (center [N, 2], scale [N, 2]) in the pipeline's convention."""
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
            if crops is None:
                boxes = [padded_center_scale(records[i].center, records[i].scale, config)
                         for i in indices]
                center = np.stack([c for c, _ in boxes])
                scale = np.stack([s for _, s in boxes])
            else:
                center, scale = crops[0][indices], crops[1][indices]
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
                  flip_test: bool, max_batch: int, threshold: float, progress: bool = False,
                  detector=None, calibration: DetectorCalibration | None = None,
                  detect_max_side: int = 640, detect_threshold: float = 0.5) -> dict:
    """Predict every distinct face once, then score each set. Returns {"sets", "faces"}, plus
    "detector_sets" when a `detector` (anything with detect(rgb, max_side, threshold) ->
    Detections) is given: each face is also cropped from its matched, calibrated detector box."""
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
    out = {"sets": results, "faces": per_face}
    if detector is None:
        return out

    calibration = calibration or DetectorCalibration.load()
    found = [box for _, box in detect_and_match(detector, records, detect_max_side,
                                                 detect_threshold, MATCH_MIN_IOU, calibration,
                                                 progress)]
    detected = np.array([box is not None for box in found], dtype=bool)
    det_errors = np.zeros_like(errors)
    det_valid = np.zeros_like(valid)
    if detected.any():
        hits = np.flatnonzero(detected)
        center, scale = detector_boxes_to_center_scale(np.stack([found[i] for i in hits]),
                                                       calibration, config)
        det_pred = predict_records(run, [records[i] for i in hits], config, flip_test, max_batch,
                                   progress, crops=(center, scale))
        det_errors[hits], det_valid[hits] = record_errors([records[i] for i in hits], det_pred)
    det_face_nme = np.where(detected, metrics.per_face_nme(det_errors, det_valid), np.nan)
    detector_sets = {}
    for name, faces in sets.items():
        index = np.array([unique[_face_key(r)] for r in faces], dtype=np.int64)
        hit = index[detected[index]]
        misses = int(len(index) - len(hit))
        summary = {"faces": len(index), "detected": len(hit), "misses": misses,
                   "miss_rate": misses / max(1, len(index))}
        if len(hit):
            on_detector = metrics.summarize(det_errors[hit], det_valid[hit], threshold)
            summary.update({k: on_detector[k] for k in ("nme", "failure_rate", "auc")})
            summary["nme_annotation_same_faces"] = metrics.nme_from_errors(errors[hit], valid[hit])
        else:
            summary.update(nme=None, failure_rate=None, auc=None, nme_annotation_same_faces=None)
        # a miss is a face the service would not have answered: a failure with infinite error
        with_misses = np.concatenate([det_face_nme[hit], np.full(misses, np.inf)])
        summary["failure_rate_with_misses"] = metrics.failure_rate(with_misses, threshold)
        summary["auc_with_misses"] = metrics.auc(with_misses, threshold)
        summary["face_nme"] = with_misses
        detector_sets[name] = summary
    for i, face in enumerate(per_face):
        face["detected"] = bool(detected[i])
        face["detector_box"] = None if found[i] is None else [float(v) for v in found[i]]
        face["nme_detector"] = None if np.isnan(det_face_nme[i]) else float(det_face_nme[i])
    out["detector_sets"] = detector_sets
    return out


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


def detector_table(detector_sets: dict[str, dict], threshold: float) -> str:
    """Per set: faces, detected, misses, NME on the detected faces with annotation boxes and with
    detector boxes, and the failure rate / AUC with misses counted as failures."""
    t = f"{threshold:.2f}"

    def pct(value):
        return "-" if value is None else f"{value * 100:.2f}"

    lines = [(f"| set | faces | detected | misses (%) | NME annotation boxes, same faces (%) | "
             f"NME detector boxes (%) | FR@{t} with misses (%) | AUC@{t} with misses |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in detector_sets.items():
        lines.append(f"| {name} | {s['faces']} | {s['detected']} | {s['misses']} "
                     f"({s['miss_rate'] * 100:.1f}) | {pct(s['nme_annotation_same_faces'])} | "
                     f"{pct(s['nme'])} | {s['failure_rate_with_misses'] * 100:.2f} | "
                     f"{s['auc_with_misses']:.4f} |")
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
    detector, calibration = None, None
    if args.boxes == "detector":
        detector, calibration = _open_detector(args, info.active_providers)
    total = len({_face_key(r) for faces in sets.values() for r in faces})
    print(f"evaluating {args.model} on {info.provider}: {total} faces "
          f"({data_info['form']} form, flip test {'on' if flip_test else 'off'})")

    start = time.perf_counter()
    result = evaluate_sets(lambda rows: run_session(session, info, rows), sets, info.config,
                           flip_test, args.batch_size, args.threshold,
                           progress=not args.no_progress, detector=detector,
                           calibration=calibration, detect_max_side=args.detect_max_side,
                           detect_threshold=args.detect_threshold)
    seconds = time.perf_counter() - start

    table = markdown_table(result["sets"], args.threshold)
    if detector is not None:
        table += ("\n\nWith detected boxes (RetinaFace, threshold "
                  f"{args.detect_threshold:g}, long side <= {args.detect_max_side} px, "
                  f"calibration: {calibration.fitted_on}):\n\n"
                  + detector_table(result["detector_sets"], args.threshold))
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
        "boxes": args.boxes,
    }
    if detector is not None:
        payload["detector"] = {
            "path": str(detector.path), "sha256": detector.sha256, "provider": detector.provider,
            "threshold": args.detect_threshold, "max_side": args.detect_max_side,
            "calibration": asdict(calibration),
        }
        payload["detector_sets"] = {name: {k: v for k, v in s.items() if k != "face_nme"}
                                    for name, s in result["detector_sets"].items()}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_ced(result["sets"], args.threshold, out_dir / "ced.png",
             f"CED, {Path(args.model).name}")
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'ced.png'}")
    return 0


def _open_detector(args, providers: list[str]):
    """The face detector (fetched to --detector when missing) and the calibration to use."""
    from service.engine.detector import DetectorLoadError, FaceDetector

    path = Path(args.detector)
    if not path.is_file():
        fetch_detector(path)
    try:
        detector = FaceDetector(path, providers, threads=args.threads)
    except DetectorLoadError as exc:
        raise ValueError(str(exc)) from None
    calibration = DetectorCalibration.load(args.detector_calibration)
    return detector, calibration


HELP_DESCRIPTION = """WFLW NME of an ONNX model, measured through the service's own pipeline (crop, flip
test, DARK), so the figures describe exactly what the service answers.

    python -m model_export evaluate --model model.onnx --wflw-root DIR [--split test]
    python -m model_export evaluate --model model.onnx --ann-file FILE.json --img-dir DIR
    python -m model_export evaluate ... --boxes detector   # also with detected face boxes

Each face is cropped from the annotation's centre and scale x 1.25, flip test on unless
--no-flip-test. Per evaluation set (the full split and the six attribute subsets: pose,
illumination, occlusion, blur, makeup, expression): inter-ocular NME (mmpose's definition),
failure rate and AUC at --threshold. Written under --out-dir: results.md, results.json (every
face's NME) and ced.png. With --boxes detector, faces are also measured from the built-in
detector's calibrated boxes, as a request without boxes is served; missed faces are counted
and reported, never dropped.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="WFLW NME, failure rate and AUC per subset of an ONNX model, measured as the service serves it",
        description=HELP_DESCRIPTION,
    )
    p.add_argument("--model", type=Path, required=True, help="ONNX file written by `export`")
    data = p.add_argument_group("data (one of)")
    data.add_argument("--wflw-root", type=Path, default=None,
                      help="WFLW root: WFLW_annotations/ + WFLW_images/ (official), or "
                           "annotations/*.json + images/ (mmpose)")
    data.add_argument("--split", choices=["test", "train"], default="test",
                      help="split under --wflw-root")
    data.add_argument("--ann-file", type=Path, default=None,
                      help="mmpose JSON (e.g. face_landmarks_wflw_test.json); subset files "
                           "<stem>_{largepose,...}.json next to it are used when present")
    data.add_argument("--img-dir", type=Path, default=None, help="image folder for --ann-file")
    p.add_argument("--subsets", nargs="+", choices=list(SUBSET_ORDER), default=None, metavar="SET",
                   help=f"evaluate only these sets, from {', '.join(SUBSET_ORDER)}")
    p.add_argument("--no-flip-test", action="store_true",
                   help="switch the flip test off (the service and mmpose use it by default)")
    p.add_argument("--out-dir", type=Path, default=Path("eval_results"),
                   help="where results.md, results.json and ced.png go")
    p.add_argument("--threshold", type=float, default=metrics.DEFAULT_THRESHOLD,
                   help="failure / AUC threshold on the per-face NME")
    p.add_argument("--batch-size", type=int, default=32,
                   help="network rows per onnxruntime call")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="onnxruntime provider: auto = CUDA when an NVIDIA device is present")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    boxes = p.add_argument_group("face boxes")
    boxes.add_argument("--boxes", choices=BOX_SOURCES, default="annotation",
                       help="annotation: crop from the annotated centre/scale (the published "
                            "protocol); detector: also crop from the face detector's boxes "
                            "and report both, misses included")
    boxes.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR_PATH,
                       help="RetinaFace ONNX file, fetched there when missing")
    boxes.add_argument("--detector-calibration", type=Path, default=None,
                       help="detector box -> face box rule (JSON from calibrate-detector; "
                            "default: the one packaged with the service)")
    boxes.add_argument("--detect-threshold", type=float, default=0.5,
                       help="detector score threshold")
    boxes.add_argument("--detect-max-side", type=int, default=640,
                       help="long side of the image the detector sees")
    p.add_argument("--no-check-images", action="store_true",
                   help="do not check up front that every image file exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=evaluate_command)
