"""ONNX export: fp32 graph, optional CUDA-targeted fp16 variant, parity checks, metadata.

The ONNX file is the contract with the service: input `input` float32 `[N,3,H,W]`, output
`heatmaps` float32 `[N,K,H/4,W/4]`, N dynamic, and `metadata_props` holding what the
service must not guess (see `service.pipeline.config.PipelineConfig`, whose `HeatmapCodec`
carries the training sigma and the DARK kernel that goes with it).

`export_onnx` is the API; the `export` command and training's `--export` call it.
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


class ExportError(RuntimeError):
    """The exported graph does not do what the PyTorch model does; the message says how."""


@dataclass(frozen=True)
class Provenance:
    """Where the exported weights came from (written into the ONNX metadata).

    trained: False for random-init demo weights (the model name then says "untrained");
    source: the checkpoint path/URL, or "random-init"; checkpoint_sha256: of that file.
    """

    trained: bool
    source: str
    checkpoint_sha256: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote and measured."""

    path: Path
    seconds: float  # fp32 export time
    size_bytes: int
    max_abs_diff: float  # onnxruntime (CPU) vs PyTorch on random inputs
    heatmap_range: float  # max - min of the PyTorch heatmaps on those inputs
    golden_points: int  # clear-peak keypoints recorded for the service's start-up self-check
    fp16_path: Path | None = None
    fp16_comparison: str | None = None  # fp16 vs fp32 deviation, in words

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.heatmap_range, 1e-12)

    def summary(self) -> list[str]:
        """Human-readable lines for the command line."""
        lines = [
            f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s",
            (f"onnxruntime vs PyTorch: max abs diff {self.max_abs_diff:.3g} over heatmap range "
             f"{self.heatmap_range:.3g} (relative {self.relative_diff:.2g})"),
            f"golden self-check data: {self.golden_points} keypoints with a clear peak recorded",
        ]
        if self.fp16_path is not None:
            size = self.fp16_path.stat().st_size / 1e6
            lines += [f"wrote {self.fp16_path} ({size:.1f} MB)", self.fp16_comparison or ""]
        return lines


def model_name(arch: str, trained: bool) -> str:
    """The name the service reports: mmpose's config name for HRNetV2-W18, else the arch;
    random-init weights are always called untrained."""
    name = "hrnetv2_w18_wflw_256x256_dark" if arch == "hrnetv2_w18" else arch
    return name if trained else f"{name}_untrained"


def export_onnx(model: LandmarkModel, output: str | Path, *, config: PipelineConfig,
                provenance: Provenance, fp16: bool = False, fp16_output: str | Path | None = None,
                opset: int = DEFAULT_OPSET) -> ExportResult:
    """Write `model` as ONNX with its pipeline config and provenance in the metadata.

    Checks onnxruntime against PyTorch (raises ExportError beyond FP32_TOLERANCE of the
    heatmap range), records the golden self-check data, and with fp16 also writes a
    CUDA-targeted fp16 variant (default path: <output stem>_fp16.onnx) and compares it.
    """
    arch = model.config.name
    props = metadata_props(trained=provenance.trained, checkpoint_sha256=provenance.checkpoint_sha256,
                           arch=arch, precision="fp32", opset=opset,
                           extra={"source": provenance.source, **provenance.extra})
    start = time.perf_counter()
    path = export_fp32(model, output, config, props, opset)
    seconds = time.perf_counter() - start
    diff, value_range = verify_against_torch(path, model, config)
    golden = add_golden_record(path, config)
    fp16_path, comparison = None, None
    if fp16:
        fp16_path = Path(fp16_output) if fp16_output else path.with_name(path.stem + "_fp16.onnx")
        convert_fp16(path, fp16_path)
        comparison = compare_fp16(path, fp16_path, config)
    return ExportResult(path=path, seconds=seconds, size_bytes=path.stat().st_size,
                        max_abs_diff=diff, heatmap_range=value_range,
                        golden_points=len(golden["points"]), fp16_path=fp16_path,
                        fp16_comparison=comparison)


def metadata_props(trained: bool, checkpoint_sha256: str | None, arch: str, precision: str,
                   opset: int = DEFAULT_OPSET, extra: dict | None = None) -> dict[str, str]:
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
        "model_name": model_name(arch, trained),
        "arch": arch,
        "trained": trained,
        "source_checkpoint_sha256": checkpoint_sha256 or "",
        "precision": precision,
        "exporter": f"torch.onnx.export (TorchScript), opset {opset}",
        "versions": versions,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    props.update(extra or {})
    return {METADATA_PREFIX + k: json.dumps(v) for k, v in props.items()}


def write_metadata(model_proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set (add or overwrite) metadata_props entries."""
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """All metadata_props of an ONNX file (values still JSON-encoded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_fp32(model: LandmarkModel, output: str | Path, config: PipelineConfig,
                props: dict[str, str], opset: int = DEFAULT_OPSET) -> Path:
    """torch.onnx.export to a temporary file, check, add metadata, move into place."""
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
    """A quiet CPU onnxruntime session (for checks, never for serving)."""
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
    except Exception as exc:
        return f"fp16 deviation not measured: cannot create a session here ({str(exc)[:160]})"
    where = info16.provider
    if where == "CPUExecutionProvider":
        where += " (no CUDA here; fp16 targets CUDA, so this is indicative only)"
    width, height = config.input_size
    x = np.random.default_rng(seed).standard_normal((batch, 3, height, width), dtype=np.float32)
    h32 = s32.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    h16 = s16.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    heat = float(np.abs(h32 - h16).max()) / max(float(h32.max() - h32.min()), 1e-12)

    def run16(rows: np.ndarray) -> np.ndarray:
        return s16.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]

    try:
        golden = run_golden_check(run16, info16, tolerance_px=float("inf"))
        shift = (f"max landmark shift {golden.get('max_deviation_px')} px over "
                 f"{golden.get('points_checked', 0)} clear-peak keypoints of the golden input")
    except GoldenCheckError as exc:
        shift = str(exc)
    return f"fp16 vs fp32 on {where}: max heatmap diff {heat:.2g} of the range; {shift}"
