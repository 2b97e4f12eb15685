"""In-graph normalisation + flip test (`service.engine.graph`) against the host path, bit for bit.

The reference is the host pipeline itself: `normalize`, `flip_inputs`, `merge_flip` and two
runs of the plain network, all on onnxruntime CPU with ORT_ENABLE_ALL (as the service runs),
so an optimiser rewrite that changed the arithmetic (e.g. Div -> Mul by a reciprocal) would
show up as a mismatch.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.engine.graph import (
    CROPS_INPUT,
    HEATMAPS_OUTPUT,
    GraphWrapError,
    is_plain_landmark_model,
    wrap_model,
    wrap_refusal,
)
from service.pipeline.config import METADATA_PREFIX, PipelineConfig
from service.pipeline.dark import decode_heatmaps
from service.pipeline.flip import flip_inputs, merge_flip
from service.pipeline.preprocess import crop_faces, decode_image, normalize
from tests.service.conftest import SAMPLES

WFLW = PipelineConfig()  # real WFLW flip pairs, shift on, 256 -> 64


def config_with(**values) -> PipelineConfig:
    """A non-default config, built the way the service builds it: from metadata."""
    return PipelineConfig.from_metadata(
        {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()})


def plain_model(config: PipelineConfig = WFLW, input_name: str = "image",
                output_name: str = "out", batch="N", opset: int = 17,
                elem_type=TensorProto.FLOAT, seed: int = 0) -> onnx.ModelProto:
    """A small landmark-shaped network: Conv k=stride=input/heatmap, 3 -> K, random weights.

    Random (non-symmetric) weights make each output column depend on the input's left/right
    order, so a wrong mirror or pair swap cannot cancel out.
    """
    rng = np.random.default_rng(seed)
    width, height = config.input_size
    hm_w, hm_h = config.heatmap_size
    stride = width // hm_w
    k = config.num_keypoints
    weight = rng.normal(0, 0.3, (k, 3, stride, stride)).astype(np.float32)
    bias = rng.normal(0, 0.1, k).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "w", "b"], ["conv"], kernel_shape=[stride, stride],
                          strides=[stride, stride]),
         helper.make_node("Sigmoid", ["conv"], [output_name])],
        "plain_landmarks",
        [helper.make_tensor_value_info(input_name, elem_type, [batch, 3, height, width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, k, hm_h, hm_w])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    for key, value in {**config.to_metadata(), METADATA_PREFIX + "model_name": '"toy"'}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def runner(model):
    sess = session(model)
    name = sess.get_inputs()[0].name
    return lambda batch: sess.run(None, {name: batch})[0]


def random_crops(n: int, config: PipelineConfig = WFLW, seed: int = 1) -> np.ndarray:
    width, height = config.input_size
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def host_heatmaps(plain, crops: np.ndarray, config: PipelineConfig, flip_test: bool) -> np.ndarray:
    """Today's host path: normalise on the CPU, run the plain net, merge the flip on the CPU."""
    rows = normalize(crops, config.mean, config.std)
    if not flip_test:
        return plain(rows)
    return merge_flip(plain(rows), plain(flip_inputs(rows)), config.flip_pairs, config.shift_heatmap)


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("flip_test", [False, True])
def test_wrapped_heatmaps_equal_the_host_path_bit_for_bit(n, flip_test):
    model = plain_model()
    plain = runner(model)
    wrapped = runner(wrap_model(model, WFLW, flip_test=flip_test))
    crops = random_crops(n)
    got = wrapped(crops)
    want = host_heatmaps(plain, crops, WFLW, flip_test)
    assert got.dtype == np.float32 and got.shape == (n, 98, 64, 64)
    assert np.array_equal(got, want)
    if flip_test:  # the flip actually changes something here, so the check has teeth
        assert not np.array_equal(got, plain(normalize(crops, WFLW.mean, WFLW.std)))


def test_flip_without_shift_and_other_pairs_small_config():
    config = config_with(num_keypoints=4, input_size=[32, 32], heatmap_size=[8, 8],
                         flip_pairs=[[0, 3]], shift_heatmap=False,
                         mean=[0.5, 0.25, 0.125], std=[0.3, 0.7, 0.9],
                         keypoint_names=["a", "b", "c", "d"])
    model = plain_model(config)
    crops = random_crops(3, config)
    got = runner(wrap_model(model, config, flip_test=True))(crops)
    assert np.array_equal(got, host_heatmaps(runner(model), crops, config, flip_test=True))


