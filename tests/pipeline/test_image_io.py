"""Header-only size probing and image decoding (PIPELINE.md section 2.1)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.pipeline import preprocess
from service.pipeline.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    read_image_size,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "wflw_samples"
BIG = 10_000_000


def encode(ext: str, image: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def test_image(h: int = 37, w: int = 53, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(h * w)
    return rng.integers(0, 256, (h, w, channels)).astype(np.uint8)


test_image.__test__ = False  # a helper, not a test


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR (8-bit RGB) with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def hand_gif(width: int, height: int, pixels: list[int], palette: list[tuple]) -> bytes:
    """GIF89a with a 4-colour palette; LZW data written as CLEAR, pixel, CLEAR, pixel, ...
    so every code stays 3 bits wide."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x81, 0, 0)
    table = b"".join(bytes(c) for c in palette)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    codes = [c for p in pixels for c in (4, p)] + [5]  # clear = 4, end = 5
    bits = sum(code << (3 * i) for i, code in enumerate(codes))
    data = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                      for i in range(0, len(data), 255))
    return header + table + descriptor + b"\x02" + blocks + b"\x00\x3b"


def big_endian_tiff(width: int, height: int) -> bytes:
    """Uncompressed 8-bit grey TIFF in Motorola byte order, pixels 0, 1, 2, ..."""
    pixels = bytes(range(width * height))
    entries = [  # (tag, type, count, value); SHORT values are left-justified
        (256, 3, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
        (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    pixel_offset = 8 + ifd_size
    ifd = struct.pack(">H", len(entries))
    for tag, kind, count, value in entries:
        value = pixel_offset if tag == 273 else value
        packed = struct.pack(">H2x", value) if kind == 3 else struct.pack(">I", value)
        ifd += struct.pack(">HHI", tag, kind, count) + packed
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + b"\x00" * 4 + pixels


def os2_bmp(width: int, height: int) -> bytes:
    row = (width * 3 + 3) // 4 * 4
    header = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return (b"BM" + struct.pack("<IHHI", 26 + row * height, 0, 0, 26) + header
            + b"\x7f" * row * height)


# --------------------------------------------------------------------------- read_image_size


def encoded_samples() -> dict[str, tuple[bytes, tuple[int, int]]]:
    rgb = test_image(37, 53)
    bgra = test_image(29, 41, channels=4)
    bmp_top_down = bytearray(encode(".bmp", rgb))
    bmp_top_down[22:26] = struct.pack("<i", -37)
    # JPEG with an extra APP1 segment (containing 0xFF bytes) and fill bytes before DQT.
    jpg = encode(".jpg", rgb)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 300) + b"\xff\xd9\xff\xc0" * 75
    padded_jpg = jpg[:2] + app1 + b"\xff\xff\xff" + jpg[2:]
    return {
        "png": (encode(".png", rgb), (53, 37)),
        "png-rgba": (encode(".png", bgra), (41, 29)),
        "jpeg": (jpg, (53, 37)),
        "jpeg-progressive": (encode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (53, 37)),
        "jpeg-app1-fill": (padded_jpg, (53, 37)),
        "bmp": (encode(".bmp", rgb), (53, 37)),
        "bmp-top-down": (bytes(bmp_top_down), (53, 37)),
        "bmp-os2": (os2_bmp(7, 5), (7, 5)),
        "webp-lossy": (encode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 90]), (53, 37)),
        "webp-lossless": (encode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 101]), (53, 37)),
        "webp-extended": (encode(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 90]), (41, 29)),
        "tiff-le": (encode(".tiff", rgb), (53, 37)),
        "tiff-be": (big_endian_tiff(5, 3), (5, 3)),
        "gif-opencv": (encode(".gif", rgb), (53, 37)),
        "gif-hand": (hand_gif(3, 2, [0, 1, 2, 3, 2, 1], [(255, 0, 0), (0, 255, 0),
                                                       (0, 0, 255), (9, 9, 9)]), (3, 2)),
        "wflw-jpeg": ((SAMPLES / "36_Football_americanfootball_ball_36_415.jpg").read_bytes(),
                      (1024, 661)),
    }


