"""A tiny synthetic WFLW data set, written in both published forms, with known landmarks.

Each image shows a cartoon face drawn from a 98-point template laid out like WFLW's (contour
0-32, brows 33-50, nose 51-59, eyes 60-75, mouth 76-95, pupils 96-97; left/right consistent
with the WFLW flip pairs), under a random similarity transform and small shape changes (mouth
and eye opening, per-point jitter). The face parts are drawn as lines through the landmarks
and every landmark carries a small dot coloured by its group, so a tiny network can learn
where the points are within a few CPU epochs.

Layout under `root`:

    WFLW_images/<event>/<name>.png
    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
    WFLW_annotations/list_98pt_test/list_98pt_test_{largepose,...}.txt
    annotations/face_landmarks_wflw_{train,test}.json      (mmpose form, images in WFLW_images)
    annotations/face_landmarks_wflw_test_{largepose,...}.json

The JSON `center`/`scale` follow what mmpose's published samples show (section 7 of
PIPELINE.md): centre rounded to the half-pixel grid, scale = max extent / 200 rounded up to a
multiple of 0.005, bbox = the landmark extent enlarged 1.2 times.

Run as a script to write one: `python tests/model_export/synthetic_wflw.py OUT_DIR`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from service.pipeline.keypoints import FLIP_PAIRS

ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
SUBSET_FILE_NAMES = {"pose": "largepose", "expression": "expression",
                     "illumination": "illumination", "makeup": "makeup",
                     "occlusion": "occlusion", "blur": "blur"}


def template(mouth_open: float = 0.0, eye_open: float = 1.0) -> np.ndarray:
    """(98, 2) landmarks of a frontal face in a unit frame (x right, y down, about [-1, 1])."""
    p = np.full((98, 2), np.nan)
    t = np.pi * np.arange(33) / 32
    p[:33] = np.stack([-0.85 * np.cos(t), -0.1 + 0.95 * np.sin(t)], axis=1)
    # left brow: upper arc 33-37 outer -> inner, lower arc 38-41 inner -> outer
    xs = np.linspace(-0.72, -0.15, 5)
    p[33:38] = np.stack([xs, -0.52 - 0.08 * np.sin(np.pi * np.arange(5) / 4)], axis=1)
    xs = np.linspace(-0.2, -0.64, 4)
    p[38:42] = np.stack([xs, -0.43 - 0.05 * np.sin(np.pi * (np.arange(4) + 0.5) / 4)], axis=1)
    # nose: bridge 51-54 on the midline, bottom 55-59 left -> right
    p[51:55] = np.stack([np.zeros(4), np.linspace(-0.35, 0.1, 4)], axis=1)
    p[55], p[56], p[57] = (-0.18, 0.2), (-0.09, 0.25), (0.0, 0.27)
    # left eye: 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid
    cx, cy, hw, hh = -0.38, -0.22, 0.18, 0.08 * eye_open
    for i, theta in enumerate(np.pi * np.array([1, 0.75, 0.5, 0.25, 0, -0.25, -0.5, -0.75])):
        p[60 + i] = (cx + hw * np.cos(theta), cy - hh * np.sin(theta))
    p[96] = (cx, cy)
    # mouth: outer 76 (left corner) 77-79 upper, lower 85-87 (87 left); inner 88-90, 94-95
    m = mouth_open
    p[76], p[77], p[78], p[79] = (-0.36, 0.55), (-0.22, 0.47), (-0.08, 0.44), (0.0, 0.46)
    p[87], p[86], p[85] = (-0.22, 0.63 + m), (-0.1, 0.68 + m), (0.0, 0.69 + m)
    p[88], p[89], p[90] = (-0.28, 0.55), (-0.1, 0.52), (0.0, 0.53)
    p[95], p[94] = (-0.1, 0.58 + m), (0.0, 0.59 + m)
    # right side = mirror of the left through the WFLW flip pairs
    for a, b in FLIP_PAIRS:
        src, dst = (a, b) if not np.isnan(p[a, 0]) else (b, a)
        p[dst] = (-p[src, 0], p[src, 1])
    assert not np.isnan(p).any()
    return p


# Polylines drawn through the landmarks: (indices, closed).
_STROKES = [
    (list(range(33)), False),
    (list(range(33, 42)), True), (list(range(42, 51)), True),
    (list(range(51, 55)), False), (list(range(55, 60)), False),
    (list(range(60, 68)), True), (list(range(68, 76)), True),
    (list(range(76, 88)), True), (list(range(88, 96)), True),
]
# Dot colour (RGB) per landmark group, so neighbouring parts look different.
_GROUP_COLOURS = [
    (range(33), (255, 255, 0)), (range(33, 51), (255, 0, 255)), (range(51, 60), (0, 255, 255)),
    (range(60, 76), (0, 0, 255)), (range(76, 96), (255, 0, 0)), (range(96, 98), (0, 255, 0)),
]
_SHIFT = 4  # sub-pixel drawing precision (1/16 px)


def _pt(xy) -> tuple[int, int]:
    return round(float(xy[0]) * (1 << _SHIFT)), round(float(xy[1]) * (1 << _SHIFT))


def draw_face(img: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a cartoon face through `points` (98, 2) into an RGB uint8 image, in place."""
    skin = tuple(int(v) for v in rng.integers(150, 235, size=3))
    centre = (points[0] + points[32]) / 2
    side = points[32] - centre  # half the face width, pointing to the image-right temple
    down = points[16] - points[51]  # nose top -> chin: the face's "down" direction
    up = -down / (np.linalg.norm(down) + 1e-9)
    half_width = np.linalg.norm(side)
    # contour 0 -> 32 along the jaw, then a forehead arc from 32 back over the top to 0
    arc = [centre + side * math.cos(a) + up * half_width * 1.1 * math.sin(a)
           for a in np.linspace(0, np.pi, 17)[1:-1]]
    outline = np.array([*points[:33], *arc], dtype=np.float64)
    cv2.fillPoly(img, [np.array([_pt(q) for q in outline], np.int32)], skin, cv2.LINE_AA, _SHIFT)
    eye_white = (245, 245, 245)
    for idx in (range(60, 68), range(68, 76)):
        cv2.fillPoly(img, [np.array([_pt(points[i]) for i in idx], np.int32)], eye_white,
                     cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(img, [np.array([_pt(points[i]) for i in range(76, 88)], np.int32)],
                 (170, 40, 50), cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(img, [np.array([_pt(points[i]) for i in range(88, 96)], np.int32)],
                 (60, 10, 20), cv2.LINE_AA, _SHIFT)
    for idx, closed in _STROKES:
        pts = np.array([_pt(points[i]) for i in idx], np.int32)
        cv2.polylines(img, [pts], closed, (40, 30, 30), 1, cv2.LINE_AA, _SHIFT)
    for idx, colour in _GROUP_COLOURS:
        for i in idx:
            cv2.circle(img, _pt(points[i]), 1 << _SHIFT, colour, -1, cv2.LINE_AA, _SHIFT)


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field plus mild noise."""
    low = rng.integers(0, 256, size=(3, 3, 3)).astype(np.float32)
    field_ = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    field_ += rng.normal(0, 6, size=field_.shape).astype(np.float32)
    return np.clip(field_, 0, 255).astype(np.uint8)


def random_face(rng: np.random.Generator, box: tuple[float, float, float, float]) -> np.ndarray:
    """Landmarks (98, 2) of a random face inside box = (x0, y0, width, height) pixels."""
    pts = template(mouth_open=float(rng.uniform(0, 0.1)), eye_open=float(rng.uniform(0.6, 1.3)))
    pts = pts + rng.normal(0, 0.012, size=pts.shape)
    x0, y0, w, h = box
    size = min(w, h) * rng.uniform(0.32, 0.4)  # pixels per template unit (face ~ 2 units)
    angle = math.radians(rng.uniform(-20, 20))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T * size
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    margin = 0.06 * min(w, h)
    cx = rng.uniform(x0 + margin - lo[0], x0 + w - margin - hi[0])
    cy = rng.uniform(y0 + margin - lo[1] + 0.2 * size, y0 + h - margin - hi[1])
    return pts + (cx, cy)


@dataclass
class SyntheticFace:
    rel_path: str
    keypoints: np.ndarray  # (98, 2) float64 pixels, as written (rounded to 6 decimals)
    flags: tuple[int, ...]  # pose, expression, illumination, makeup, occlusion, blur
    rect: tuple[float, float, float, float]  # x_min y_min x_max y_max


@dataclass
class SyntheticWFLW:
    root: Path
    img_dir: Path
    txt: dict[str, Path]
    json: dict[str, Path]
    faces: dict[str, list[SyntheticFace]] = field(default_factory=dict)
    subset_txt: dict[str, Path] = field(default_factory=dict)
    subset_json: dict[str, Path] = field(default_factory=dict)


def _flags(i: int, split: str, rng: np.random.Generator) -> tuple[int, ...]:
    if split == "test":  # every attribute present and absent in the test split
        return tuple(int((i + j) % 3 == 0) for j in range(len(ATTRIBUTES)))
    return tuple(int(v) for v in rng.random(len(ATTRIBUTES)) < 0.25)


def _txt_line(face: SyntheticFace) -> str:
    coords = " ".join(f"{v:.6f}" for v in face.keypoints.reshape(-1))
    rect = " ".join(f"{v:.0f}" for v in face.rect)
    return f"{coords} {rect} {' '.join(map(str, face.flags))} {face.rel_path}\n"


def _json_doc(faces: list[SyntheticFace], sizes: dict[str, tuple[int, int]]) -> dict:
    images, annotations, ids = [], [], {}
    for face in faces:
        if face.rel_path not in ids:
            ids[face.rel_path] = len(ids) + 1
            h, w = sizes[face.rel_path]
            images.append({"id": ids[face.rel_path], "file_name": face.rel_path,
                           "height": h, "width": w})
        k = face.keypoints
        lo, hi = k.min(axis=0), k.max(axis=0)
        mid, ext = (lo + hi) / 2, hi - lo
        bbox = [*(mid - 0.6 * ext), *(1.2 * ext)]
        annotations.append({
            "image_id": ids[face.rel_path], "id": len(annotations) + 1, "num_keypoints": 98,
            "bbox": [float(v) for v in bbox], "iscrowd": 0, "area": float(bbox[2] * bbox[3]),
            "category_id": 1,
            "center": [float(np.round(v * 2) / 2) for v in mid],
            "scale": float(math.ceil(ext.max() / 200 / 0.005 - 1e-9) * 0.005),
            "keypoints": [float(v) for xy in k for v in (*xy, 1)],
        })
    return {"categories": [{"supercategory": "person", "id": 1, "name": "face",
                            "keypoints": [], "skeleton": []}],
            "images": images, "annotations": annotations}


def make_synthetic_wflw(root: str | Path, num_train: int = 24, num_test: int = 6,
                        size: int = 160, seed: int = 0) -> SyntheticWFLW:
    """Write the data set under `root` and return what was written (with the true landmarks).

    The last test image is twice as wide and holds two faces (WFLW lists each face of an image
    on its own line)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    img_dir = root / "WFLW_images"
    ann_dir = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    sub_dir = root / "WFLW_annotations" / "list_98pt_test"
    json_dir = root / "annotations"
    for d in (ann_dir, sub_dir, json_dir):
        d.mkdir(parents=True, exist_ok=True)
    data = SyntheticWFLW(root=root, img_dir=img_dir, txt={}, json={})
    sizes: dict[str, tuple[int, int]] = {}
    for split, count in (("train", num_train), ("test", num_test)):
        faces = []
        for i in range(count):
            two = split == "test" and i == count - 1 and count > 1
            height, width = size, size * (2 if two else 1)
            event = f"{i % 3}--Synthetic{split.title()}"
            rel_path = f"{event}/{i}_{split}_synthetic_{i}.png"
            img = background(height, width, rng)
            boxes = [(0, 0, size, size), (size, 0, size, size)] if two else [(0, 0, size, size)]
            for box in boxes:
                pts = np.round(random_face(rng, box), 6)
                draw_face(img, pts, rng)
                lo, hi = pts.min(axis=0), pts.max(axis=0)
                rect = (float(np.floor(lo[0] - 3)), float(np.floor(lo[1] - 8)),
                        float(np.ceil(hi[0] + 3)), float(np.ceil(hi[1] + 2)))
                faces.append(SyntheticFace(rel_path, pts, _flags(len(faces), split, rng), rect))
            path = img_dir / rel_path
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            sizes[rel_path] = (height, width)
        data.faces[split] = faces
        data.txt[split] = ann_dir / f"list_98pt_rect_attr_{split}.txt"
        data.txt[split].write_text("".join(_txt_line(f) for f in faces))
        data.json[split] = json_dir / f"face_landmarks_wflw_{split}.json"
        data.json[split].write_text(json.dumps(_json_doc(faces, sizes)))
    for j, attribute in enumerate(ATTRIBUTES):
        name = SUBSET_FILE_NAMES[attribute]
        chosen = [f for f in data.faces["test"] if f.flags[j]]
        data.subset_txt[attribute] = sub_dir / f"list_98pt_test_{name}.txt"
        data.subset_txt[attribute].write_text("".join(_txt_line(f) for f in chosen))
        data.subset_json[attribute] = json_dir / f"face_landmarks_wflw_test_{name}.json"
        data.subset_json[attribute].write_text(json.dumps(_json_doc(chosen, sizes)))
    return data


if __name__ == "__main__":
    out = make_synthetic_wflw(sys.argv[1] if len(sys.argv) > 1 else "synthetic_wflw")
    print(f"wrote {sum(len(f) for f in out.faces.values())} faces under {out.root}")
