"""Move normalisation and the flip test into the ONNX graph, at load time.

A plain landmark network takes float32 `[N, 3, H, W]` normalised RGB and returns float32
`[N, K, h, w]` heatmaps. `wrap_model` puts it inside a graph that takes the uint8 crops
`crop_faces` produces (`[N, H, W, 3]` RGB) and does on the device what the host did before:

    crops --Transpose(NCHW)--Cast(float32)--Div 255--Sub mean--Div std--> x
    flip_test=False:  heatmaps = net(x)
    flip_test=True:   y = net(Concat[x, mirror_W(x)])          (one run on 2N rows)
                      plain, flipped = y[:N], y[N:]
                      back = flipped[:, flip_index][..., shift_index]   (pair swap, mirror,
                                                                       one-column shift)
                      heatmaps = (back + plain) / 2

Every step is the same float32 operation, in the same order, as the host path
(`service.pipeline.preprocess.normalize`, `service.pipeline.flip.merge_flip`): normalisation
is elementwise (Div, Sub, Div; each correctly rounded like NumPy's), the transposes, mirrors,
pair swap and shift are pure data movement (Slice, Gather, Concat), and `(a + b) / 2`
is the same IEEE addition and halving. The heatmaps, hence the landmarks, are bit-identical
to the host path's; the host sends 4x fewer bytes (uint8, not float32) and receives one map
set per face instead of two.

Only plain networks are wrapped (`wrap_refusal` says why a file is not): a graph that
already flips (`flip_test_in_graph`) or normalises (`normalize_in_graph`) keeps the host
path, so nothing is applied twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.compose import add_prefix_graph

from service.pipeline.config import METADATA_PREFIX, PipelineConfig
from service.pipeline.keypoints import flip_index

CROPS_INPUT = "crops"
HEATMAPS_OUTPUT = "heatmaps"
LAYOUTS = ("NHWC", "NCHW")
MIN_OPSET = 11  # Slice with step inputs (10+) and the Gather/Reshape/Concat/Cast used here

# metadata_props keys the wrapped model carries (values JSON, like PipelineConfig's).
NORMALIZE_IN_GRAPH_KEY = METADATA_PREFIX + "normalize_in_graph"
FLIP_IN_GRAPH_KEY = METADATA_PREFIX + "flip_test_in_graph"
INPUT_LAYOUT_KEY = METADATA_PREFIX + "input_layout"
INPUT_DTYPE_KEY = METADATA_PREFIX + "input_dtype"

_NET_PREFIX = "net/"  # the original graph's names, kept apart from the wrapper's
_WRAP_PREFIX = "wrap/"


class GraphWrapError(ValueError):
    """The model cannot be wrapped (see `wrap_refusal`); serve it with the host path."""


ModelLike = bytes | str | Path | onnx.ModelProto


def load_model(model: ModelLike) -> onnx.ModelProto:
    """ModelProto from serialized bytes, a file path or a ModelProto (returned as is)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model))


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _meta_true(props: dict[str, str], key: str) -> bool:
    raw = props.get(key)
    if raw is None:
        return False
    try:
        return json.loads(raw) is True
    except json.JSONDecodeError:
        return raw.strip().lower() == "true"


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None] | None:
    """Fixed sizes (None where symbolic or unknown), or None if the rank is unknown."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (old exporters also list initializers as inputs)."""
    initializers = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in initializers]


