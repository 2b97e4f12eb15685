"""NME, failure rate, CED and AUC against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from model_export import metrics


def _face(norm: float) -> np.ndarray:
    """98 points, outer eye corners 60 and 72 `norm` apart, the rest scattered."""
    gt = np.random.default_rng(0).uniform(0, 100, size=(98, 2))
    gt[60], gt[72] = (10.0, 20.0), (10.0 + norm, 20.0)
    return gt


def test_single_face_by_hand():
    gt = _face(10.0)[None]
    pred = gt.copy()
    pred[0, 0] += (3, 4)  # 5 px / 10 = 0.5
    pred[0, 1] += (0, -1)  # 0.1
    assert metrics.nme(pred, gt) == pytest.approx(0.6 / 98)
    errors, valid = metrics.keypoint_errors(pred, gt)
    assert errors.dtype == np.float32 and valid.all()
    assert errors[0, 0] == pytest.approx(0.5) and errors[0, 1] == pytest.approx(0.1)
    assert errors[0, 2] == 0


def test_normaliser_is_outer_eye_corners_60_72():
    gt = _face(20.0)[None]
    pred = gt.copy()
    pred[0, 60] += (0, 20)  # moving a corner in the prediction does not change the normaliser
    assert metrics.nme(pred, gt) == pytest.approx(1.0 / 98)
    pred = gt + (2.0, 0.0)  # every point 2 px off: 2 / 20
    assert metrics.nme(pred, gt) == pytest.approx(0.1)


def test_dataset_nme_is_sum_over_count_of_visible_points():
    gt = np.stack([_face(10.0), _face(20.0)])
    pred = gt.copy()
    pred[0, 0] += (3, 4)  # 0.5
    pred[0, 1] += (300, 400)  # invisible: ignored
    pred[1, 0] += (6, 8)  # 10 / 20 = 0.5
    visible = np.ones((2, 98))
    visible[0, 1] = 0
    # (0.5 + 0.5) / (97 + 98): a mean over (face, point) pairs, not over faces
    assert metrics.nme(pred, gt, visible) == pytest.approx(1.0 / 195)
    errors, valid = metrics.keypoint_errors(pred, gt, visible)
    assert errors[0, 1] == -1 and not valid[0, 1]
    np.testing.assert_allclose(metrics.per_face_nme(errors, valid), [0.5 / 97, 0.5 / 98])


def test_face_with_zero_normaliser_is_dropped():
    good, degenerate = _face(10.0), _face(10.0)
    degenerate[72] = degenerate[60]
    gt = np.stack([good, degenerate])
    pred = gt + (1.0, 0.0)  # 0.1 on the good face; the other would divide by 0
    assert metrics.nme(pred, gt) == pytest.approx(0.1)
    errors, valid = metrics.keypoint_errors(pred, gt)
    assert not valid[1].any()
    face = metrics.per_face_nme(errors, valid)
    assert face[0] == pytest.approx(0.1) and np.isnan(face[1])
    assert metrics.summarize(errors, valid)["faces"] == 1


def test_failure_rate_auc_ced_by_hand():
    face = np.array([0.02, 0.05, 0.2, np.nan])  # the NaN face has no valid point
    assert metrics.failure_rate(face) == pytest.approx(1 / 3)
    assert metrics.failure_rate([0.1, 0.1000001]) == 0.5  # strictly greater fails
    # area under the CED on [0, 0.1] = mean(max(0, 0.1 - e)) = (0.08 + 0.05 + 0) / 3
    assert metrics.auc(face) == pytest.approx((0.08 + 0.05) / 3 / 0.1)
    x, y = metrics.ced(face, 0.1, steps=11)
    np.testing.assert_allclose(x, np.linspace(0, 0.1, 11))
    np.testing.assert_allclose(y, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3,
                                   2 / 3])
    # the exact area agrees with a fine numerical integration of the CED
    x, y = metrics.ced(face, 0.1, steps=100001)
    assert np.trapezoid(y, x) / 0.1 == pytest.approx(metrics.auc(face), abs=1e-4)
    assert metrics.auc([0.0, 0.0]) == 1.0 and metrics.auc([0.3]) == 0.0


def test_summarize():
    gt = np.stack([_face(10.0), _face(10.0)])
    pred = gt.copy()
    pred[1] += (2.0, 0.0)  # face 1: NME 0.2 -> a failure
    errors, valid = metrics.keypoint_errors(pred, gt)
    s = metrics.summarize(errors, valid)
    assert s == pytest.approx({"faces": 2, "nme": 0.1, "failure_rate": 0.5, "auc": 0.5})


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        metrics.nme(np.zeros((1, 98, 2)), np.zeros((1, 97, 2)))
