"""Point sets and WFLW point names, against the iBUG/WFLW definitions and real annotations.

The 68-point list is rebuilt here from the iBUG semantic layout (jaw 17, brows 5+5, nose
bridge 4 + base 5, eyes 6+6, mouth 12 + 8) over WFLW's structures, not copied from the
module; the sample annotations then check the geometry the names promise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.pipeline.keypoints import (
    FLIP_PAIRS,
    KEYPOINT_NAMES,
    POINT_SETS,
    WFLW_GROUPS,
    point_set_groups,
    point_set_indices,
    point_set_names,
)
from tests.conftest import DATA


def _ibug68_from_wflw_structures() -> list[int]:
    contour = list(range(33))  # WFLW traces the jaw with 33 points, iBUG with 17
    right_brow_upper = [33, 34, 35, 36, 37]  # outer -> inner along the top edge
    left_brow_upper = [42, 43, 44, 45, 46]  # inner -> outer
    nose_bridge, nose_base = [51, 52, 53, 54], [55, 56, 57, 58, 59]
    # WFLW eyes: two corners and three points per lid; iBUG keeps the corners and the two
    # lid points nearest the corners (drops each lid's middle point).
    right_eye = {"outer": 60, "upper": [61, 62, 63], "inner": 64, "lower": [65, 66, 67]}
    left_eye = {"inner": 68, "upper": [69, 70, 71], "outer": 72, "lower": [73, 74, 75]}
    mouth_outer, mouth_inner = list(range(76, 88)), list(range(88, 96))

    def eye(first, second, e):
        return [e[first], e["upper"][0], e["upper"][-1], e[second], e["lower"][0], e["lower"][-1]]

    return (contour[::2] + right_brow_upper + left_brow_upper + nose_bridge + nose_base
            + eye("outer", "inner", right_eye) + eye("inner", "outer", left_eye)
            + mouth_outer + mouth_inner)


def _annotated_faces() -> list[np.ndarray]:
    """The four sample faces, each `[98, 2]`, rotated so the eyes lie on a horizontal line.

    In this frame +x runs from the image-left eye to the image-right eye and +y points down
    the face, whatever the head's roll in the photo.
    """
    ann = json.loads((DATA / "wflw_samples" / "test_wflw.json").read_text())
    faces = []
    for a in ann["annotations"]:
        points = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)[:, :2]
        axis = points[68:76].mean(0) - points[60:68].mean(0)
        angle = np.arctan2(axis[1], axis[0])
        rotation = np.array([[np.cos(-angle), -np.sin(-angle)], [np.sin(-angle), np.cos(-angle)]])
        faces.append(points @ rotation.T)
    assert len(faces) == 4
    return faces


FACES = _annotated_faces()


def test_wflw98_is_every_point_in_order():
    assert POINT_SETS["wflw98"] == tuple(range(98))
    np.testing.assert_array_equal(point_set_indices("wflw98"), np.arange(98))


def test_ibug68_is_the_standard_wflw_subset():
    expected = _ibug68_from_wflw_structures()
    assert len(expected) == 68 and len(set(expected)) == 68
    assert list(POINT_SETS["ibug68"]) == expected
    assert point_set_indices("ibug68").tolist() == expected


def test_five_is_pupils_nose_tip_and_mouth_corners():
    assert point_set_names("five") == ("right_pupil", "left_pupil", "nose_tip",
                                       "right_mouth_corner", "left_mouth_corner")
    assert point_set_indices("five").tolist() == [96, 97, 54, 76, 82]


@pytest.mark.parametrize("face", range(4))
def test_ibug68_landmarks_sit_where_the_ibug_layout_puts_them(face):
    p = FACES[face][point_set_indices("ibug68")]
    x, y = p[:, 0], p[:, 1]
    # nose tip: the lowest point of the bridge, iBUG 30
    assert int(np.argmax(y[27:31])) + 27 == 30
    # outer eye corners are the extreme eye points; inner corners face each other
    assert int(np.argmin(x[36:48])) + 36 == 36 and int(np.argmax(x[36:48])) + 36 == 45
    assert int(np.argmax(x[36:42])) + 36 == 39 and int(np.argmin(x[42:48])) + 42 == 42
    # mouth corners, brow ends, jaw ends
    assert int(np.argmin(x[48:60])) + 48 == 48 and int(np.argmax(x[48:60])) + 48 == 54
    assert int(np.argmin(x[17:27])) + 17 == 17 and int(np.argmax(x[17:27])) + 17 == 26
    # jaw: the chin (8) is the lowest jaw point, the ends (0, 16) the highest on either side
    assert int(np.argmax(y[0:17])) == 8 and x[0] < x[8] < x[16]
    assert int(np.argmin(y[0:8])) == 0 and int(np.argmin(y[9:17])) + 9 == 16
    # upper lids above lower lids, brows above eyes, mouth below the nose
    assert y[[37, 38]].max() < y[[40, 41]].min() and y[[43, 44]].max() < y[[46, 47]].min()
    assert y[17:27].mean() < y[36:48].mean() < y[31:36].mean() < y[48:68].mean()


@pytest.mark.parametrize("face", range(4))
def test_five_points_are_the_eyes_nose_and_mouth_corners(face):
    p = FACES[face][point_set_indices("five")]
    ibug = FACES[face][point_set_indices("ibug68")]
    # each pupil lies between its eye's corners
    assert ibug[36, 0] < p[0, 0] < ibug[39, 0] and ibug[42, 0] < p[1, 0] < ibug[45, 0]
    np.testing.assert_array_equal(p[2], ibug[30])
    np.testing.assert_array_equal(p[3:], ibug[[48, 54]])


def test_names_are_unique_and_meaningful():
    assert len(KEYPOINT_NAMES) == 98 and len(set(KEYPOINT_NAMES)) == 98
    assert not any(name.startswith("kpt") for name in KEYPOINT_NAMES)
    words = {"contour": ("contour",), "brows": ("brow",), "nose": ("nose",), "eyes": ("eye",),
             "mouth": ("lip", "mouth"), "pupils": ("pupil",)}
    for group, (start, stop) in WFLW_GROUPS.items():
        for name in KEYPOINT_NAMES[start:stop]:
            assert any(w in name for w in words[group]), (group, name)
    assert KEYPOINT_NAMES[54] == "nose_tip" and KEYPOINT_NAMES[60] == "right_eye_outer_corner"
    assert KEYPOINT_NAMES[96] == "right_pupil" and KEYPOINT_NAMES[97] == "left_pupil"


def test_mirror_partners_have_mirrored_names():
    paired = set()
    for a, b in FLIP_PAIRS:
        paired |= {a, b}
        if a < 33:
            continue
        swapped = KEYPOINT_NAMES[a].replace("right", "#").replace("left", "right").replace("#", "left")
        assert swapped == KEYPOINT_NAMES[b]
    for k in set(range(98)) - paired:
        assert "left" not in KEYPOINT_NAMES[k] and "right" not in KEYPOINT_NAMES[k]


@pytest.mark.parametrize("face", range(4))
def test_right_means_the_subjects_right_which_is_the_image_left(face):
    x = FACES[face][:, 0]
    for a, b in FLIP_PAIRS:
        if a < 33:
            continue
        right, left = (a, b) if KEYPOINT_NAMES[a].startswith("right") else (b, a)
        assert KEYPOINT_NAMES[right].startswith("right") and KEYPOINT_NAMES[left].startswith("left")
        assert x[right] < x[left], (KEYPOINT_NAMES[right], KEYPOINT_NAMES[left])


def test_numbered_names_count_from_the_outer_end():
    for face in FACES:
        x = face[:, 0]
        name = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
        for part in ("eye_upper", "eye_lower", "brow_lower"):
            k = range(1, 4) if part.startswith("eye") else range(1, 5)
            right = [x[name[f"right_{part}_{i}"]] for i in k]
            left = [x[name[f"left_{part}_{i}"]] for i in k]
            assert right == sorted(right) and left == sorted(left, reverse=True)


@pytest.mark.parametrize("set_name", sorted(POINT_SETS))
def test_names_and_groups_follow_the_set(set_name):
    indices = point_set_indices(set_name)
    assert point_set_names(set_name) == tuple(KEYPOINT_NAMES[i] for i in indices)
    groups = point_set_groups(set_name)
    covered = np.sort(np.concatenate(list(groups.values())))
    np.testing.assert_array_equal(covered, np.arange(len(indices)))
    for group, positions in groups.items():
        start, stop = WFLW_GROUPS[group]
        assert ((indices[positions] >= start) & (indices[positions] < stop)).all()
    if set_name == "five":
        assert sorted(groups) == ["mouth", "nose", "pupils"]


def test_unknown_point_set_is_a_value_error():
    with pytest.raises(ValueError, match="unknown point set 'dlib'"):
        point_set_indices("dlib")
    with pytest.raises(ValueError):
        point_set_names("")


def test_indices_are_a_fresh_array():
    point_set_indices("five")[:] = 0
    assert point_set_indices("five").tolist() == [96, 97, 54, 76, 82]
