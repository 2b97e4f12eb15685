"""The WFLW 98-point schema: names, semantic groups, left/right flip pairs and point sets.

Groups and flip pairs come from mmpose's `configs/_base_/datasets/wflw.py` (the 44 flip
pairs are what mmpose's DatasetInfo builds from its `swap` names; they are also stored in
every exported ONNX file's metadata). mmpose itself calls the points `kpt-0` .. `kpt-97`;
the names here describe what each WFLW point marks (Wu et al., "Look at Boundary", CVPR
2018, annotation figure), checked against the sample annotations in
`tests/data/wflw_samples`.

Left and right are the SUBJECT's, as in mmpose's COCO keypoints (`left_eye`) and in the
iBUG 68-point scheme (points 36-41 are the subject's right eye): on a frontal, upright
face the subject's right side appears on the IMAGE's left. WFLW numbers every left/right
structure starting from the image's left, so index 0 is on the subject's right cheek,
60 is the subject's right eye's outer corner and 96 is the subject's right pupil.
Numbered names (`_upper_1`, `_lower_1`, ...) count from the outer end of the structure,
so that every flip pair (a, b) outside the contour has the same name with `right` and
`left` exchanged (contour points are numbered 00-32 along the outline).
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 98

# Index ranges are half-open [start, stop).
WFLW_GROUPS: dict[str, tuple[int, int]] = {
    "contour": (0, 33),
    "brows": (33, 51),
    "nose": (51, 60),
    "eyes": (60, 76),
    "mouth": (76, 96),
    "pupils": (96, 98),
}


def _wflw_names() -> tuple[str, ...]:
    # Contour: 0 (subject's right, beside the ear) down to the chin at 16, up to 32.
    names = [f"contour_{i:02d}" for i in range(33)] + [""] * (NUM_KEYPOINTS - 33)
    for side, upper, inner, lower in (
        # Subject's right brow (image left): 33 outer .. 37 inner along the top edge, then
        # back along the bottom edge from 38 (inner) to 41 (outer).
        ("right", (33, 34, 35, 36), 37, (41, 40, 39, 38)),
        # Subject's left brow (image left to right again): 42 inner .. 46 outer on top,
        # 47 (outer) .. 50 (inner) below.
        ("left", (46, 45, 44, 43), 42, (47, 48, 49, 50)),
    ):
        names[upper[0]] = f"{side}_brow_outer_corner"
        for k, index in enumerate(upper[1:], start=1):
            names[index] = f"{side}_brow_upper_{k}"
        names[inner] = f"{side}_brow_inner_corner"
        for k, index in enumerate(lower, start=1):
            names[index] = f"{side}_brow_lower_{k}"
    names[51:55] = ["nose_bridge_1", "nose_bridge_2", "nose_bridge_3", "nose_tip"]
    names[55:60] = ["right_nose_base_outer", "right_nose_base_inner", "nose_base_center",
                    "left_nose_base_inner", "left_nose_base_outer"]
    for side, outer, upper, inner, lower in (
        # 60 outer corner, 61-63 upper lid towards the nose, 64 inner corner, 65-67 lower lid
        # back to the outer corner.
        ("right", 60, (61, 62, 63), 64, (67, 66, 65)),
        # 68 inner corner, 69-71 upper lid outwards, 72 outer corner, 73-75 lower lid back.
        ("left", 72, (71, 70, 69), 68, (73, 74, 75)),
    ):
        names[outer] = f"{side}_eye_outer_corner"
        names[inner] = f"{side}_eye_inner_corner"
        for k, (up, low) in enumerate(zip(upper, lower), start=1):
            names[up] = f"{side}_eye_upper_{k}"
            names[low] = f"{side}_eye_lower_{k}"
    # Outer lip line: 76 right corner, 77-81 upper lip to 82 left corner, 83-87 lower lip back.
    names[76:88] = ["right_mouth_corner", "right_upper_lip_outer_1", "right_upper_lip_outer_2",
                    "upper_lip_outer_center", "left_upper_lip_outer_2", "left_upper_lip_outer_1",
                    "left_mouth_corner", "left_lower_lip_outer_1", "left_lower_lip_outer_2",
                    "lower_lip_outer_center", "right_lower_lip_outer_2", "right_lower_lip_outer_1"]
    # Inner lip line: 88 right inner corner, 89-91 upper, 92 left inner corner, 93-95 lower.
    names[88:96] = ["right_mouth_inner_corner", "right_upper_lip_inner", "upper_lip_inner_center",
                    "left_upper_lip_inner", "left_mouth_inner_corner", "left_lower_lip_inner",
                    "lower_lip_inner_center", "right_lower_lip_inner"]
    names[96:98] = ["right_pupil", "left_pupil"]
    assert all(names) and len(set(names)) == NUM_KEYPOINTS
    return tuple(names)


KEYPOINT_NAMES: tuple[str, ...] = _wflw_names()

FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    # face contour
    *((i, 32 - i) for i in range(16)),
    # brows
    (33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47),
    # nose
    (55, 59), (56, 58),
    # eyes
    (60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73),
    # mouth
    (76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95),
    # pupils
    (96, 97),
)

# Outer eye corners: mmpose's inter-ocular NME normaliser for WFLW.
NME_NORM_INDICES: tuple[int, int] = (60, 72)

# Point sets a client can ask for: WFLW indices, in the order the response lists them.
POINT_SETS: dict[str, tuple[int, ...]] = {
    "wflw98": tuple(range(NUM_KEYPOINTS)),
    # The usual WFLW -> iBUG/300-W 68-point subset: every other contour point, the upper
    # edge of each brow, the whole nose, six points per eye (corners and two per lid) and
    # the whole mouth.
    "ibug68": (
        *range(0, 33, 2),
        *range(33, 38), *range(42, 47),
        *range(51, 60),
        60, 61, 63, 64, 65, 67,
        68, 69, 71, 72, 73, 75,
        *range(76, 96),
    ),
    # The five points face-recognition alignment uses (insightface/ArcFace order): the
    # image-left eye, the image-right eye, nose tip, image-left and image-right mouth corner.
    "five": (96, 97, 54, 76, 82),
}


def point_set_indices(name: str) -> np.ndarray:
    """WFLW indices of a point set, int64 `[K]` (a fresh array; callers may keep it)."""
    try:
        return np.array(POINT_SETS[name], dtype=np.int64)
    except KeyError:
        raise ValueError(f"unknown point set {name!r}; expected one of {sorted(POINT_SETS)}") from None


def point_set_names(name: str) -> tuple[str, ...]:
    """The WFLW names of the points of a set, in the set's order."""
    return tuple(KEYPOINT_NAMES[i] for i in point_set_indices(name))


def point_set_groups(name: str) -> dict[str, np.ndarray]:
    """For each WFLW group, the positions (int64 `[k]`) *within the set* of its points.

    Groups with no point in the set are left out (`five` has no contour, brows or eyes).
    """
    indices = point_set_indices(name)
    groups = {}
    for group, (start, stop) in WFLW_GROUPS.items():
        positions = np.flatnonzero((indices >= start) & (indices < stop))
        if positions.size:
            groups[group] = positions
    return groups


def flip_index(flip_pairs, num_keypoints: int) -> np.ndarray:
    """Permutation p with p[k] = the keypoint that k becomes under a horizontal mirror."""
    index = np.arange(num_keypoints)
    for a, b in flip_pairs:
        index[a], index[b] = b, a
    return index