def test_nchw_layout():
    model = plain_model()
    crops = random_crops(2)
    got = runner(wrap_model(model, WFLW, flip_test=True, layout="NCHW"))(
        np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
    assert np.array_equal(got, host_heatmaps(runner(model), crops, WFLW, flip_test=True))
    with pytest.raises(ValueError):
        wrap_model(model, WFLW, flip_test=True, layout="HWC")


def test_names_that_collide_with_the_wrappers_are_kept_apart():
    """The model's own input may be called `crops` and its output `heatmaps`."""
    model = plain_model(input_name=CROPS_INPUT, output_name=HEATMAPS_OUTPUT)
    crops = random_crops(2)
    sess = session(wrap_model(model, WFLW, flip_test=True))
    assert [i.name for i in sess.get_inputs()] == [CROPS_INPUT]
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    assert sess.get_inputs()[0].shape[1:] == [256, 256, 3]
    assert [o.name for o in sess.get_outputs()] == [HEATMAPS_OUTPUT]
    got = sess.run(None, {CROPS_INPUT: crops})[0]
    assert np.array_equal(got, host_heatmaps(runner(model), crops, WFLW, flip_test=True))


def test_metadata_is_copied_and_says_what_the_graph_does():
    model = plain_model()
    for flip_test in (False, True):
        wrapped = onnx.load_from_string(wrap_model(model.SerializeToString(), WFLW, flip_test))
        props = {p.key: p.value for p in wrapped.metadata_props}
        original = {p.key: p.value for p in model.metadata_props}
        changed = {k for k in original if props.get(k) != original[k]}
        assert changed <= {METADATA_PREFIX + "flip_test_in_graph"}
        assert json.loads(props[METADATA_PREFIX + "normalize_in_graph"]) is True
        assert json.loads(props[METADATA_PREFIX + "flip_test_in_graph"]) is flip_test
        assert json.loads(props[METADATA_PREFIX + "input_layout"]) == "NHWC"
        # The pipeline config still reads back (unknown keys ignored).
        config = PipelineConfig.from_metadata(props)
        assert config.flip_test_in_graph is flip_test and config.flip_pairs == WFLW.flip_pairs
        # Never wrapped twice.
        assert not is_plain_landmark_model(wrapped, config)
        with pytest.raises(GraphWrapError):
            wrap_model(wrapped, config, flip_test=True)


def test_models_that_are_not_plain_are_refused_with_a_reason():
    assert wrap_refusal(plain_model(), WFLW) is None
    cases = {
        "flip_test_in_graph": (plain_model(), config_with(flip_test_in_graph=True)),
        "not float32": (plain_model(elem_type=TensorProto.UINT8), WFLW),
        "fixed batch": (plain_model(batch=1), WFLW),
        "does not match": (plain_model(), config_with(input_size=[128, 128])),
        "opset": (plain_model(opset=9), WFLW),
    }
    for words, (model, config) in cases.items():
        reason = wrap_refusal(model, config)
        assert reason is not None and words in reason, (words, reason)
        assert not is_plain_landmark_model(model, config)


@pytest.mark.parametrize("flip_test", [False, True])
def test_real_tiny_hrnet_end_to_end_landmarks_identical(tiny_onnx, flip_test):
    """The exporter's own file (tiny HRNet: BN, Resize, branches) on real WFLW crops."""
    ann = json.loads((SAMPLES / "test_wflw.json").read_text())
    image = ann["images"][0]
    rgb = decode_image((SAMPLES / image["file_name"]).read_bytes(), 10**8)
    faces = [a for a in ann["annotations"] if a["image_id"] == image["id"]]
    x, y, w, h = faces[0]["bbox"]
    center = np.array([[x + w / 2, y + h / 2], [x + w / 2 + 7, y + h / 2 - 3]], np.float32)
    scale = np.array([[max(w, h) / 200 * 1.25] * 2, [max(w, h) / 160 * 1.25] * 2], np.float32)
    config = PipelineConfig.from_metadata(
        {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props})
    crops = crop_faces(rgb, center, scale, config.input_size)
    wrapped = runner(wrap_model(tiny_onnx, config, flip_test=flip_test))(crops)
    host = host_heatmaps(runner(onnx.load(str(tiny_onnx))), crops, config, flip_test)
    assert np.array_equal(wrapped, host)
    got = decode_heatmaps(wrapped, center, scale, config.modulate_kernel)
    want = decode_heatmaps(host, center, scale, config.modulate_kernel)
    for g, e in zip(got, want):
        assert np.array_equal(g, e)


@pytest.mark.slow
def test_full_size_hrnet_w18_flip_graph_is_bit_identical(w18_onnx):
    """The served architecture itself: onnxruntime's Conv+Add(+Relu) fusions must come out the
    same in the wrapped graph as in the plain file (they depend on the batch dimension being
    named), or the flip-merged heatmaps drift in the last bits."""
    proto = onnx.load(str(w18_onnx))
    config = PipelineConfig.from_metadata({p.key: p.value for p in proto.metadata_props})
    crops = random_crops(2, config, seed=3)
    wrapped = runner(wrap_model(proto, config, flip_test=True))(crops)
    assert np.array_equal(wrapped, host_heatmaps(runner(proto), crops, config, flip_test=True))


def test_both_served_graphs_pass_the_golden_check_and_a_broken_plain_graph_is_caught(tiny_onnx):
    """With preprocessing in the graph, flip_test=false requests go to a second graph: the
    start-up self-check covers it too (flip test done on the host around it)."""
    from service.engine.runtime import LandmarkRuntime
    from service.metrics import Metrics
    from tests.service.conftest import make_settings

    settings = make_settings(tiny_onnx, preprocess_in_graph=True)
    runtime = LandmarkRuntime(settings, Metrics())
    try:
        assert runtime.in_graph
        runtime.warm_up_and_check()
        assert runtime.readiness.state == "ready", runtime.readiness.reason
        # Same arithmetic as the flip graph (section 3 of the pipeline spec): exactly the record.
        assert runtime.readiness.golden["plain_graph_max_deviation_px"] == 0.0
    finally:
        runtime.stop()

    broken = LandmarkRuntime(settings, Metrics())
    try:
        plain = broken.runs[False]
        broken.runs[False] = lambda crops: np.roll(plain(crops), 3, axis=3)  # peaks 3 px off
        broken.warm_up_and_check()
        assert broken.readiness.state == "not_ready"
        assert "(plain graph)" in broken.readiness.reason, broken.readiness.reason
    finally:
        broken.stop()
