"""Start-up failures of `python -m service`: at once, one line, non-zero exit, nothing served.

Each case starts the real command in a subprocess; none of them should get as far as loading
(let alone warming up) a model, except the garbage-file case, which fails while loading.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.service.server import Server

STARTUP_FAILURE = 3  # uvicorn's code for a failed start-up, used for all of them
INVALID_SETTINGS = 2


def run_to_exit(model, tmp_path, timeout: float = 60.0, **settings) -> tuple[int, list[str], float]:
    """-> (exit code, non-empty output lines, seconds it ran)."""
    log = tmp_path / "server.log"
    started = time.monotonic()
    server = Server.python(model, log, detector="none", **settings)
    try:
        code = server.process.wait(timeout)
    finally:
        server.close()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return code, lines, time.monotonic() - started


def error_lines(lines: list[str]) -> list[str]:
    """Lines that report a problem: plain lines, and JSON log records at ERROR or above."""
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if record.get("level") in ("ERROR", "CRITICAL"):
            out.append(record["msg"])
    return out


def test_a_taken_port_stops_start_up_at_once_with_one_line(tiny_onnx, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines, seconds = run_to_exit(tiny_onnx, tmp_path, port=port)
    assert code == STARTUP_FAILURE
    assert len(lines) == 1, lines  # no model loading, no warm-up, no "ready"
    assert f"127.0.0.1:{port}" in lines[0] and "LANDMARKS_PORT" in lines[0]
    assert "in use" in lines[0].lower()
    assert seconds < 30


def test_a_missing_model_file_is_one_line(tmp_path):
    missing = tmp_path / "nowhere" / "model.onnx"
    code, lines, _ = run_to_exit(missing, tmp_path)
    assert code == STARTUP_FAILURE
    assert len(lines) == 1, lines
    assert "model file not found" in lines[0] and str(missing) in lines[0]
    assert "LANDMARKS_MODEL_PATH" in lines[0]


def test_a_directory_as_the_model_file_is_one_line(tmp_path):
    code, lines, _ = run_to_exit(tmp_path, tmp_path)
    assert code == STARTUP_FAILURE
    assert len(lines) == 1, lines
    assert "directory" in lines[0] and "LANDMARKS_MODEL_PATH" in lines[0]


def test_a_garbage_model_file_is_one_error_line_without_a_traceback(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf\x00\xff" * 100)
    code, lines, _ = run_to_exit(garbage, tmp_path)
    assert code == STARTUP_FAILURE
    errors = error_lines(lines)
    assert len(errors) == 1, errors
    assert "cannot load" in errors[0] and str(garbage) in errors[0]
    assert "Traceback" not in "\n".join(lines)
    assert all(json.loads(line).get("msg", "").find("ready") < 0 for line in lines)


@pytest.mark.parametrize(("settings", "expected"), [
    ({"max_batch_size": 5000},
     ["LANDMARKS_MAX_BATCH_SIZE: Input should be less than or equal to 1024"]),
    ({"port": "eighty"}, ["LANDMARKS_PORT: Input should be a valid integer"]),
    # Two at once: both named, still one line.
    ({"workers": 0, "read_timeout_s": -1},
     ["LANDMARKS_WORKERS: Input should be greater than or equal to 1",
      "LANDMARKS_READ_TIMEOUT_S: Input should be greater than 0"]),
])
def test_a_bad_setting_names_its_environment_variable(tiny_onnx, tmp_path, settings, expected):
    code, lines, _ = run_to_exit(tiny_onnx, tmp_path, **settings)
    assert code == INVALID_SETTINGS
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0]
    field_names = [name for name in settings if name in lines[0].replace("LANDMARKS_" + name.upper(), "")]
    assert not field_names, f"field names instead of variables: {field_names}"


def test_a_bad_api_key_setting_is_never_echoed(tiny_onnx, tmp_path):
    # SecretStr accepts any text, so provoke a neighbour and check the key stays out.
    code, lines, _ = run_to_exit(tiny_onnx, tmp_path, api_key="s3cret-value", max_faces=0)
    assert code == INVALID_SETTINGS
    assert "LANDMARKS_MAX_FACES" in lines[0] and "s3cret-value" not in lines[0]


def test_default_providers_on_a_cpu_only_host_start_without_error_lines(tiny_onnx, tmp_path):
    """The default LANDMARKS_PROVIDERS (auto) on this GPU-less machine: CPU, said once as a
    warning and in /readyz; no ERROR line and no onnxruntime error output."""
    log = tmp_path / "server.log"
    with Server.python(tiny_onnx, log, providers="auto", detector="none") as server:
        ready = server.wait_ready()
    assert ready["provider"] == "CPUExecutionProvider" and ready["provider_choice"] == "auto"
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert not [e for e in lines if e["level"] in ("ERROR", "CRITICAL")]
    assert not [line for line in text.splitlines() if not line.startswith("{")], text[:500]
    auto = [e for e in lines if "providers auto" in e["msg"]]
    assert len(auto) == 1 and auto[0]["level"] == "WARNING"
    assert not any("error" in e["logger"] for e in lines)
