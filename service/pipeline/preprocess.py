"""Image bytes -> RGB pixels -> face crops -> normalised network input (PIPELINE.md section 2).

The image size is read from the file header first, so an oversized image (a decompression
bomb) is refused before any pixel is decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from functools import lru_cache

import cv2
import numpy as np

from .geometry import PIXEL_STD, get_affine_transform


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can decode (HTTP 415)."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than the configured limit (HTTP 413)."""


# --------------------------------------------------------------------------- header parsing


def _corrupt(fmt: str) -> ImageDecodeError:
    return ImageDecodeError(f"truncated or corrupt {fmt} header")


def _unpack(fmt: str, data: bytes, offset: int, name: str) -> tuple:
    """struct.unpack_from that reports a short buffer as a corrupt header."""
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise _corrupt(name)
    return struct.unpack_from(fmt, data, offset)


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature (8) + IHDR chunk: length (4), type (4), width (4), height (4), big-endian.
    length, chunk, width, height = _unpack(">I4sII", data, 8, "PNG")
    if chunk != b"IHDR" or length < 8:
        raise _corrupt("PNG")
    return width, height


# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8), 0xD8, 0xD9])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2  # after SOI
    while True:
        # A marker is 0xFF followed by a code; extra 0xFF bytes are legal fill.
        if pos >= len(data) or data[pos] != 0xFF:
            raise _corrupt("JPEG")
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            raise _corrupt("JPEG")
        marker = data[pos]
        pos += 1
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise _corrupt("JPEG")
        if marker in _JPEG_STANDALONE:
            continue
        (length,) = _unpack(">H", data, pos, "JPEG")
        if length < 2:
            raise _corrupt("JPEG")
        if marker in _JPEG_SOF:
            _precision, height, width = _unpack(">BHH", data, pos + 2, "JPEG")
            return width, height
        pos += length  # always advances by >= 2 bytes, so the walk terminates


def _gif_size(data: bytes) -> tuple[int, int]:
    """Logical screen size, enlarged to the first frame's extent if that frame sticks out.

    The decoder reads the first frame, whose descriptor may claim more than the screen, so
    the pixel limit is checked against whichever is larger.
    """
    width, height, flags = _unpack("<HHB", data, 6, "GIF")
    pos = 13
    if flags & 0x80:  # global colour table of 2^(n+1) RGB entries
        pos += 3 * (2 << (flags & 0x07))
    while True:
        (introducer,) = _unpack("B", data, pos, "GIF")
        if introducer == 0x21:  # extension: label, then data sub-blocks up to a 0 length
            pos += 2
            while True:
                (length,) = _unpack("B", data, pos, "GIF")
                pos += 1 + length
                if length == 0:
                    break
        elif introducer == 0x2C:  # image descriptor: left, top, width, height
            left, top, frame_w, frame_h = _unpack("<HHHH", data, pos + 1, "GIF")
            return max(width, left + frame_w), max(height, top + frame_h)
        else:  # trailer or garbage before any frame
            raise _corrupt("GIF")


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = _unpack("<I", data, 14, "BMP")
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = _unpack("<HH", data, 18, "BMP")
    elif header_size >= 16:  # BITMAPINFOHEADER and its successors: signed 32-bit
        width, height = _unpack("<ii", data, 18, "BMP")
    else:
        raise _corrupt("BMP")
    if width < 0:
        raise _corrupt("BMP")
    return width, abs(height)  # a negative height means rows stored top-down


def _webp_size(data: bytes) -> tuple[int, int]:
    (chunk,) = _unpack("4s", data, 12, "WebP")
    if chunk == b"VP8 ":
        # Lossy: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
        (start,) = _unpack("3s", data, 23, "WebP")
        if start != b"\x9d\x01\x2a":
            raise _corrupt("WebP")
        width, height = _unpack("<HH", data, 26, "WebP")
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        # Lossless: signature 0x2f, then (width - 1) and (height - 1) in 14 bits each.
        signature, bits = _unpack("<BI", data, 20, "WebP")
        if signature != 0x2F:
            raise _corrupt("WebP")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        # Extended: flags (4 bytes), then canvas (width - 1) and (height - 1) in 24 bits each.
        (raw,) = _unpack("6s", data, 24, "WebP")
        width = int.from_bytes(raw[:3], "little") + 1
        height = int.from_bytes(raw[3:], "little") + 1
        return width, height
    raise _corrupt("WebP")


_TIFF_SHORT, _TIFF_LONG = 3, 4
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257


