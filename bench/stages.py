"""Section 2, the pipeline steps around the network, per face, through the service's own code:
decode (JPEG 640x480 .. 4K), box -> crop geometry, warp, normalise, flip, DARK (vectorised vs
the per-keypoint loop in tests/reference/dark_loop.py), inverse transform, response building
and JSON encoding.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np

from service.api.landmarks import _finish
from service.engine.session import open_session
from service.pipeline import faces as face_pipeline
from service.pipeline.dark import _blur_padded, _scratch_buffers, argmax_heatmaps, decode_heatmaps
from service.pipeline.flip import flip_inputs, merge_flip
from service.pipeline.geometry import heatmap_to_image
from service.pipeline.preprocess import crop_faces, decode_image, normalize

from .common import (
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
    """The envelope POST /landmarks serialises (service/api/landmarks.py), around face_list."""
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


def run(ctx: Context) -> SectionResult:
    from tests.reference.dark_loop import decode_heatmaps_loop

    load0 = loadavg()
    min_time = ctx.scale(0.6, 0.1)
    session, info = open_session(ensure_model("w18"), ["CPUExecutionProvider"])
    config = info.config
    rows_out = []

    def add(stage, what, samples, faces=1):
        per = median(samples) / faces
        rows_out.append([stage, what, ms(per, 3), ms(percentile(samples, 95) / faces, 3), len(samples)])
        return per

    # ---- decode
    log("stages: decode")
    decode_per = {}
    images = [(f"{w}x{h}", jpeg_at((w, h))) for w, h in SIZES]
    sample_bytes, sample_boxes = sample_faces()[1]  # 1024x1024, 3 faces
    images.insert(1, ("1024x1024 (WFLW sample file)", sample_bytes))
    for label, data in images:
        samples = time_calls(lambda d=data: decode_image(d, MAX_PIXELS), min_time, min_calls=3)
        decode_per[label] = add("decode (decode_image)", f"JPEG {label}, {len(data) / 1024:.0f} KiB"
                                + (", progressive" if b"\xff\xc2" in data[:4096] else ""),
                                samples)

    # ---- preprocessing of real faces
    log("stages: warp, normalise, flip")
    rgb = decode_image(sample_bytes, MAX_PIXELS)
    center, scale = face_pipeline.centers_and_scales(sample_boxes[:1], config)
    add("box -> center/scale (centers_and_scales)", "1 box",
        time_calls(lambda: face_pipeline.centers_and_scales(sample_boxes[:1], config), min_time))
    c8, s8 = (np.repeat(center, 8, axis=0), np.repeat(scale, 8, axis=0))
    add("warp (crop_faces)", "1 face, 1024 px image",
        time_calls(lambda: crop_faces(rgb, center, scale, config.input_size), min_time))
    add("warp (crop_faces)", "8 faces in one call, per face",
        time_calls(lambda: crop_faces(rgb, c8, s8, config.input_size), min_time), 8)
    crops = crop_faces(rgb, center, scale, config.input_size)
    add("normalise (normalize)", "1 face",
        time_calls(lambda: normalize(crops, config.mean, config.std), min_time))
    rows1 = normalize(crops, config.mean, config.std)
    add("flip copy (flip_inputs)", "1 face (flip on)", time_calls(lambda: flip_inputs(rows1), min_time))
    prep = {}
    for flip in (False, True):
        prep[flip] = add("prepare = warp + normalise (+ flip)", f"1 face, flip {'on' if flip else 'off'}",
                         time_calls(lambda f=flip: face_pipeline.prepare(rgb, center, scale, config, f),
                                    min_time))

    # ---- real heatmaps: the W18 random-init network on the 4 sample faces, plain + flipped
    log("stages: heatmaps from the network for DARK")
    all_rows, all_c, all_s = [], [], []
    for data, boxes in sample_faces():
        img = decode_image(data, MAX_PIXELS)
        c, s = face_pipeline.centers_and_scales(boxes, config)
        all_rows.append(face_pipeline.prepare(img, c, s, config, True).rows)
        all_c.append(c)
        all_s.append(s)
    # prepare() puts the flipped copies after the originals of each image; regroup
    plain = np.concatenate([r[:len(r) // 2] for r in all_rows])
    flipped = np.concatenate([r[len(r) // 2:] for r in all_rows])
    centers, scales = np.concatenate(all_c), np.concatenate(all_s)
    hm_plain = session.run([info.output_name], {info.input_name: plain})[0]
    hm_flip = session.run([info.output_name], {info.input_name: flipped})[0]
    reps = 2  # 4 faces -> 8
    hm8 = np.concatenate([hm_plain] * reps)
    c8, s8 = np.concatenate([centers] * reps), np.concatenate([scales] * reps)
    hm1, c1, s1 = hm8[:1], c8[:1], s8[:1]

    # ---- DARK, vectorised vs loop, interleaved
    log("stages: DARK vectorised vs per-keypoint loop (interleaved)")
    rounds = 2 if ctx.quick else 5
    dark = interleaved({
        "vec1": lambda: decode_heatmaps(hm1, c1, s1, config.modulate_kernel),
        "loop1": lambda: decode_heatmaps_loop(hm1, c1, s1, config.modulate_kernel),
        "vec8": lambda: decode_heatmaps(hm8, c8, s8, config.modulate_kernel),
        "loop8": lambda: decode_heatmaps_loop(hm8, c8, s8, config.modulate_kernel),
    }, rounds=rounds, time_per_round=ctx.scale(0.4, 0.1), min_calls=2)
    # The Gaussian modulation blur both implementations must do on every whole map (the
    # blurred maximum rescales the map), timed alone through the service's own blur helper.
    k, hh, ww = hm1.shape[1:]
    border = (config.modulate_kernel - 1) // 2
    padded, out = _scratch_buffers(k, (hh + 2 * border, ww + 2 * border))
    maps1 = hm1.reshape(k, hh, ww)
    blur = time_calls(lambda: _blur_padded(maps1, padded, out, border, config.modulate_kernel),
                      min_time, min_calls=3)
    blur_s = median(blur)
    same = np.array_equal(decode_heatmaps(hm8, c8, s8)[0], decode_heatmaps_loop(hm8, c8, s8)[0])
    dark_rows = []
    summary = {}
    for n in (1, 8):
        vec, loop = dark[f"vec{n}"], dark[f"loop{n}"]
        ratios = round_ratios(loop, vec)
        per_vec = median(flat(vec)) / n
        summary[f"dark_speedup_n{n}"] = median(ratios)
        summary[f"dark_ms_per_face_n{n}"] = per_vec * 1e3
        dark_rows.append([n, ms(median(flat(loop)) / n, 3), ms(per_vec, 3),
                          ms(percentile(flat(vec), 95) / n, 3), ratio_text(ratios, 1)])
        summary[f"dark_speedup_without_blur_n{n}"] = \
            (median(flat(loop)) / n - blur_s) / (per_vec - blur_s)
        add("DARK (decode_heatmaps, vectorised)", f"{n} face(s) x 98 keypoints, per face", flat(vec), n)
        add("DARK (decode_heatmaps_loop, reference)", f"{n} face(s) x 98 keypoints, per face",
            flat(loop), n)
    add("of which: the Gaussian blur of 98 whole maps (shared by both)",
        "1 face, `dark._blur_padded` (one cv2.GaussianBlur call)", blur)

    # ---- the other post-processing steps
    log("stages: flip merge, inverse transform, response, JSON")
    add("flip merge (merge_flip)", "1 face (flip on)",
        time_calls(lambda: merge_flip(hm_plain[:1], hm_flip[:1], config.flip_pairs,
                                      config.shift_heatmap), min_time))
    coords, _ = argmax_heatmaps(hm1)
    add("inverse transform (heatmap_to_image)", "1 face x 98 points",
        time_calls(lambda: heatmap_to_image(coords, c1, s1, config.heatmap_size), min_time))
    runtime = SimpleNamespace(config=config)
    faces_off = face_pipeline.prepare(rgb, center, scale, config, False)
    faces_on = face_pipeline.prepare(rgb, center, scale, config, True)
    hm_on = np.concatenate([hm_plain[:1], hm_flip[:1]])
    finish = {}
    for flip, faces, hm in ((False, faces_off, hm_plain[:1]), (True, faces_on, hm_on)):
        finish[flip] = add("finish = (flip merge +) DARK + response dicts (landmarks._finish)",
                           f"1 face, flip {'on' if flip else 'off'}",
                           time_calls(lambda f=faces, h=hm: _finish(runtime, h, f, sample_boxes[:1]),
                                      min_time))
    face_list = _finish(runtime, hm_plain[:1], faces_off, sample_boxes[:1])
    body = response_body(face_list, False, rgb.shape[1::-1])
    json_s = add("JSON encoding (json.dumps of the response)", f"1 face, {len(json.dumps(body))} bytes",
                 time_calls(lambda: json.dumps(body), min_time))
    body8 = response_body(face_list * 8, False, rgb.shape[1::-1])
    add("JSON encoding (json.dumps of the response)", "8 faces, per face",
        time_calls(lambda: json.dumps(body8), min_time), 8)

    total = {flip: decode_per["1024x1024 (WFLW sample file)"] + prep[flip] + finish[flip] + json_s
             for flip in (False, True)}
    summary["pipeline_ms_per_face"] = {("on" if f else "off"): v * 1e3 for f, v in total.items()}

    md = [
        "Each step is the service's own function (`service.pipeline`, `service.api.landmarks._finish`), "
        "timed on one thread, median of repeated calls (p95 beside it). Faces are the real WFLW "
        "sample photos and boxes; the heatmaps DARK decodes are those of the W18 network "
        "(random-init) on those faces. Decode sizes: the 1024x1024 sample resized with OpenCV "
        f"and JPEG-encoded at quality {JPEG_QUALITY} in memory; decode includes the header "
        "check and BGR->RGB.",
        "",
        table(["stage", "input", "median per face (ms)", "p95 per face (ms)", "calls"], rows_out),
        "",
        f"**DARK: vectorised vs the per-keypoint loop** (interleaved, {rounds} rounds; speed-up = "
        "median of per-round ratios, range in brackets; targets >= 10x and <= 1 ms per face). "
        f"Results identical: {'yes' if same else 'NO'}.",
        "",
        table(["faces per call", "loop per face (ms)", "vectorised per face (ms)",
               "vectorised p95 (ms)", "speed-up"], dark_rows),
        "",
        f"Both implementations blur every whole 64x64 map with the 11x11 Gaussian (the blurred "
        f"maximum rescales the map, so the blur cannot be limited to the Taylor stencil without "
        f"changing results): {ms(blur_s, 3)} ms per face, "
        f"{blur_s * 1e3 / summary['dark_ms_per_face_n1']:.0%} of the vectorised time. It caps the "
        f"possible speed-up against this loop at about "
        f"{median(flat(dark['loop1'])) / blur_s:.1f}x; on everything except the blur, the "
        f"vectorised code is {summary['dark_speedup_without_blur_n1']:.1f}x (1 face) / "
        f"{summary['dark_speedup_without_blur_n8']:.1f}x (8 faces) faster.",
        "",
        "In-process CPU work per face outside the network (1024 px JPEG decode + prepare + "
        "finish + JSON): "
        f"{ms(total[False], 2)} ms with flip off, {ms(total[True], 2)} ms with flip on.",
        "",
        stamp(ctx, load0),
    ]
    return SectionResult("stages", "2. Pipeline stages", "\n".join(md), summary)
