"""ONNX export: fp32 graph, optional CUDA-targeted fp16 variant, parity checks, metadata.

The ONNX file is the contract with the service: input `input` float32 `[N,3,H,W]`, output
`heatmaps` float32 `[N,K,H/4,W/4]`, N dynamic, and `metadata_props` holding what the
service must not guess (see `service.pipeline.config.PipelineConfig`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.pipeline.config import METADATA_PREFIX, PipelineConfig

from . import __version__
from .model import LandmarkModel

INPUT_NAME = "input"
OUTPUT_NAME = "heatmaps"
DEFAULT_OPSET = 17
# fp32 parity: max |ORT - torch| must stay within this fraction of the heatmap value range.
FP32_TOLERANCE = 1e-4


@dataclass
class ExportReport:
    path: Path
    seconds: float
    size_bytes: int
    max_abs_diff: float | None = None
    heatmap_range: float | None = None
    fp16_path: Path | None = None
    fp16_size_bytes: int | None = None
    fp16_note: str = ""
    extra: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s"]
        if self.max_abs_diff is not None:
            rel = self.max_abs_diff / max(self.heatmap_range, 1e-12)
            out.append(
                f"onnxruntime vs PyTorch: max abs diff {self.max_abs_diff:.3g} "
                f"(heatmap range {self.heatmap_range:.3g}, relative {rel:.2g}, "
                f"tolerance {FP32_TOLERANCE:g})"
            )
        if self.fp16_path is not None:
            out.append(f"wrote {self.fp16_path} ({self.fp16_size_bytes / 1e6:.1f} MB)")
        if self.fp16_note:
            out.append(self.fp16_note)
        return out


class ExportError(RuntimeError):
    pass


def provenance(trained: bool, checkpoint_sha256: str | None, arch: str, precision: str,
               extra: dict | None = None) -> dict[str, str]:
    """metadata_props beyond the pipeline config: where the weights came from and how."""
    versions = {
        "model_export": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    props = {
        "model_name": "hrnetv2_w18_wflw_256x256_dark" if arch == "hrnetv2_w18" else arch,
        "arch": arch,
        "trained": trained,
        "source_checkpoint_sha256": checkpoint_sha256 or "",
        "precision": precision,
        "exporter": f"torch.onnx.export (TorchScript), opset {DEFAULT_OPSET}",
        "versions": versions,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    props.update(extra or {})
    return {METADATA_PREFIX + k: json.dumps(v) for k, v in props.items()}


def write_metadata(model_proto: onnx.ModelProto, props: dict[str, str]) -> None:
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_fp32(model: LandmarkModel, output: str | Path, config: PipelineConfig,
                props: dict[str, str], opset: int = DEFAULT_OPSET) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    width, height = config.input_size
    dummy = torch.zeros(1, 3, height, width)
    model = model.eval()
    tmp = output.with_name(output.name + ".tmp")
    with torch.no_grad():
        # The TorchScript exporter writes one self-contained file and needs no onnxscript.
        torch.onnx.export(
            model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    write_metadata(proto, config.to_metadata())
    write_metadata(proto, props)
    onnx.save(proto, str(tmp))
    tmp.replace(output)
    return output


def cpu_session(path: str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_against_torch(path: str | Path, model: LandmarkModel, config: PipelineConfig,
                         batch: int = 2, seed: int = 0) -> tuple[float, float]:
    """Run ORT (CPU) and PyTorch on the same random inputs; return (max abs diff, value range)."""
    width, height = config.input_size
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    got = cpu_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    if got.shape != expected.shape:
        raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    value_range = float(expected.max() - expected.min())
    if diff > FP32_TOLERANCE * max(value_range, 1e-12):
        raise ExportError(
            f"ONNX export disagrees with PyTorch: max abs diff {diff:.3g} exceeds "
            f"{FP32_TOLERANCE:g} of the heatmap range {value_range:.3g}"
        )
    return diff, value_range


def add_golden_record(path: str | Path, config: PipelineConfig) -> dict:
    """Store the landmarks this file gives on the service's golden input (CPU, fp32), so the
    service can re-check them on whatever provider it gets (see service.engine.golden)."""
    from service.engine.golden import make_golden_record

    session = cpu_session(path)
    record = make_golden_record(lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], config)
    proto = onnx.load(str(path))
    write_metadata(proto, {METADATA_PREFIX + "golden": json.dumps(record)})
    onnx.save(proto, str(path))
    return record


def convert_fp16(fp32_path: str | Path, fp16_path: str | Path) -> Path:
    """Half-precision weights and activations for CUDA, float32 I/O kept.

    Kept in float32: Resize (onnxconverter-common's default block list; fp16 resize drifts)
    and the last conv, which produces the heatmaps that DARK takes the log of; its fp16
    rounding would move sub-pixel peaks.
    """
    from onnxconverter_common import float16

    proto = onnx.load(str(fp32_path))
    output_producers = [n.name for n in proto.graph.node if OUTPUT_NAME in n.output]
    proto16 = float16.convert_float_to_float16(
        proto, keep_io_types=True, node_block_list=output_producers,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
    )
    _keep_float32_outputs(proto16)
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_PREFIX + "precision"] = json.dumps("fp16")
    del proto16.metadata_props[:]
    write_metadata(proto16, props)
    onnx.checker.check_model(proto16)
    onnx.save(proto16, str(fp16_path))
    return Path(fp16_path)


def _keep_float32_outputs(proto: onnx.ModelProto) -> None:
    """onnxconverter-common casts a blocked (fp32) node's output to fp16 and then declares the
    graph output fp16 even with keep_io_types. Drop such casts so the output stays float32."""
    graph = proto.graph
    outputs = {o.name: o for o in graph.output}
    for node in list(graph.node):
        if node.op_type != "Cast" or node.output[0] not in outputs:
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        if to != onnx.TensorProto.FLOAT16:
            continue
        producer = next(n for n in graph.node if node.input[0] in n.output)
        producer.output[list(producer.output).index(node.input[0])] = node.output[0]
        graph.node.remove(node)
        outputs[node.output[0]].type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def compare_fp16(fp32_path: str | Path, fp16_path: str | Path, config: PipelineConfig,
                 batch: int = 4, seed: int = 0) -> str:
    """fp16 vs fp32 on the best available provider: heatmap deviation on random inputs, and
    the landmark shift on the golden input (the same check the service runs at start-up)."""
    from service.engine.golden import GoldenCheckError, run_golden_check
    from service.engine.session import open_session

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        s32, _ = open_session(Path(fp32_path), providers)
        s16, info16 = open_session(Path(fp16_path), providers)
    except Exception as exc:  # e.g. a provider without fp16 kernels
        return f"fp16 deviation not measured: cannot create a session here ({str(exc)[:160]})"
    where = info16.provider
    if where == "CPUExecutionProvider":
        where += " (no CUDA here; fp16 targets CUDA, so this is indicative only)"
    width, height = config.input_size
    x = np.random.default_rng(seed).standard_normal((batch, 3, height, width), dtype=np.float32)
    h32 = s32.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    h16 = s16.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    heat = float(np.abs(h32 - h16).max()) / max(float(h32.max() - h32.min()), 1e-12)
    run16 = lambda rows: s16.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]  # noqa: E731
    try:
        golden = run_golden_check(run16, info16, tolerance_px=float("inf"))
        shift = (f"max landmark shift {golden.get('max_deviation_px')} px over "
                 f"{golden.get('points_checked', 0)} clear-peak keypoints of the golden input")
    except GoldenCheckError as exc:
        shift = str(exc)
    return f"fp16 vs fp32 on {where}: max heatmap diff {heat:.2g} of the range; {shift}"