def _tiff_size(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = _unpack(order + "I", data, 4, "TIFF")
    (count,) = _unpack(order + "H", data, ifd, "TIFF")
    sizes: dict[int, int] = {}
    for i in range(count):  # at most 65535 entries, each bounds-checked
        tag, kind, n = _unpack(order + "HHI", data, ifd + 2 + 12 * i, "TIFF")
        if tag in (_TIFF_WIDTH, _TIFF_LENGTH) and n >= 1:
            if kind == _TIFF_SHORT:
                (sizes[tag],) = _unpack(order + "H", data, ifd + 10 + 12 * i, "TIFF")
            elif kind == _TIFF_LONG:
                (sizes[tag],) = _unpack(order + "I", data, ifd + 10 + 12 * i, "TIFF")
        if len(sizes) == 2:
            return sizes[_TIFF_WIDTH], sizes[_TIFF_LENGTH]
    raise _corrupt("TIFF")


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


_FORMATS: tuple[tuple[Callable[[bytes], bool], Callable[[bytes], tuple[int, int]]], ...] = (
    (lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), _png_size),
    (lambda d: d.startswith(b"\xff\xd8"), _jpeg_size),
    (lambda d: d[:6] in (b"GIF87a", b"GIF89a"), _gif_size),
    (lambda d: d.startswith(b"BM"), _bmp_size),
    (_is_webp, _webp_size),
    (lambda d: d[:4] in (b"II*\x00", b"MM\x00*"), _tiff_size),
)


def read_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG/JPEG/GIF/BMP/WebP/TIFF, without decoding.

    Returns None when the format is not recognised; raises ImageDecodeError when it is
    recognised but the header is truncated or inconsistent.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    for matches, size_of in _FORMATS:
        if matches(data):
            return size_of(data)
    return None


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3), refusing images above max_pixels.

    The header is checked before decoding (ImageTooLargeError); cv2.imdecode(IMREAD_COLOR)
    then applies EXIF orientation and converts grey, 16-bit and alpha images to 8-bit BGR
    (section 2.1), which is turned into RGB.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    size = read_image_size(data)
    if size is None:
        raise ImageDecodeError(
            "unsupported or undecodable image (expected PNG, JPEG, GIF, BMP, WebP or TIFF)"
        )
    _check_pixels(*size, max_pixels)

    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # some codecs raise instead of returning None
        raise ImageDecodeError("unsupported or undecodable image (decoder error)") from exc
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ImageDecodeError("unsupported or undecodable image (the decoder rejected the data)")
    # The header may lie about the size; the decoded array is what counts.
    _check_pixels(bgr.shape[1], bgr.shape[0], max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels} pixels"
        )


# --------------------------------------------------------------------------- crop + normalise


def crop_faces(rgb: np.ndarray, center, scale, input_size, pixel_std: float = PIXEL_STD) -> np.ndarray:
    """Warp each face box out of an RGB image: uint8 (N, h, w, 3), input_size = (w, h).

    Bilinear cv2.warpAffine with a constant zero border, matrix from get_affine_transform
    with no rotation (sections 2.3-2.4).
    """
    rgb = np.ascontiguousarray(rgb)
    center = np.asarray(center).reshape(-1, 2)
    scale = np.asarray(scale).reshape(-1, 2)
    width, height = input_size
    crops = np.empty((len(center), height, width, 3), dtype=np.uint8)
    for i in range(len(center)):
        matrix = get_affine_transform(center[i], scale[i], 0, input_size, pixel_std=pixel_std)
        cv2.warpAffine(
            rgb, matrix, (width, height), dst=crops[i],
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
    return crops


@lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ((v / 255) - mean_c) / std_c for every uint8 value v, in float32.

    Normalisation is a per-(value, channel) function, so a table lookup is bit-identical to
    computing it per pixel (section 2.5: divide by 255, subtract, divide, all in float32).
    """
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    table = (values[None, :] - mean32) / std32
    table.setflags(write=False)
    return table


def normalize(crops: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 crops (N, h, w, 3) RGB -> float32 (N, 3, h, w), C-contiguous, (x/255 - mean)/std."""
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(f"crops must be uint8 (N, h, w, 3), got {crops.dtype} {crops.shape}")
    table = _normalise_table(tuple(map(float, mean)), tuple(map(float, std)))
    n, h, w, channels = crops.shape
    out = np.empty((n, channels, h, w), dtype=np.float32)
    for i in range(n):
        # cv2.LUT writes each channel plane straight into the CHW output.
        for c, plane in enumerate(cv2.split(crops[i])):
            cv2.LUT(plane, table[c].reshape(1, 256), dst=out[i, c])
    return out
