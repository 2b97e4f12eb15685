"""A model whose heatmaps hold NaN or flat maps (e.g. an fp16 overflow): the answer still
conforms to the documented response schema, with null scores where JSON has no number."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.api.schemas import LandmarksResponse
from service.pipeline.config import PipelineConfig
from tests.service.conftest import post_image

NAN_POINT, FLAT_POINT = 5, 6


def _constant_model(path, config: PipelineConfig):
    """input [N, 3, H, W] -> the same heatmap stack for every row: Gaussian peaks, except one
    map of NaN and one perfectly flat map."""
    k = config.num_keypoints
    w, h = config.heatmap_size
    yy, xx = np.mgrid[0:h, 0:w]
    peaks = np.stack([10 + (np.arange(k) * 7) % 44, 12 + (np.arange(k) * 5) % 40], axis=1)
    maps = np.exp(-((xx[None] - peaks[:, 0, None, None]) ** 2 + (yy[None] - peaks[:, 1, None, None]) ** 2) / 8.0)
    maps = (0.05 + 0.8 * maps).astype(np.float32)
    maps[NAN_POINT] = np.nan
    maps[FLAT_POINT] = 0.3
    width, height = config.input_size
    graph = helper.make_graph(
        [helper.make_node("Shape", ["input"], ["shape"]),
         helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
         helper.make_node("Concat", ["batch", "dims"], ["out_shape"], axis=0),
         helper.make_node("Expand", ["stack", "out_shape"], ["heatmaps"])],
        "constant_with_nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", k, h, w])],
        [numpy_helper.from_array(maps[None], "stack"),
         numpy_helper.from_array(np.array([0], np.int64), "zero"),
         numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.array([k, h, w], np.int64), "dims")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, config.to_metadata())
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("flip", ["true", "false"])
def test_nan_and_flat_heatmaps_answer_nulls_that_the_schema_allows(app_client, sample, tmp_path, flip):
    client = app_client(model=_constant_model(tmp_path / "nan.onnx", PipelineConfig()))
    response = post_image(client, sample["bytes"], [sample["bbox"]], flip_test=flip)
    assert response.status_code == 200, response.text
    raw = response.text
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON
    body = json.loads(raw)
    LandmarksResponse.model_validate(body)  # what is sent is what the schema says
    face = body["faces"][0]
    # With the flip test a NaN map also poisons its mirror partner (contour 5 <-> 27).
    nan_points = {NAN_POINT, 32 - NAN_POINT} if flip == "true" else {NAN_POINT}
    assert face["score"] is None
    for i, (point, score) in enumerate(zip(face["landmarks"], face["scores"])):
        # The point's coordinates stay numbers (the schema's promise); its null score is what
        # says they mean nothing.
        assert all(isinstance(v, float) for v in point), i
        assert (score is None) == (i in nan_points), i
    if flip == "false":
        assert face["scores"][FLAT_POINT] == pytest.approx(0.3, abs=1e-6)