def wrap_refusal(model: ModelLike, config: PipelineConfig) -> str | None:
    """Why `wrap_model` would refuse this model, or None if it can wrap it.

    Wrappable ("plain"): the config says no flip test in the graph, the metadata does not say
    normalisation is in the graph, opset >= 11, one float32 input `[N, 3, H, W]` with N
    dynamic and H, W as `config.input_size` says (or symbolic), and a float32 first output
    `[N, K, h, w]` matching `config.num_keypoints` / `config.heatmap_size` (or symbolic).
    """
    proto = load_model(model)
    props = _metadata(proto)
    if config.flip_test_in_graph or _meta_true(props, FLIP_IN_GRAPH_KEY):
        return "the graph already does the flip test (flip_test_in_graph)"
    if _meta_true(props, NORMALIZE_IN_GRAPH_KEY):
        return "the graph already normalises its input (normalize_in_graph)"
    opset = _default_opset(proto)
    if opset < MIN_OPSET:
        return f"opset {opset} < {MIN_OPSET} (upgrade it with onnx.version_converter)"
    graph = proto.graph
    inputs = _graph_inputs(graph)
    if len(inputs) != 1:
        return f"expected one input, found {len(inputs)}"
    if not graph.output:
        return "the graph has no output"
    width, height = config.input_size
    hm_w, hm_h = config.heatmap_size
    checks = (
        ("input", inputs[0], [3, height, width]),
        ("output", graph.output[0], [config.num_keypoints, hm_h, hm_w]),
    )
    for what, value_info, want in checks:
        if value_info.type.tensor_type.elem_type != TensorProto.FLOAT:
            kind = TensorProto.DataType.Name(value_info.type.tensor_type.elem_type)
            return f"{what} {value_info.name!r} is {kind}, not float32"
        dims = _dims(value_info)
        if dims is None or len(dims) != 4:
            return f"{what} {value_info.name!r} is not 4-D (shape {dims})"
        if dims[0] is not None:
            return f"{what} {value_info.name!r} has a fixed batch size {dims[0]}"
        if any(d is not None and d != w for d, w in zip(dims[1:], want)):
            return f"{what} {value_info.name!r} shape {dims} does not match [N, {want}]"
    return None


def is_plain_landmark_model(model: ModelLike, config: PipelineConfig) -> bool:
    """True if `wrap_model` can wrap this model (see `wrap_refusal` for the reason if not)."""
    return wrap_refusal(model, config) is None


def _network_value_info(net: onnx.GraphProto, flip_test: bool) -> list[onnx.ValueInfoProto]:
    """Shapes of the network's input and output inside the wrapper, batch dimension named.

    onnxruntime fuses Conv + residual Add (+ Relu) only where it can prove both operands have
    the same shape; a batch dimension it cannot name (Concat of N and N rows gives an unnamed
    one) blocks those fusions, and an unfused Add rounds differently. Naming the network's
    batch dimension keeps the optimised network, hence its bits, the same as the plain file's.
    The original's intermediate shape hints name the old batch and are dropped (with flip test
    the network sees 2N rows); onnxruntime infers them again.
    """
    batch = "N2" if flip_test else "N"
    infos = []
    for value in (_graph_inputs(net)[0], net.output[0]):
        dims = _dims(value)
        infos.append(helper.make_tensor_value_info(
            value.name, value.type.tensor_type.elem_type, [batch, *dims[1:]]))
    return infos


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(array, order="C"), _WRAP_PREFIX + name)  # keeps 0-d


def _normalise_nodes(layout: str, output: str, config: PipelineConfig):
    """uint8 crops -> float32 rows `output`, as `preprocess.normalize` computes them:
    cast, / 255, - mean, / std (mean/std rounded to float32 first, like its table)."""
    w = _WRAP_PREFIX
    initializers = [
        _const("255", np.array(255, np.float32)),
        _const("mean", np.asarray(config.mean, np.float32).reshape(1, 3, 1, 1)),
        _const("std", np.asarray(config.std, np.float32).reshape(1, 3, 1, 1)),
    ]
    nodes = []
    crops_nchw = CROPS_INPUT
    if layout == "NHWC":
        # Transposing the uint8 crops moves 4x fewer bytes than transposing floats.
        crops_nchw = w + "crops_nchw"
        nodes.append(helper.make_node("Transpose", [CROPS_INPUT], [crops_nchw],
                                      perm=[0, 3, 1, 2], name=w + "to_nchw"))
    nodes += [
        helper.make_node("Cast", [crops_nchw], [w + "float"], to=TensorProto.FLOAT, name=w + "cast"),
        helper.make_node("Div", [w + "float", w + "255"], [w + "unit"], name=w + "div255"),
        helper.make_node("Sub", [w + "unit", w + "mean"], [w + "centred"], name=w + "sub_mean"),
        helper.make_node("Div", [w + "centred", w + "std"], [output], name=w + "div_std"),
    ]
    return nodes, initializers