SAMPLES_BY_NAME = encoded_samples()


@pytest.mark.parametrize("name", sorted(SAMPLES_BY_NAME))
def test_read_image_size(name):
    data, size = SAMPLES_BY_NAME[name]
    assert read_image_size(data) == size


@pytest.mark.parametrize("name", sorted(SAMPLES_BY_NAME))
def test_decoded_size_matches_header(name):
    data, (width, height) = SAMPLES_BY_NAME[name]
    rgb = decode_image(data, BIG)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


def test_variant_formats_are_really_what_they_claim():
    assert SAMPLES_BY_NAME["webp-lossy"][0][12:16] == b"VP8 "
    assert SAMPLES_BY_NAME["webp-lossless"][0][12:16] == b"VP8L"
    assert SAMPLES_BY_NAME["webp-extended"][0][12:16] == b"VP8X"
    assert SAMPLES_BY_NAME["tiff-le"][0][:2] == b"II"
    assert b"\xff\xc2" in SAMPLES_BY_NAME["jpeg-progressive"][0]


@pytest.mark.parametrize("data", [b"", b"x", b"hello world, not an image at all",
                                  b"\x00" * 100, b"RIFF\x00\x00\x00\x00WAVEfmt ",
                                  b"P6\n3 2\n255\n" + b"\x00" * 18])
def test_unrecognised_formats_give_none(data):
    assert read_image_size(data) is None


@pytest.mark.parametrize("name", sorted(SAMPLES_BY_NAME))
def test_truncated_headers_raise_decode_error_or_none(name):
    data, size = SAMPLES_BY_NAME[name]
    for cut in range(64):
        try:
            result = read_image_size(data[:cut])
        except ImageDecodeError:
            continue
        assert result is None or result == size


def test_hostile_headers_never_raise_anything_else():
    rng = np.random.default_rng(0)
    magics = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"GIF89a", b"BM", b"RIFF\x10\x00\x00\x00WEBP",
              b"II*\x00", b"MM\x00*"]
    cases = [m + rng.bytes(int(rng.integers(0, 80))) for m in magics for _ in range(300)]
    for data, _ in SAMPLES_BY_NAME.values():
        for _ in range(100):
            mutated = bytearray(data[:200])
            for pos in rng.integers(0, len(mutated), 4):
                mutated[pos] = rng.integers(0, 256)
            cases.append(bytes(mutated))
    # Adversarial structures: huge TIFF IFD offset / entry count, endless JPEG segments.
    cases += [b"II*\x00\xff\xff\xff\xff", b"MM\x00*\x00\x00\x00\x08\xff\xff",
              b"\xff\xd8" + b"\xff\xe0\x00\x02" * 50_000, b"\xff\xd8" + b"\xff" * 10_000,
              b"\xff\xd8\xff\xe0\x00\x00", b"\xff\xd8\xff\xda\x00\x08"]
    for data in cases:
        try:
            result = read_image_size(data)
        except ImageDecodeError:
            continue
        assert result is None or (len(result) == 2 and all(isinstance(v, int) for v in result))


