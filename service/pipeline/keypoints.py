"""The WFLW 98-point schema: names, semantic groups and left/right flip pairs.

Numbers come from mmpose's `configs/_base_/datasets/wflw.py` (keypoint names are simply
`kpt-0` .. `kpt-97`; the 44 flip pairs are what mmpose's DatasetInfo builds from its `swap`
names). The same pairs are stored in every exported ONNX file's metadata.
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 98

KEYPOINT_NAMES: tuple[str, ...] = tuple(f"kpt-{i}" for i in range(NUM_KEYPOINTS))

# Index ranges are half-open [start, stop).
WFLW_GROUPS: dict[str, tuple[int, int]] = {
    "contour": (0, 33),
    "brows": (33, 51),
    "nose": (51, 60),
    "eyes": (60, 76),
    "mouth": (76, 96),
    "pupils": (96, 98),
}

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


def flip_index(flip_pairs, num_keypoints: int) -> np.ndarray:
    """Permutation p with p[k] = the keypoint that k becomes under a horizontal mirror."""
    index = np.arange(num_keypoints)
    for a, b in flip_pairs:
        index[a], index[b] = b, a
    return index


def group_of(index: int) -> str:
    for name, (start, stop) in WFLW_GROUPS.items():
        if start <= index < stop:
            return name
    raise ValueError(f"keypoint {index} is outside the WFLW schema")