def _mirror_input_nodes(rows: str, net_input: str):
    """rows [N, 3, H, W] -> net_input [2N, 3, H, W]: the rows, then their mirror images.

    Mirrors are Slices with step -1 (data movement, exact; on CPU several times faster than a
    Gather with reversed indices along the last axis)."""
    w = _WRAP_PREFIX
    lowest = np.iinfo(np.int64).min  # Slice "through index 0" for a negative step
    initializers = [
        _const("last_axis", np.array([3], np.int64)),
        _const("step_back", np.array([-1], np.int64)),
        _const("from_end", np.array([-1], np.int64)),
        _const("through_start", np.array([lowest], np.int64)),
    ]
    nodes = [
        helper.make_node("Slice", [rows, w + "from_end", w + "through_start", w + "last_axis",
                                   w + "step_back"], [w + "mirrored"], name=w + "mirror_input"),
        helper.make_node("Concat", [rows, w + "mirrored"], [net_input], axis=0, name=w + "both_halves"),
    ]
    return nodes, initializers


def _merge_flip_nodes(net_output: str, config: PipelineConfig):
    """net_output [2N, K, h, w] -> HEATMAPS_OUTPUT [N, K, h, w], as `flip.merge_flip`: the
    second half's maps are flipped back (pair swap, mirror, one-column shift), added to the
    first half's and halved, in float32. Uses the constants of `_mirror_input_nodes`."""
    w = _WRAP_PREFIX
    hm_w, hm_h = config.heatmap_size
    keypoints = config.num_keypoints
    initializers = [
        _const("pairs_shape", np.array([2, -1, keypoints, hm_h, hm_w], np.int64)),
        _const("half_plain", np.array(0, np.int64)),
        _const("half_flipped", np.array(1, np.int64)),
        _const("flip_index", flip_index(config.flip_pairs, keypoints).astype(np.int64)),
        _const("2", np.array(2, np.float32)),
    ]
    nodes = [
        # [2N, K, h, w] -> [2, N, K, h, w]: the first N rows are the plain crops.
        helper.make_node("Reshape", [net_output, w + "pairs_shape"], [w + "halves"],
                         name=w + "split_halves"),
        helper.make_node("Gather", [w + "halves", w + "half_plain"], [w + "plain"], axis=0,
                         name=w + "take_plain"),
        helper.make_node("Gather", [w + "halves", w + "half_flipped"], [w + "flipped"],
                         axis=0, name=w + "take_flipped"),
        # Pair swap: channel a takes channel b's map (whole maps move: fast Gather).
        helper.make_node("Gather", [w + "flipped", w + "flip_index"], [w + "swapped"],
                         axis=1, name=w + "swap_pairs"),
    ]
    if config.shift_heatmap:
        # Mirror then shift one column right, column 0 keeping its own mirrored value:
        # back[..., 0] = F[..., w-1] and back[..., j] = F[..., w-j] for j >= 1, i.e.
        # Concat(F[..., w-1:w], F[..., w-1:0:-1]).
        initializers += [
            _const("col_last", np.array([hm_w - 1], np.int64)),
            _const("col_end", np.array([hm_w], np.int64)),
            _const("col_first", np.array([0], np.int64)),
        ]
        nodes += [
            helper.make_node("Slice", [w + "swapped", w + "col_last", w + "col_end",
                                       w + "last_axis"], [w + "back_col0"], name=w + "back_column0"),
            helper.make_node("Slice", [w + "swapped", w + "col_last", w + "col_first",
                                       w + "last_axis", w + "step_back"], [w + "back_rest"],
                             name=w + "back_columns"),
            helper.make_node("Concat", [w + "back_col0", w + "back_rest"], [w + "back"],
                             axis=3, name=w + "mirror_shift_back"),
        ]
    else:
        nodes.append(helper.make_node(
            "Slice", [w + "swapped", w + "from_end", w + "through_start", w + "last_axis",
                      w + "step_back"], [w + "back"], name=w + "mirror_back"))
    nodes += [
        # merge_flip: back += plain; back /= 2 (float32).
        helper.make_node("Add", [w + "back", w + "plain"], [w + "sum"], name=w + "add"),
        helper.make_node("Div", [w + "sum", w + "2"], [HEATMAPS_OUTPUT], name=w + "half"),
    ]
    return nodes, initializers


