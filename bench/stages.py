"""Section 2, the pipeline steps around the network, per face, through the service's own public
pipeline: decode (JPEG 640x480 .. 4K), box -> crop geometry, warp, normalise, flip, DARK
(vectorised vs the per-keypoint loop in tests/reference/dark_loop.py), inverse transform, the
response's face records and JSON encoding; then face detection and rendering.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.engine.session import open_session
from service.pipeline import faces as face_pipeline
from service.pipeline.dark import argmax_heatmaps, decode_heatmaps
from service.pipeline.flip import flip_inputs, merge_flip
from service.pipeline.geometry import heatmap_to_image
from service.pipeline.preprocess import crop_faces, decode_image, normalize

from .common import (
    ROOT,
    SAMPLES,
    Context,
    SectionResult,
    ensure_model,
    flat,
    interleaved,
    loadavg,
    log,
    median,
    ms,
    percentile,
    ratio_text,
    round_ratios,
    stamp,
    table,
    time_calls,
)

SIZES = ((640, 480), (1280, 720), (1920, 1080), (3840, 2160))
MAX_PIXELS = 50_000_000
JPEG_QUALITY = 90
SAMPLE_LABEL = "1024x1024 (WFLW sample file)"
# The service's defaults (LANDMARKS_DETECT_MAX_SIDE, _DETECT_THRESHOLD, _RENDER_MAX_SIDE).
DETECT_MAX_SIDE, DETECT_THRESHOLD, RENDER_MAX_SIDE = 640, 0.5, 2048


def sample_faces() -> list[tuple[bytes, np.ndarray]]:
    """(JPEG bytes, boxes xywh [F, 4]) of the two WFLW sample images (4 faces)."""
    meta = json.loads((SAMPLES / "test_wflw.json").read_text())
    out = []
    for image in meta["images"]:
        boxes = [a["bbox"] for a in meta["annotations"] if a["image_id"] == image["id"]]
        out.append(((SAMPLES / image["file_name"]).read_bytes(), np.asarray(boxes, np.float64)))
    return out


def jpeg_at(size: tuple[int, int]) -> bytes:
    """The 1024x1024 sample photo resized to `size` (w, h) and JPEG-encoded at quality 90."""
    bgr = cv2.imread(str(SAMPLES / "7_Cheering_Cheering_7_16.jpg"), cv2.IMREAD_COLOR)
    resized = cv2.resize(bgr, size, interpolation=cv2.INTER_CUBIC if size[0] > 1024 else cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return data.tobytes()


def response_body(face_list: list, flip: bool, size) -> dict:
    """The envelope POST /landmarks serialises around face_list (fields as in the API schema)."""
    return {
        "image": {"width": size[0], "height": size[1]},
        "model": {"name": "hrnetv2_w18_wflw_256x256_dark", "sha256": "0" * 64,
                  "provider": "CPUExecutionProvider", "precision": "fp32", "trained": False},
        "flip_test": flip,
        "faces": face_list,
        "timings_ms": {"decode": 1.0, "preprocess": 1.0, "queue": 1.0, "inference": 1.0,
                       "postprocess": 1.0, "total": 5.0},
        "warnings": ["UNTRAINED MODEL: ..."],
    }


class StageTable:
    """Rows of the main table: stage, input, median and p95 per face, number of calls."""

    def __init__(self, min_time: float):
        self.min_time = min_time
        self.rows: list[list] = []

    def add(self, stage: str, what: str, samples: list[float], faces: int = 1) -> float:
        """Record per-call samples of `faces` faces each; -> median seconds per face."""
        per = median(samples) / faces
        self.rows.append([stage, what, ms(per, 3), ms(percentile(samples, 95) / faces, 3), len(samples)])
        return per

    def time(self, stage: str, what: str, fn, faces: int = 1, min_calls: int = 1) -> float:
        return self.add(stage, what, time_calls(fn, self.min_time, min_calls), faces)


# --------------------------------------------------------------------------- steps


def _time_decode(t: StageTable) -> dict[str, float]:
    """decode_image on JPEGs from 640x480 to 4K and the sample file -> label: s per image."""
    images = [(f"{w}x{h}", jpeg_at((w, h))) for w, h in SIZES]
    images.insert(1, (SAMPLE_LABEL, sample_faces()[1][0]))
    out = {}
    for label, data in images:
        progressive = ", progressive" if b"\xff\xc2" in data[:4096] else ""
        out[label] = t.time("decode (decode_image)", f"JPEG {label}, {len(data) / 1024:.0f} KiB{progressive}",
                            lambda d=data: decode_image(d, MAX_PIXELS), min_calls=3)
    return out


def _time_preprocessing(t: StageTable, rgb: np.ndarray, boxes: np.ndarray, config) -> dict[bool, float]:
    """Box geometry, warp, normalise, flip copy, and prepare() as a whole -> flip: s per face."""
    center, scale = face_pipeline.centers_and_scales(boxes[:1], config)
    t.time("box -> center/scale (centers_and_scales)", "1 box",
           lambda: face_pipeline.centers_and_scales(boxes[:1], config))
    c8, s8 = np.repeat(center, 8, axis=0), np.repeat(scale, 8, axis=0)
    t.time("warp (crop_faces)", "1 face, 1024 px image",
           lambda: crop_faces(rgb, center, scale, config.input_size))
    t.time("warp (crop_faces)", "8 faces in one call, per face",
           lambda: crop_faces(rgb, c8, s8, config.input_size), faces=8)
    crops = crop_faces(rgb, center, scale, config.input_size)
    t.time("normalise (normalize)", "1 face", lambda: normalize(crops, config.mean, config.std))
    rows = normalize(crops, config.mean, config.std)
    t.time("flip copy (flip_inputs)", "1 face (flip on)", lambda: flip_inputs(rows))
    return {flip: t.time("prepare = warp + normalise (+ flip)", f"1 face, flip {'on' if flip else 'off'}",
                         lambda f=flip: face_pipeline.prepare(rgb, center, scale, config, f))
            for flip in (False, True)}


@dataclass
class NetworkOutput:
    """Heatmaps of the W18 network on the 4 sample faces: plain and flipped rows, and an
    8-face stack (the 4 faces twice) with its crop geometry, for DARK."""
    plain: np.ndarray  # [4, K, h, w]
    flipped: np.ndarray  # [4, K, h, w]
    hm8: np.ndarray  # [8, K, h, w]
    center8: np.ndarray  # [8, 2]
    scale8: np.ndarray  # [8, 2]


def _network_heatmaps(session, info) -> NetworkOutput:
    config = info.config
    plain_rows, flipped_rows, centers, scales = [], [], [], []
    for data, boxes in sample_faces():
        center, scale = face_pipeline.centers_and_scales(boxes, config)
        faces = face_pipeline.prepare(decode_image(data, MAX_PIXELS), center, scale, config, True)
        count = faces.num_faces  # prepare() puts the flipped copies after the originals
        plain_rows.append(faces.rows[:count])
        flipped_rows.append(faces.rows[count:])
        centers.append(faces.center)
        scales.append(faces.scale)

    def run(rows):
        return session.run([info.output_name], {info.input_name: np.concatenate(rows)})[0]

    plain, flipped = run(plain_rows), run(flipped_rows)
    return NetworkOutput(plain, flipped, np.concatenate([plain] * 2),
                         np.concatenate(centers * 2), np.concatenate(scales * 2))


def _time_dark(ctx: Context, t: StageTable, net: NetworkOutput, config) -> tuple[list, dict, dict]:
    """decode_heatmaps vs the per-keypoint reference loop, interleaved, at 1 and 8 faces.

    -> (table rows, summary, extra figures for the text).
    """
    from tests.reference.dark_loop import decode_heatmaps_loop

    kernel, pixel_std = config.modulate_kernel, config.pixel_std
    stacks = {n: (net.hm8[:n], net.center8[:n], net.scale8[:n]) for n in (1, 8)}
    fns = {}
    for n, (hm, c, s) in stacks.items():
        fns[f"vec{n}"] = lambda hm=hm, c=c, s=s: decode_heatmaps(hm, c, s, kernel, pixel_std)
        fns[f"loop{n}"] = lambda hm=hm, c=c, s=s: decode_heatmaps_loop(hm, c, s, kernel)
    rounds = 2 if ctx.quick else 5
    dark = interleaved(fns, rounds=rounds, time_per_round=ctx.scale(0.4, 0.1), min_calls=2)
    # The one OpenCV call every whole-map DARK needs (the blurred maximum rescales each map),
    # timed as a plain library call on the same maps: what no implementation can go below.
    maps_hwc = np.ascontiguousarray(stacks[1][0][0].transpose(1, 2, 0))
    blur_s = t.time("of which unavoidable: one cv2.GaussianBlur over the 98 maps",
                    f"1 face, {kernel}x{kernel} kernel, plain OpenCV call",
                    lambda: cv2.GaussianBlur(maps_hwc, (kernel, kernel), 0), min_calls=3)
    hm8, c8, s8 = stacks[8]
    same = np.array_equal(decode_heatmaps(hm8, c8, s8, kernel, pixel_std)[0],
                          decode_heatmaps_loop(hm8, c8, s8, kernel)[0])
    rows, summary = [], {}
    for n in (1, 8):
        vec, loop = dark[f"vec{n}"], dark[f"loop{n}"]
        ratios = round_ratios(loop, vec)
        per_vec, per_loop = median(flat(vec)) / n, median(flat(loop)) / n
        summary[f"dark_speedup_n{n}"] = median(ratios)
        summary[f"dark_ms_per_face_n{n}"] = per_vec * 1e3
        summary[f"dark_speedup_without_blur_n{n}"] = (per_loop - blur_s) / (per_vec - blur_s)
        rows.append([n, ms(per_loop, 3), ms(per_vec, 3), ms(percentile(flat(vec), 95) / n, 3),
                     ratio_text(ratios, 1)])
        t.add("DARK (decode_heatmaps, vectorised)", f"{n} face(s) x 98 keypoints, per face", flat(vec), n)
        t.add("DARK (decode_heatmaps_loop, reference)", f"{n} face(s) x 98 keypoints, per face",
              flat(loop), n)
    extra = {"rounds": rounds, "same": same, "blur_s": blur_s,
             "loop1_s": median(flat(dark["loop1"]))}
    return rows, summary, extra


def _time_postprocessing(t: StageTable, net: NetworkOutput, rgb: np.ndarray, boxes: np.ndarray,
                         config) -> tuple[dict[bool, float], float]:
    """Flip merge, inverse transform, finish + face_records, JSON -> (flip: s, JSON s)."""
    center, scale = face_pipeline.centers_and_scales(boxes[:1], config)
    hm1, c1, s1 = net.hm8[:1], net.center8[:1], net.scale8[:1]
    t.time("flip merge (merge_flip)", "1 face (flip on)",
           lambda: merge_flip(net.plain[:1], net.flipped[:1], config.flip_pairs, config.shift_heatmap))
    coords, _ = argmax_heatmaps(hm1)
    t.time("inverse transform (heatmap_to_image)", "1 face x 98 points",
           lambda: heatmap_to_image(coords, c1, s1, config.heatmap_size, config.pixel_std))
    finish = {}
    for flip in (False, True):
        faces = face_pipeline.prepare(rgb, center, scale, config, flip)
        heatmaps = np.concatenate([net.plain[:1], net.flipped[:1]]) if faces.merge_on_host \
            else net.plain[:1]

        def records(faces=faces, heatmaps=heatmaps):
            return face_pipeline.face_records(*face_pipeline.finish(heatmaps, faces, config), boxes[:1])

        finish[flip] = t.time("finish (+ flip merge) + DARK + face_records", f"1 face, flip "
                              f"{'on' if flip else 'off'}", records)
    faces = face_pipeline.prepare(rgb, center, scale, config, False)
    face_list = face_pipeline.face_records(*face_pipeline.finish(net.plain[:1], faces, config), boxes[:1])
    body = response_body(face_list, False, rgb.shape[1::-1])
    json_s = t.time("JSON encoding (json.dumps of the response)",
                    f"1 face, {len(json.dumps(body))} bytes", lambda: json.dumps(body))
    body8 = response_body(face_list * 8, False, rgb.shape[1::-1])
    t.time("JSON encoding (json.dumps of the response)", "8 faces, per face",
           lambda: json.dumps(body8), faces=8)
    return finish, json_s


def detector_path() -> Path:
    """The RetinaFace ONNX file, never downloaded here: $LANDMARKS_DETECTOR_PATH, else the
    service's default models/retinaface_mnet025.onnx, else model_export's download cache."""
    from model_export.detector import ONNX_NAME, default_cache_dir

    candidates = [ROOT / "models" / ONNX_NAME, default_cache_dir() / ONNX_NAME]
    if os.environ.get("LANDMARKS_DETECTOR_PATH"):
        candidates.insert(0, Path(os.environ["LANDMARKS_DETECTOR_PATH"]))
    return next((c for c in candidates if c.is_file()), candidates[0])


def _time_detection_and_render(t: StageTable, providers: list[str], rgb: np.ndarray,
                               boxes: np.ndarray, landmarks: np.ndarray) -> list[str]:
    """Face detection (640 px input, 4K input), overlay rendering (sample, 4K). -> notes."""
    from service.engine.detector import DetectorLoadError, FaceDetector
    from service.pipeline.draw import draw_faces, encode_image, fit_within

    def decoded(size):
        return decode_image(jpeg_at(size), MAX_PIXELS)

    uhd = decoded((3840, 2160))
    notes = []
    try:
        detector = FaceDetector(detector_path(), providers)
    except DetectorLoadError as exc:
        notes.append(f"Face detection not measured: {str(exc).splitlines()[0]}")
    else:
        detector.warm_up(DETECT_MAX_SIDE)
        for label, image in (("640x480", decoded((640, 480))), ("3840x2160 (4K)", uhd)):
            t.time(f"face detection (FaceDetector.detect, max side {DETECT_MAX_SIDE})",
                   f"{label} input, per image", lambda image=image: detector.detect(
                       image, DETECT_MAX_SIDE, DETECT_THRESHOLD), min_calls=3)
    # The 4K image is the sample resized to 16:9, so its faces are the sample's boxes stretched.
    stretch = np.array([3840 / rgb.shape[1], 2160 / rgb.shape[0]])
    for label, image, scale in (("1024x1024 sample", rgb, np.ones(2)), ("3840x2160 (4K)", uhd, stretch)):
        def render(image=image, scale=scale):
            small, factor = fit_within(image, RENDER_MAX_SIDE)
            return encode_image(draw_faces(small, boxes * np.tile(scale, 2), landmarks * scale,
                                           factor=factor), "jpeg")
        t.time(f"render (fit_within {RENDER_MAX_SIDE} + draw_faces + encode_image JPEG)",
               f"{label}, {len(boxes)} faces, per image", render, min_calls=3)
    return notes


# --------------------------------------------------------------------------- section


def run(ctx: Context) -> SectionResult:
    load0 = loadavg()
    t = StageTable(ctx.scale(0.6, 0.1))
    session, info = open_session(ensure_model("w18"), ["CPUExecutionProvider"])
    config = info.config

    log("stages: decode")
    decode = _time_decode(t)
    log("stages: warp, normalise, flip")
    sample_bytes, sample_boxes = sample_faces()[1]  # 1024x1024, 3 faces
    rgb = decode_image(sample_bytes, MAX_PIXELS)
    prep = _time_preprocessing(t, rgb, sample_boxes, config)
    log("stages: heatmaps from the network for DARK")
    net = _network_heatmaps(session, info)
    log("stages: DARK vectorised vs per-keypoint loop (interleaved)")
    dark_rows, summary, dark = _time_dark(ctx, t, net, config)
    log("stages: flip merge, inverse transform, face records, JSON")
    finish, json_s = _time_postprocessing(t, net, rgb, sample_boxes, config)
    log("stages: detection and rendering")
    # The 3 faces of the sample image are network rows 1..3 (row 0 is the other image's face).
    landmarks = decode_heatmaps(net.plain[1:4], *face_pipeline.centers_and_scales(sample_boxes, config),
                                config.modulate_kernel, config.pixel_std)[0]
    notes = _time_detection_and_render(t, ctx.ort_providers, rgb, sample_boxes, landmarks)

    total = {flip: decode[SAMPLE_LABEL] + prep[flip] + finish[flip] + json_s for flip in (False, True)}
    summary["pipeline_ms_per_face"] = {("on" if f else "off"): v * 1e3 for f, v in total.items()}
    md = _markdown(ctx, load0, t.rows, dark_rows, summary, dark, total, notes)
    return SectionResult("stages", "2. Pipeline stages", "\n".join(md), summary)


def _markdown(ctx, load0, rows, dark_rows, summary, dark, total, notes) -> list[str]:
    blur_s = dark["blur_s"]
    return [
        ("Each step is the service's own public function (`service.pipeline`: `decode_image`, "
         "`faces.prepare`, `faces.finish`, `faces.face_records`, ...; detection "
         "`service.engine.detector.FaceDetector`, rendering `service.pipeline.draw`), timed on "
         "one thread, median of repeated calls (p95 beside it). Faces are the real WFLW sample "
         "photos and boxes; the heatmaps DARK decodes are those of the W18 network (random-init) "
         "on those faces. Decode sizes: the 1024x1024 sample resized with OpenCV and JPEG-encoded "
         f"at quality {JPEG_QUALITY} in memory; decode includes the header check and BGR->RGB."),
        "",
        table(["stage", "input", "median per face (ms)", "p95 per face (ms)", "calls"], rows),
        "",
        *[f"{note}" for note in notes],
        *([""] if notes else []),
        (f"**DARK: vectorised vs the per-keypoint loop** (interleaved, {dark['rounds']} rounds; "
         "speed-up = median of per-round ratios, range in brackets; targets >= 10x and <= 1 ms "
         f"per face). Results identical: {'yes' if dark['same'] else 'NO'}."),
        "",
        table(["faces per call", "loop per face (ms)", "vectorised per face (ms)",
               "vectorised p95 (ms)", "speed-up"], dark_rows),
        "",
        (f"Both implementations blur every whole 64x64 map with the {ms(blur_s, 3)} ms Gaussian "
         "(one cv2.GaussianBlur call over the 98 maps; the blurred maximum rescales the map, so "
         "the blur cannot be limited to the Taylor stencil without changing results): "
         f"{blur_s * 1e3 / summary['dark_ms_per_face_n1']:.0%} of the vectorised time. It caps "
         f"the possible speed-up against this loop at about {dark['loop1_s'] / blur_s:.1f}x; on "
         "everything except the blur, the vectorised code is "
         f"{summary['dark_speedup_without_blur_n1']:.1f}x (1 face) / "
         f"{summary['dark_speedup_without_blur_n8']:.1f}x (8 faces) faster."),
        "",
        ("In-process CPU work per face outside the network (1024 px JPEG decode + prepare + "
         f"finish + face records + JSON): {ms(total[False], 2)} ms with flip off, "
         f"{ms(total[True], 2)} ms with flip on."),
        "",
        stamp(ctx, load0),
    ]
