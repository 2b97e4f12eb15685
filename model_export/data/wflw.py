"""WFLW annotations in both published forms, read into one record type.

1. **Official text files** (WFLW's README; PIPELINE.md section 7)::

       <root>/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
       <root>/WFLW_images/<event folder>/<image>.jpg

   One face per line, 207 space-separated fields: 196 coordinates x0 y0 ... x97 y97 (pixels),
   the detection rectangle x_min y_min x_max y_max, six 0/1 flags in the order pose,
   expression, illumination, make-up, occlusion, blur, and the image path relative to
   `WFLW_images/`.

2. **mmpose's COCO-style JSON** (`face_landmarks_wflw_{train,test}.json` and the six
   `face_landmarks_wflw_test_{largepose,...}.json` subset files), images under a separate
   folder. Each annotation carries `keypoints` (98 x [x, y, v]), `bbox`, `center` and a scalar
   `scale` (units of 200 px, before the 1.25 padding); training and evaluation use `center`
   and `scale`, never `bbox` (docs/PIPELINE.md sections 5 and 6).

Records hold `scale` in units of the codec's `pixel_std` (`HeatmapCodec`, mmpose's 200 px by
default): the readers take `pixel_std` and convert mmpose's JSON when it differs.

**Crop centre and scale for the text form.** mmpose never reads the text files; its JSON was
made by a conversion script that is not published, so its `center`/`scale` cannot be
reproduced exactly. This reader uses the rule the four published sample faces approximate
(section 7): `center` = midpoint of the landmark extent (min and max of the 98 points on each
axis) and `scale` = max(extent width, extent height) / pixel_std, unrounded. On the samples mmpose's
centre lies on a half-pixel grid within 0.5 px of that midpoint and its scale is 0.8 to 2.2 %
larger (rounded up to a multiple of 0.005, plus one outlier), so crops from the text form are a
little tighter than mmpose's and NME from it is close to, not identical with, the published
figures. The detection rectangle is kept in `bbox` (as x, y, w, h) but not used.

**Subsets.** The seven WFLW test sets are the full test split and the faces whose flag is 1
(`subset()`); the official `list_98pt_test_<subset>.txt` files list the same faces. mmpose's
JSON has no flags: its subsets are separate files (`read_json_subsets`).

Every problem with the data raises `WFLWError` (a ValueError) whose message names the file and,
for a malformed line, its line number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.pipeline.config import HeatmapCodec
from service.pipeline.preprocess import ImageDecodeError, decode_image

NUM_KEYPOINTS = 98
# Box scale unit of the crop (the codec's); mmpose's JSON files count their `scale` in 200 px.
DEFAULT_PIXEL_STD = HeatmapCodec().pixel_std
MMPOSE_JSON_PIXEL_STD = 200.0
# Decoding limit for dataset images (WFLW's largest are a few megapixels).
MAX_PIXELS = 100_000_000

# Flag order in the official text files.
ATTRIBUTES: tuple[str, ...] = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
# The order of the published results table (mmpose's hrnetv2_dark_wflw.md).
SUBSET_ORDER: tuple[str, ...] = ("test", "pose", "illumination", "occlusion", "blur", "makeup",
                                 "expression")
# mmpose's / WFLW's file-name spelling of each attribute subset.
SUBSET_FILE_NAMES: dict[str, str] = {
    "pose": "largepose", "expression": "expression", "illumination": "illumination",
    "makeup": "makeup", "occlusion": "occlusion", "blur": "blur",
}

TXT_ANNOTATION_DIR = Path("WFLW_annotations") / "list_98pt_rect_attr_train_test"
TXT_SUBSET_DIR = Path("WFLW_annotations") / "list_98pt_test"
TXT_IMAGE_DIR = Path("WFLW_images")
JSON_ANNOTATION_DIR = Path("annotations")  # mmpose's data/wflw layout
JSON_IMAGE_DIR = Path("images")
SPLITS = ("train", "test")

_FIELDS = 2 * NUM_KEYPOINTS + 4 + len(ATTRIBUTES) + 1  # 207
_MAX_LISTED = 5


class WFLWError(ValueError):
    """The WFLW data cannot be used as given; the message says where and why."""


@dataclass(eq=False)  # compared by identity: the arrays make field equality ambiguous
class FaceRecord:
    """One annotated face.

    keypoints: (98, 2) float32 pixels; visible: (98,) float32 in {0, 1} (min(1, v));
    center: (2,) float32; scale: the scalar face size in units of pixel_std (200 px by
    default) before the box padding; bbox: (4,) float32 x, y, w, h (informative only); attributes: the six flags
    (None for the JSON form); source: "file:line" or "file: annotation id".
    """

    image_path: Path
    keypoints: np.ndarray
    visible: np.ndarray
    center: np.ndarray
    scale: float
    bbox: np.ndarray
    source: str
    attributes: dict[str, int] | None = None
    image_id: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def scale_array(self) -> np.ndarray:
        """[s, s] float32, as mmpose's dataset stores the scalar scale."""
        return np.array([self.scale, self.scale], dtype=np.float32)


