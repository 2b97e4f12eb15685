"""A hand-made corpus of hostile and unusual uploads against the real server: each gets the
right 4xx or a correct answer, the server keeps serving, and its memory does not jump."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.server import Server
from tests.service.test_landmarks_api import bomb_png, offline_landmarks

pytestmark = pytest.mark.slow


def jpeg(image_bgr: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def bomb_jpeg(width: int = 65_000, height: int = 60_000) -> bytes:
    """SOI + a baseline SOF0 header claiming width x height (JPEG's 16-bit maximum is about
    this), then EOI: no pixel data."""
    # SOF0 layout: marker, length, precision, height, width, components, then per component.
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes([1, 0x11, 0])
    return b"\xff\xd8" + sof + b"\xff\xd9"


def pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def face_like(size=(160, 200)) -> np.ndarray:
    """A deterministic BGR test picture with structure (gradients and a few blobs)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 255 // (w + h))], -1).astype(np.uint8)
    for cx, cy, r, colour in ((w // 3, h // 3, 9, (20, 20, 200)), (2 * w // 3, h // 3, 9, (200, 20, 20)),
                              (w // 2, 2 * h // 3, 14, (20, 200, 20))):
        cv2.circle(img, (cx, cy), r, colour, -1)
    return img


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tiny_onnx):
    srv = Server.python(tiny_onnx, detector="none", max_image_pixels=20_000_000, max_faces=64)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.close()


def post(server, data: bytes, boxes=None, **fields):
    form = dict(fields)
    if boxes is not None:
        form["bboxes"] = boxes if isinstance(boxes, str) else json.dumps(boxes)
    return httpx.post(server.url + "/landmarks", files={"image": ("upload", data, "application/octet-stream")},
                      data=form, timeout=60)


BASE = face_like()
ANIMATED = [Image.fromarray(cv2.cvtColor(np.roll(BASE, 7 * i, axis=1), cv2.COLOR_BGR2RGB)) for i in range(3)]

REJECTED = [
    ("zero-bytes", lambda: b"", 415),
    ("wrong-magic", lambda: b"GIF00" + png(BASE)[5:], 415),
    ("text", lambda: b"hello, I am not an image", 415),
    ("truncated-jpeg", lambda: jpeg(BASE)[:200], 415),
    ("truncated-png", lambda: png(BASE)[:120], 415),
    ("png-bomb-header", lambda: bomb_png(), 413),
    ("jpeg-bomb-header", lambda: bomb_jpeg(), 413),
    ("svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', 415),
]


@pytest.mark.parametrize("make, status", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_hostile_files_are_rejected_with_the_right_status(server, make, status):
    response = post(server, make())
    assert response.status_code == status, response.text
    assert response.json()["code"] in ("unsupported_image", "image_too_large")
    assert "Traceback" not in response.text


def _expected_from(model, bgr: np.ndarray, boxes=None):
    """Reference: the offline pipeline on the pixels the upload *should* decode to."""
    data = png(bgr)  # lossless carrier of exactly these pixels
    h, w = bgr.shape[:2]
    return offline_landmarks(model, data, boxes or [[0, 0, w, h]], True)


ACCEPTED = [
    # (id, upload bytes, the 8-bit BGR pixels it must decode to)
    ("grayscale-png", lambda: png(cv2.cvtColor(BASE, cv2.COLOR_BGR2GRAY)),
     lambda: cv2.cvtColor(cv2.cvtColor(BASE, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)),
    ("16-bit-png", lambda: png(BASE.astype(np.uint16) * 257), lambda: BASE),
    ("4-channel-png", lambda: png(np.dstack([BASE, np.full(BASE.shape[:2], 77, np.uint8)])), lambda: BASE),
    ("1x1-png", lambda: png(BASE[:1, :1]), lambda: BASE[:1, :1]),
    ("animated-gif-first-frame", lambda: pil_bytes(ANIMATED[0], "GIF", save_all=True, append_images=ANIMATED[1:]),
     None),
    ("multipage-tiff-first-page", lambda: pil_bytes(ANIMATED[0], "TIFF", save_all=True, append_images=ANIMATED[1:]),
     lambda: cv2.cvtColor(np.asarray(ANIMATED[0]), cv2.COLOR_RGB2BGR)),
]


@pytest.mark.parametrize("make, pixels", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_unusual_but_valid_images_get_the_correct_answer(server, tiny_onnx, make, pixels):
    response = post(server, make())
    assert response.status_code == 200, response.text
    body = response.json()
    if pixels is None:  # GIF: palette quantisation; check the frame and size only
        assert body["image"] == {"width": BASE.shape[1], "height": BASE.shape[0]}
        return
    expected = pixels()
    assert body["image"] == {"width": expected.shape[1], "height": expected.shape[0]}
    (want, _), = _expected_from(tiny_onnx, expected)
    np.testing.assert_allclose(body["faces"][0]["landmarks"], want, atol=1e-4)


def test_cmyk_jpeg_decodes_to_rgb(server):
    red = Image.new("CMYK", (64, 48), (0, 255, 255, 0))
    response = post(server, pil_bytes(red, "JPEG", quality=100))
    assert response.status_code == 200 and response.json()["image"] == {"width": 64, "height": 48}


def test_exif_rotation_is_applied_like_mmcv(server, tiny_onnx):
    """mmcv decodes with cv2.imdecode, which honours EXIF orientation; so do we."""
    rgb = Image.fromarray(cv2.cvtColor(BASE, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = pil_bytes(rgb, "JPEG", quality=100, exif=exif.tobytes())
    plain = cv2.imdecode(np.frombuffer(pil_bytes(rgb, "JPEG", quality=100), np.uint8), cv2.IMREAD_COLOR)
    response = post(server, data)
    assert response.status_code == 200
    h, w = BASE.shape[:2]
    assert response.json()["image"] == {"width": h, "height": w}  # rotated
    (want, _), = _expected_from(tiny_onnx, cv2.rotate(plain, cv2.ROTATE_90_CLOCKWISE))
    np.testing.assert_allclose(response.json()["faces"][0]["landmarks"], want, atol=1e-4)


BAD_BOXES = [
    ("nan", "[[NaN, 1, 10, 10]]"), ("inf", "[[1, 1, Infinity, 10]]"), ("-inf", "[[-Infinity, 1, 5, 5]]"),
    ("negative", "[[10, 10, -1, 10]]"), ("zero", "[[10, 10, 0, 0]]"), ("huge", "[[0, 0, 1e300, 1e300]]"),
    ("outside", "[[100000, 100000, 5, 5]]"), ("left-of-image", "[[-50, 10, 40, 40]]"),
    ("thousands", json.dumps([[0, 0, 10, 10]] * 5000)), ("nested-deep", "[" * 5000 + "]" * 5000),
    ("bools", "[[true, false, true, true]]"), ("object", '{"x": 1}'),
]


@pytest.mark.parametrize("boxes", [b for _, b in BAD_BOXES], ids=[i for i, _ in BAD_BOXES])
def test_bad_boxes_are_422(server, boxes):
    response = post(server, png(BASE), boxes)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("invalid_bboxes", "too_many_faces")


def test_boxes_partly_outside_the_image_are_served(server, tiny_onnx):
    boxes = [[-30, -30, 80, 80], [100, 150, 200, 200]]
    response = post(server, png(BASE), boxes)
    assert response.status_code == 200
    want = _expected_from(tiny_onnx, BASE, boxes)
    for face, (points, _) in zip(response.json()["faces"], want):
        np.testing.assert_allclose(face["landmarks"], points, atol=1e-4)


def test_memory_does_not_jump_over_the_corpus(server):
    uploads = [make() for _, make, _ in REJECTED] + [make() for _, make, _ in ACCEPTED]
    for data in uploads:  # warm allocator pools first
        post(server, data)
    before = rss_kib(server.process.pid)
    for _ in range(5):
        for data in uploads:
            post(server, data)
        for _, boxes in BAD_BOXES:
            post(server, png(BASE), boxes)
    after = rss_kib(server.process.pid)
    print(f"server RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB over {5 * (len(uploads) + len(BAD_BOXES))} hostile requests")
    assert after - before < 30 * 1024
    assert httpx.get(server.url + "/healthz").status_code == 200
