"""Keypoint groups travel in the model's metadata; /model reads them from there."""

from __future__ import annotations

import pytest

from service.pipeline.config import METADATA_PREFIX, PipelineConfig


def test_groups_round_trip_through_metadata_and_old_files_get_wflw_groups():
    custom = PipelineConfig(keypoint_groups=(("face", 0, 90), ("eyes", 90, 98)))
    props = custom.to_metadata()
    assert PipelineConfig.from_metadata(props).groups == {"face": (0, 90), "eyes": (90, 98)}
    old = {k: v for k, v in PipelineConfig().to_metadata().items()
           if k != METADATA_PREFIX + "keypoint_groups"}
    groups = PipelineConfig.from_metadata(old).groups
    # WFLW's documented ranges (mmpose's wflw.py), written out independently here.
    assert groups == {"contour": (0, 33), "brows": (33, 51), "nose": (51, 60), "eyes": (60, 76),
                      "mouth": (76, 96), "pupils": (96, 98)}


def test_a_group_outside_the_keypoints_is_refused():
    props = PipelineConfig(keypoint_groups=(("face", 0, 120),)).to_metadata()
    with pytest.raises(ValueError, match="outside"):
        PipelineConfig.from_metadata(props)


def test_point_sets_of_a_model_with_another_layout():
    import numpy as np

    from service.pipeline.faces import face_records, served_point_indices

    assert served_point_indices("wflw98", 68).tolist() == list(range(68))
    with pytest.raises(ValueError, match="98-point"):
        served_point_indices("ibug68", 68)
    records = face_records(np.zeros((1, 68, 2)), np.ones((1, 68)), np.array([[0.0, 0, 10, 10]]))
    assert len(records[0]["landmarks"]) == 68 and records[0]["score"] == 1.0