def _wrapped_metadata(original: onnx.ModelProto, flip_test: bool, layout: str) -> dict[str, str]:
    props = _metadata(original)
    props[NORMALIZE_IN_GRAPH_KEY] = json.dumps(True)
    props[FLIP_IN_GRAPH_KEY] = json.dumps(bool(flip_test))
    props[INPUT_LAYOUT_KEY] = json.dumps(layout)
    props[INPUT_DTYPE_KEY] = json.dumps("uint8")
    return props


def wrap_model(model: ModelLike, config: PipelineConfig, flip_test: bool,
               layout: str = "NHWC") -> bytes:
    """Plain landmark network -> serialized ModelProto taking uint8 crops.

    Input `crops` uint8 `[N, H, W, 3]` RGB (layout "NHWC", as `crop_faces` returns them) or
    `[N, 3, H, W]` (layout "NCHW"); output `heatmaps` float32 `[N, K, h, w]`, flip-merged
    when `flip_test` (pairs `config.flip_pairs`, shift `config.shift_heatmap`). Bit-identical
    to `merge_flip(net(normalize(crops)), net(flip_inputs(normalize(crops))))` (or
    `net(normalize(crops))` without flip). Raises GraphWrapError for a model that is not
    plain (`wrap_refusal`). The metadata is the original's plus `normalize_in_graph`,
    `flip_test_in_graph`, `input_layout` and `input_dtype`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    original = load_model(model)
    reason = wrap_refusal(original, config)
    if reason is not None:
        raise GraphWrapError(f"cannot wrap this model: {reason}")

    net = add_prefix_graph(original.graph, _NET_PREFIX)
    net_input = _graph_inputs(net)[0].name
    net_output = net.output[0].name
    if flip_test:
        rows = _WRAP_PREFIX + "normalised"
        pre, initializers = _normalise_nodes(layout, rows, config)
        mirror, mirror_consts = _mirror_input_nodes(rows, net_input)
        post, merge_consts = _merge_flip_nodes(net_output, config)
        pre, initializers = pre + mirror, initializers + mirror_consts + merge_consts
    else:
        pre, initializers = _normalise_nodes(layout, net_input, config)
        post = [helper.make_node("Identity", [net_output], [HEATMAPS_OUTPUT], name=_WRAP_PREFIX + "output")]

    width, height = config.input_size
    hm_w, hm_h = config.heatmap_size
    crops_shape = ["N", height, width, 3] if layout == "NHWC" else ["N", 3, height, width]
    graph = helper.make_graph(
        nodes=[*pre, *net.node, *post],
        name=(original.graph.name or "landmarks") + "_uint8" + ("_flip" if flip_test else ""),
        inputs=[helper.make_tensor_value_info(CROPS_INPUT, TensorProto.UINT8, crops_shape)],
        outputs=[helper.make_tensor_value_info(HEATMAPS_OUTPUT, TensorProto.FLOAT,
                                               ["N", config.num_keypoints, hm_h, hm_w])],
        initializer=[*initializers, *net.initializer],
        value_info=_network_value_info(net, flip_test),
    )
    graph.sparse_initializer.extend(net.sparse_initializer)
    wrapped = helper.make_model(
        graph,
        opset_imports=list(original.opset_import),
        producer_name="service.engine.graph",
        # Initializers that are not graph inputs need IR version 4 or later.
        ir_version=max(original.ir_version, 4),
    )
    wrapped.functions.extend(original.functions)
    wrapped.model_version = original.model_version
    wrapped.doc_string = original.doc_string
    for key, value in _wrapped_metadata(original, flip_test, layout).items():
        entry = wrapped.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(wrapped)
    return wrapped.SerializeToString()
