"""The heatmap codec travels from training into the ONNX file and is what the decode reads.

Checked against: mmpose's sigma/kernel relation computed by hand, the metadata layout files
written before the codec existed, the closed-form Gaussian target, and the per-keypoint
reference DARK loop (tests/reference/dark_loop.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_export.cli import main
from model_export.data.targets import unbiased_gaussian_targets
from model_export.export import read_metadata
from service.pipeline.config import HeatmapCodec, PipelineConfig, blur_kernel_for_sigma
from service.pipeline.faces import PreparedFaces, finish
from tests.model_export.synthetic_wflw import make_synthetic_wflw
from tests.reference.dark_loop import decode_heatmaps_loop


def _opencv_sigma(kernel: int) -> float:
    """The sigma OpenCV gives a Gaussian kernel of this size (mmpose's codec docs quote it)."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


# --------------------------------------------------------------------------- the relation


def test_kernel_for_sigma_by_hand():
    assert blur_kernel_for_sigma(2.0) == 11  # (2 - 0.8) / 0.3 = 3.9999999... in floating point
    assert blur_kernel_for_sigma(3.0) == 17  # 17 -> sigma 2.9, 19 -> 3.2: 17 is nearer
    assert blur_kernel_for_sigma(1.0) == 5  # 5 -> 1.1, 3 -> 0.8
    assert blur_kernel_for_sigma(0.5) == 3  # below the smallest kernel's sigma
    for kernel in range(3, 41, 2):
        assert blur_kernel_for_sigma(_opencv_sigma(kernel)) == kernel
        # neighbouring kernels' sigmas are 0.3 apart: just either side of the midpoint
        assert blur_kernel_for_sigma(_opencv_sigma(kernel) + 0.14) == kernel
        assert blur_kernel_for_sigma(_opencv_sigma(kernel) + 0.16) == kernel + 2


def test_codec_defaults_are_mmpose_wflw_and_validate():
    codec = HeatmapCodec()
    assert (codec.input_size, codec.heatmap_size, codec.sigma, codec.blur_kernel,
            codec.pixel_std, codec.padding) == ((256, 256), (64, 64), 2.0, 11, 200.0, 1.25)
    assert HeatmapCodec(sigma=3).blur_kernel == 17
    assert HeatmapCodec(sigma=3, blur_kernel=11).blur_kernel == 11  # explicit wins
    for bad in ({"blur_kernel": 10}, {"sigma": 0}, {"sigma": float("nan")}, {"pixel_std": -1},
                {"heatmap_size": (0, 64)}):
        with pytest.raises(ValueError):
            HeatmapCodec(**bad)


# --------------------------------------------------------------------------- metadata


def test_metadata_round_trip_and_names_the_service_reads():
    config = PipelineConfig(codec=HeatmapCodec(input_size=(192, 256), heatmap_size=(48, 64),
                                               sigma=3.0, pixel_std=100.0, padding=1.3))
    props = config.to_metadata()
    assert json.loads(props["landmarks.codec"]) == {
        "input_size": [192, 256], "heatmap_size": [48, 64], "sigma": 3.0, "blur_kernel": 17,
        "pixel_std": 100.0, "padding": 1.3}
    back = PipelineConfig.from_metadata(props)
    assert back == config
    assert (back.input_size, back.heatmap_size, back.modulate_kernel, back.pixel_std,
            back.bbox_padding, back.aspect_ratio) == ((192, 256), (48, 64), 17, 100.0, 1.3, 0.75)


def test_files_without_the_codec_decode_as_before():
    assert PipelineConfig.from_metadata({}) == PipelineConfig()
    assert PipelineConfig.from_metadata({}).modulate_kernel == 11
    # The layout written before the codec existed: one key per value.
    legacy = {"landmarks.input_size": "[256, 256]", "landmarks.heatmap_size": "[64, 64]",
              "landmarks.bbox_padding": "1.25", "landmarks.pixel_std": "200.0",
              "landmarks.modulate_kernel": "11", "landmarks.num_keypoints": "98"}
    assert PipelineConfig.from_metadata(legacy) == PipelineConfig()
    legacy["landmarks.modulate_kernel"] = "7"
    assert PipelineConfig.from_metadata(legacy).modulate_kernel == 7
    with pytest.raises(ValueError, match="unknown keys"):
        PipelineConfig.from_metadata({"landmarks.codec": '{"sigma": 2, "kernel": 11}'})


# --------------------------------------------------------------------------- encode


def test_targets_use_the_codec_sigma():
    codec = HeatmapCodec(sigma=3.0)
    joint = np.array([[101.0, 77.0]])  # heatmap mu = (25.25, 19.25)
    target, weight = unbiased_gaussian_targets(joint, np.ones(1), codec)
    assert weight[0, 0] == 1
    for (row, col) in [(19, 25), (22, 25), (19, 30), (10, 40)]:
        d2 = (col - 25.25) ** 2 + (row - 19.25) ** 2
        assert target[0, row, col] == pytest.approx(np.exp(-d2 / 18), rel=1e-5)


# --------------------------------------------------------------------------- train -> ONNX


@pytest.fixture(scope="module")
def sigma3_run(tmp_path_factory):
    """A tiny model trained for one epoch with --sigma 3 and exported by `train --export`."""
    tmp = tmp_path_factory.mktemp("sigma3")
    synth = make_synthetic_wflw(tmp / "data", num_train=4, num_test=2, size=96)
    work = tmp / "work"
    assert main(["train", "--wflw-root", str(synth.root), "--work-dir", str(work),
                 "--arch", "hrnetv2_tiny", "--epochs", "1", "--batch-size", "4",
                 "--workers", "0", "--val-interval", "0", "--no-progress", "--sigma", "3",
                 "--export-which", "last", "--export"]) == 0
    return work


def test_sigma_3_training_exports_a_kernel_17_model(sigma3_run):
    config = PipelineConfig.from_metadata(read_metadata(sigma3_run / "hrnetv2_tiny_wflw.onnx"))
    assert config.codec == HeatmapCodec(sigma=3.0)
    assert config.modulate_kernel == 17 and config.sigma == 3.0


def test_reexporting_a_sigma_3_checkpoint_keeps_its_codec(sigma3_run, tmp_path):
    out = tmp_path / "again.onnx"
    assert main(["export", "--checkpoint", str(sigma3_run / "final.pth"), "--arch",
                 "hrnetv2_tiny", "--output", str(out)]) == 0
    assert PipelineConfig.from_metadata(read_metadata(out)).modulate_kernel == 17
    assert main(["export", "--checkpoint", str(sigma3_run / "final.pth"), "--arch",
                 "hrnetv2_tiny", "--sigma", "2", "--output", str(out)]) == 0
    assert PipelineConfig.from_metadata(read_metadata(out)).modulate_kernel == 11


def test_the_service_decode_of_that_model_uses_kernel_17(sigma3_run):
    config = PipelineConfig.from_metadata(read_metadata(sigma3_run / "hrnetv2_tiny_wflw.onnx"))
    rng = np.random.default_rng(4)
    heatmaps = rng.random((2, config.num_keypoints, 64, 64), dtype=np.float32)
    center = np.float32([[300, 200], [120, 80]])
    scale = np.float32([[1.2, 1.2], [0.6, 0.6]])
    faces = PreparedFaces(rows=np.zeros((2, 3, 256, 256), np.float32), center=center,
                          scale=scale, flip_test=False)
    landmarks, _ = finish(heatmaps, faces, config)
    with_17, _ = decode_heatmaps_loop(heatmaps, center, scale, kernel=17)
    with_11, _ = decode_heatmaps_loop(heatmaps, center, scale, kernel=11)
    np.testing.assert_array_equal(landmarks, with_17)
    assert np.abs(landmarks - with_11).max() > 1e-3
