"""Export: an mmpose-format checkpoint round-trips to ONNX that matches PyTorch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model_export.checkpoint import save_mmpose_checkpoint
from model_export.cli import main
from model_export.export import Provenance, convert_fp16, export_onnx, read_metadata
from model_export.model import build_model, randomize_for_demo
from service.pipeline.config import HeatmapCodec, PipelineConfig


@pytest.fixture(scope="module")
def w18_checkpoint_and_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    model = build_model("hrnetv2_w18")
    randomize_for_demo(model, seed=7)
    ckpt = save_mmpose_checkpoint(model, tmp / "w18.pth", meta={"epoch": 60})
    out = tmp / "w18.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    return model.eval(), ckpt, out


def test_onnx_matches_pytorch_on_random_inputs(w18_checkpoint_and_onnx):
    model, _, path = w18_checkpoint_and_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # N is dynamic
        x = np.random.default_rng(batch).standard_normal((batch, 3, 256, 256), dtype=np.float32)
        got = session.run(["heatmaps"], {"input": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 98, 64, 64) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())


def test_io_contract_and_opset(w18_checkpoint_and_onnx):
    _, _, path = w18_checkpoint_and_onnx
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "heatmaps"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == [3, 256, 256] and isinstance(dims[0], str)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)


def test_metadata_records_provenance_and_pipeline(w18_checkpoint_and_onnx):
    _, ckpt, path = w18_checkpoint_and_onnx
    meta = read_metadata(path)
    config = PipelineConfig.from_metadata(meta)
    assert config == PipelineConfig()  # WFLW defaults: 98 points, 256/64, ImageNet mean/std
    assert json.loads(meta["landmarks.flip_pairs"])[27] == [60, 72]
    assert json.loads(meta["landmarks.color_order"]) == "RGB"
    assert json.loads(meta["landmarks.trained"]) is True
    assert json.loads(meta["landmarks.source_checkpoint_sha256"]) == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    versions = json.loads(meta["landmarks.versions"])
    assert versions["torch"] == torch.__version__ and versions["onnx"] == onnx.__version__
    assert "opset 17" in json.loads(meta["landmarks.exporter"])


def test_random_init_export_is_marked_untrained(tiny_onnx):
    meta = read_metadata(tiny_onnx)
    assert json.loads(meta["landmarks.trained"]) is False
    assert json.loads(meta["landmarks.source_checkpoint_sha256"]) == ""


def test_fp16_variant_keeps_float32_io_and_sensitive_ops(tiny_onnx, tmp_path):
    path16 = convert_fp16(tiny_onnx, tmp_path / "tiny_fp16.onnx")
    proto = onnx.load(str(path16))
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kinds = {i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds
    # The conv that writes the heatmaps runs in fp32: its weights stay float32.
    inits = {i.name: i for i in proto.graph.initializer}
    (last,) = [n for n in proto.graph.node if "heatmaps" in n.output or
               any(o.startswith("heatmaps") for o in n.output)]
    assert inits[last.input[1]].data_type == onnx.TensorProto.FLOAT
    assert json.loads(read_metadata(path16)["landmarks.precision"]) == "fp16"
    assert path16.stat().st_size < tiny_onnx.stat().st_size


def test_export_function_api_writes_config_and_provenance(tmp_path):
    model = build_model("hrnetv2_tiny")
    randomize_for_demo(model, seed=3)
    config = PipelineConfig(codec=HeatmapCodec(sigma=3.0))
    result = export_onnx(model, tmp_path / "m.onnx", config=config,
                         provenance=Provenance(trained=False, source="unit test",
                                               extra={"note": "x"}))
    assert result.path == tmp_path / "m.onnx" and result.size_bytes == result.path.stat().st_size
    assert result.relative_diff <= 1e-4 and result.fp16_path is None
    meta = read_metadata(result.path)
    assert PipelineConfig.from_metadata(meta) == config
    assert json.loads(meta["landmarks.model_name"]) == "hrnetv2_tiny_untrained"
    assert json.loads(meta["landmarks.source"]) == "unit test"
    assert json.loads(meta["landmarks.note"]) == "x"
    assert len(json.loads(meta["landmarks.golden"])["points"]) == result.golden_points