def test_gif_first_frame_larger_than_the_screen_counts(monkeypatch):
    gif = bytearray(SAMPLES_BY_NAME["gif-hand"][0])
    descriptor = gif.index(b"\x2c", 13 + 12)  # after the header and the 4-colour table
    gif[descriptor + 5:descriptor + 9] = struct.pack("<HH", 5000, 4000)
    assert read_image_size(bytes(gif)) == (5000, 4000)
    monkeypatch.setattr(preprocess.cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    with pytest.raises(ImageTooLargeError, match="5000x4000"):
        decode_image(bytes(gif), max_pixels=1_000_000)


def test_accepts_bytearray_and_memoryview():
    data, size = SAMPLES_BY_NAME["png"]
    assert read_image_size(bytearray(data)) == size
    assert read_image_size(memoryview(data)) == size


# --------------------------------------------------------------------------- decode_image


def test_huge_png_header_is_refused_before_decoding(monkeypatch):
    data = png_header_only(100_000, 100_000)
    assert read_image_size(data) == (100_000, 100_000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("cv2.imdecode must not be called for an oversized image")

    monkeypatch.setattr(preprocess.cv2, "imdecode", no_decoding)
    with pytest.raises(ImageTooLargeError, match=r"100000x100000.*50000000") as info:
        decode_image(data, max_pixels=50_000_000)
    assert isinstance(info.value, ValueError)


def test_pixel_limit_is_inclusive():
    data = encode(".png", test_image(10, 20))
    assert decode_image(data, max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(ImageTooLargeError, match="20x10"):
        decode_image(data, max_pixels=199)


def test_decoded_shape_is_checked_when_the_header_lies(monkeypatch):
    data = encode(".png", test_image(100, 100))
    monkeypatch.setattr(preprocess, "read_image_size", lambda _: (1, 1))
    with pytest.raises(ImageTooLargeError, match="100x100"):
        decode_image(data, max_pixels=5000)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"GIF90a-not-really" + b"\x00" * 50, "unsupported"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "unsupported"),  # JPEG 2000: not on the list
    (png_header_only(64, 64), "undecodable"),  # header fine, no pixel data
    (png_header_only(0, 10), "empty image"),
])
def test_decode_errors(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, BIG)


def test_truncated_jpeg_is_a_decode_error():
    jpg = SAMPLES_BY_NAME["wflw-jpeg"][0]
    for cut in (3, 20, 200, len(jpg) // 2, len(jpg) - 100):
        with pytest.raises(ImageDecodeError):
            decode_image(jpg[:cut], BIG)


def test_pure_red_comes_out_as_rgb():
    bgr_red = np.zeros((8, 8, 3), np.uint8)
    bgr_red[..., 2] = 255  # OpenCV images are BGR: this is red
    for ext in (".png", ".bmp", ".tiff", ".webp"):
        rgb = decode_image(encode(ext, bgr_red), BIG)
        assert rgb[..., 0].min() == 255 and rgb[..., 1:].max() == 0, ext


def test_grayscale_png_becomes_three_equal_channels():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    rgb = decode_image(encode(".png", grey), BIG)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], grey)


def test_sixteen_bit_png_becomes_eight_bit():
    deep = np.zeros((4, 5, 3), np.uint16)
    deep[..., 2] = 65535  # red in BGR order
    deep[..., 1] = 0x8000
    rgb = decode_image(encode(".png", deep), BIG)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 5, 3)
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1] == 128).all() and (rgb[..., 2] == 0).all()


def test_four_channel_png_drops_alpha():
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 2] = 255  # red
    bgra[..., 3] = 40  # mostly transparent: the colour is kept, alpha is dropped
    rgb = decode_image(encode(".png", bgra), BIG)
    assert rgb.shape == (3, 4, 3)
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()


def test_hand_made_gif_and_big_endian_tiff_pixels():
    rgb = decode_image(SAMPLES_BY_NAME["gif-hand"][0], BIG)
    np.testing.assert_array_equal(rgb, [[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                                        [[9, 9, 9], [0, 0, 255], [0, 255, 0]]])
    grey = decode_image(SAMPLES_BY_NAME["tiff-be"][0], BIG)
    np.testing.assert_array_equal(grey[..., 0], np.arange(15).reshape(3, 5))


def test_exif_orientation_is_applied():
    # A landscape JPEG tagged "rotate 90 CW" (orientation 6) decodes as portrait.
    jpg = encode(".jpg", test_image(20, 40))
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(
        ">HHIH2x", 0x0112, 3, 1, 6) + b"\x00" * 4
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    rotated = jpg[:2] + app1 + jpg[2:]
    assert read_image_size(rotated) == (40, 20)
    assert decode_image(rotated, BIG).shape == (40, 20, 3)