def center_scale_from_landmarks(keypoints: np.ndarray, visible: np.ndarray | None = None,
                                pixel_std: float = DEFAULT_PIXEL_STD) -> tuple[np.ndarray, float]:
    """The text form's crop box (see the module docstring): keypoints (K, 2) -> extent midpoint
    (2,) float32 and max extent / pixel_std."""
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if visible is not None:
        points = points[np.asarray(visible) > 0] if np.any(np.asarray(visible) > 0) else points
    lo, hi = points.min(axis=0), points.max(axis=0)
    center = ((lo + hi) / 2).astype(np.float32)
    scale = float((hi - lo).max() / pixel_std)
    return center, scale


# --------------------------------------------------------------------------- text form


def parse_txt_line(line: str, where: str, image_root: Path,
                   pixel_std: float = DEFAULT_PIXEL_STD) -> FaceRecord:
    """One line of list_98pt_rect_attr_*.txt -> FaceRecord; `where` is "file:line"."""
    parts = line.split()
    if len(parts) != _FIELDS:
        raise WFLWError(
            f"{where}: expected {_FIELDS} space-separated fields (196 coordinates, 4 box values, "
            f"6 attribute flags, image path), got {len(parts)}"
        )
    try:
        numbers = np.array([float(p) for p in parts[:2 * NUM_KEYPOINTS + 4]], dtype=np.float64)
    except ValueError:
        bad = next(p for p in parts[:2 * NUM_KEYPOINTS + 4] if not _is_float(p))
        raise WFLWError(f"{where}: coordinate or box value {bad!r} is not a number") from None
    if not np.all(np.isfinite(numbers)):
        raise WFLWError(f"{where}: coordinates and box values must be finite")
    flags_raw = parts[2 * NUM_KEYPOINTS + 4:2 * NUM_KEYPOINTS + 4 + len(ATTRIBUTES)]
    if any(f not in ("0", "1") for f in flags_raw):
        raise WFLWError(
            f"{where}: attribute flags ({', '.join(ATTRIBUTES)}) must be 0 or 1, got "
            f"{' '.join(flags_raw)}"
        )
    rel_path = parts[-1]
    keypoints = numbers[:2 * NUM_KEYPOINTS].reshape(NUM_KEYPOINTS, 2).astype(np.float32)
    x1, y1, x2, y2 = numbers[2 * NUM_KEYPOINTS:]
    visible = np.ones(NUM_KEYPOINTS, dtype=np.float32)
    center, scale = center_scale_from_landmarks(keypoints, pixel_std=pixel_std)
    if scale <= 0:
        raise WFLWError(f"{where}: all 98 landmarks coincide; the face has no extent")
    return FaceRecord(
        image_path=image_root / rel_path,
        keypoints=keypoints,
        visible=visible,
        center=center,
        scale=scale,
        bbox=np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32),
        source=where,
        attributes={name: int(f) for name, f in zip(ATTRIBUTES, flags_raw)},
        extra={"rel_path": rel_path},
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_txt(ann_file: str | Path, image_root: str | Path, check_images: bool = True,
             pixel_std: float = DEFAULT_PIXEL_STD) -> list[FaceRecord]:
    """Parse an official annotation file; image paths are resolved under `image_root`."""
    ann_file, image_root = Path(ann_file), Path(image_root)
    if not ann_file.is_file():
        raise WFLWError(f"annotation file not found: {ann_file}")
    records = []
    with open(ann_file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            records.append(parse_txt_line(line, f"{ann_file}:{number}", image_root, pixel_std))
    if not records:
        raise WFLWError(f"{ann_file} holds no annotations")
    if check_images:
        check_image_files(records)
    return records


# --------------------------------------------------------------------------- JSON form


def read_json(ann_file: str | Path, img_dir: str | Path, check_images: bool = True,
              pixel_std: float = DEFAULT_PIXEL_STD) -> list[FaceRecord]:
    """Parse mmpose's COCO-style WFLW JSON; `file_name`s are resolved under `img_dir`."""
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    if not ann_file.is_file():
        raise WFLWError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise WFLWError(f"{ann_file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise WFLWError(f"{ann_file}: expected a COCO-style object with 'images' and 'annotations' lists")
    images = {}
    for i, image in enumerate(data["images"]):
        try:
            images[int(image["id"])] = str(image["file_name"])
        except (KeyError, TypeError, ValueError):
            raise WFLWError(f"{ann_file}: images[{i}] needs an integer 'id' and a 'file_name'") from None
    records = []
    for i, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", i) if isinstance(ann, dict) else i
        where = f"{ann_file}: annotations[{i}] (id {ann_id})"
        records.append(_json_record(ann, where, images, img_dir, pixel_std))
    if not records:
        raise WFLWError(f"{ann_file} holds no annotations")
    if check_images:
        check_image_files(records)
    return records


def _json_record(ann, where: str, images: dict[int, str], img_dir: Path,
                 pixel_std: float) -> FaceRecord:
    if not isinstance(ann, dict):
        raise WFLWError(f"{where}: an annotation must be an object")
    missing = [k for k in ("image_id", "keypoints", "center", "scale") if k not in ann]
    if missing:
        raise WFLWError(f"{where}: missing {', '.join(missing)}")
    try:
        image_id = int(ann["image_id"])
    except (TypeError, ValueError):
        raise WFLWError(f"{where}: image_id {ann['image_id']!r} is not an integer") from None
    if image_id not in images:
        raise WFLWError(f"{where}: image_id {image_id} is not in 'images'")
    try:
        kpts = np.asarray(ann["keypoints"], dtype=np.float64)
        center = np.asarray(ann["center"], dtype=np.float32)
        scale = float(ann["scale"])
        bbox = np.asarray(ann.get("bbox", [0, 0, 0, 0]), dtype=np.float32)
    except (TypeError, ValueError):
        raise WFLWError(f"{where}: keypoints, center, scale and bbox must be numbers") from None
    if kpts.shape != (3 * NUM_KEYPOINTS,):
        raise WFLWError(f"{where}: keypoints must hold 98 x [x, y, v] = 294 numbers, "
                        f"got shape {kpts.shape}")
    if center.shape != (2,) or bbox.shape != (4,):
        raise WFLWError(f"{where}: center must be [cx, cy] and bbox [x, y, w, h]")
    if not (np.all(np.isfinite(kpts)) and np.all(np.isfinite(center)) and math.isfinite(scale)):
        raise WFLWError(f"{where}: keypoints, center and scale must be finite")
    if scale <= 0:
        raise WFLWError(f"{where}: scale must be > 0, got {scale}")
    if pixel_std != MMPOSE_JSON_PIXEL_STD:
        scale = scale * MMPOSE_JSON_PIXEL_STD / pixel_std
    kpts = kpts.reshape(NUM_KEYPOINTS, 3)
    return FaceRecord(
        image_path=img_dir / images[image_id],
        keypoints=kpts[:, :2].astype(np.float32),
        visible=np.minimum(1, kpts[:, 2]).clip(0).astype(np.float32),
        center=center,
        scale=scale,
        bbox=bbox,
        source=where,
        image_id=image_id,
        extra={"ann_id": ann.get("id"), "rel_path": images[image_id]},
    )


def json_subset_files(ann_file: str | Path) -> dict[str, Path]:
    """mmpose's subset files next to a test JSON: `<stem>_largepose.json` etc., those present."""
    ann_file = Path(ann_file)
    found = {}
    for subset, name in SUBSET_FILE_NAMES.items():
        candidate = ann_file.with_name(f"{ann_file.stem}_{name}{ann_file.suffix}")
        if candidate.is_file():
            found[subset] = candidate
    return found


def read_json_subsets(ann_file: str | Path, img_dir: str | Path, check_images: bool = True,
                      pixel_std: float = DEFAULT_PIXEL_STD) -> dict[str, list[FaceRecord]]:
    """{"test": faces of ann_file, "<subset>": faces of each subset file found next to it}."""
    subsets = {"test": read_json(ann_file, img_dir, check_images, pixel_std)}
    for subset, path in json_subset_files(ann_file).items():
        subsets[subset] = read_json(path, img_dir, check_images, pixel_std)
    return subsets


# --------------------------------------------------------------------------- both forms


def load_rgb(path: str | Path) -> np.ndarray:
    """Image file -> RGB uint8 (H, W, 3), decoded exactly as the service decodes (section 2.1)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WFLWError(f"cannot read image {path}: {exc.strerror or exc}") from None
    try:
        return decode_image(data, MAX_PIXELS)
    except ImageDecodeError as exc:
        raise WFLWError(f"cannot decode image {path}: {exc}") from None


def check_image_files(records: Iterable[FaceRecord]) -> None:
    """Raise WFLWError naming the missing image files (and the annotations that use them)."""
    missing: dict[Path, str] = {}
    for record in records:
        if record.image_path not in missing and not record.image_path.is_file():
            missing[record.image_path] = record.source
    if missing:
        listed = "; ".join(f"{path} (used by {source})" for path, source in
                           list(missing.items())[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise WFLWError(f"{len(missing)} image file(s) missing: {listed}{more}")


def subset(records: Sequence[FaceRecord], name: str) -> list[FaceRecord]:
    """The faces of one WFLW subset: "test"/"all" is everything, else the faces whose flag is 1."""
    if name in ("test", "train", "all"):
        return list(records)
    if name not in ATTRIBUTES:
        raise WFLWError(f"unknown subset {name!r}; choose from {', '.join(SUBSET_ORDER)}")
    if any(r.attributes is None for r in records):
        raise WFLWError(f"subset {name!r} needs attribute flags, which only the official text "
                        "files carry; for mmpose's JSON use its subset files")
    return [r for r in records if r.attributes[name] == 1]


def subsets_by_flags(records: Sequence[FaceRecord]) -> dict[str, list[FaceRecord]]:
    """All seven WFLW evaluation sets, in the order of the published table."""
    return {name: subset(records, name) for name in SUBSET_ORDER}


@dataclass(frozen=True)
class WFLWSource:
    """Where a split lives: the form, the annotation file and the image folder, and the unit
    (pixel_std) its records' box scale is given in."""

    form: str  # "txt" or "json"
    ann_file: Path
    img_dir: Path
    pixel_std: float = DEFAULT_PIXEL_STD

    def read(self, check_images: bool = True) -> list[FaceRecord]:
        if self.form == "txt":
            return read_txt(self.ann_file, self.img_dir, check_images, self.pixel_std)
        return read_json(self.ann_file, self.img_dir, check_images, self.pixel_std)

    def read_subsets(self, check_images: bool = True) -> dict[str, list[FaceRecord]]:
        """The evaluation sets this source defines (all seven for the text form; for JSON the
        whole file plus whichever mmpose subset files sit next to it)."""
        if self.form == "txt":
            return subsets_by_flags(self.read(check_images))
        found = read_json_subsets(self.ann_file, self.img_dir, check_images, self.pixel_std)
        return {name: found[name] for name in SUBSET_ORDER if name in found}


def candidate_sources(root: str | Path, split: str, pixel_std: float = DEFAULT_PIXEL_STD
                      ) -> list[WFLWSource]:
    root = Path(root)
    txt_name = f"list_98pt_rect_attr_{split}.txt"
    json_name = f"face_landmarks_wflw_{split}.json"
    return [
        WFLWSource("txt", root / TXT_ANNOTATION_DIR / txt_name, root / TXT_IMAGE_DIR, pixel_std),
        WFLWSource("txt", root / "WFLW_annotations" / txt_name, root / TXT_IMAGE_DIR, pixel_std),
        WFLWSource("json", root / JSON_ANNOTATION_DIR / json_name, root / JSON_IMAGE_DIR, pixel_std),
    ]


def find_split(root: str | Path, split: str, pixel_std: float = DEFAULT_PIXEL_STD) -> WFLWSource:
    """Locate a split under a WFLW root in either layout (the official text form first).

    Official: <root>/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_<split>.txt
    with images in <root>/WFLW_images/. mmpose: <root>/annotations/face_landmarks_wflw_<split>.json
    with images in <root>/images/.
    """
    if split not in SPLITS:
        raise WFLWError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise WFLWError(f"WFLW root {root} is not a directory")
    candidates = candidate_sources(root, split, pixel_std)
    for source in candidates:
        if source.ann_file.is_file():
            if not source.img_dir.is_dir():
                raise WFLWError(f"found {source.ann_file} but its image folder {source.img_dir} "
                                "does not exist")
            return source
    looked = "\n  ".join(str(c.ann_file) for c in candidates)
    raise WFLWError(
        f"{root} does not look like a WFLW root: no {split} annotations found. Looked for\n  "
        f"{looked}\n(the official release unpacks WFLW_annotations/ and WFLW_images/ side by side; "
        "mmpose's form is annotations/*.json with images/)"
    )


def read_split(root: str | Path, split: str, check_images: bool = True,
               pixel_std: float = DEFAULT_PIXEL_STD) -> list[FaceRecord]:
    return find_split(root, split, pixel_std).read(check_images)
