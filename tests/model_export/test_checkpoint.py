"""Checkpoint loading: local files, real HTTP downloads, and every way a file can be wrong."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from model_export.checkpoint import (
    CheckpointError,
    download,
    expected_hash_from_name,
    load_checkpoint,
    save_mmpose_checkpoint,
)
from model_export.cli import main
from model_export.model import build_model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    model = build_model("hrnetv2_tiny")
    for p in model.parameters():  # weights distinguishable from a fresh init
        torch.nn.init.normal_(p, std=0.1)
    return save_mmpose_checkpoint(model, tmp_path_factory.mktemp("ck") / "tiny.pth",
                                  meta={"epoch": 3, "mmpose_version": "0.x-test"})


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: ClassVar[set[str]] = set()

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        if name in self.truncate:
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes early
            return
        super().do_GET()


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    def handler(*a, **kw):
        return _Handler(*a, directory=str(root), **kw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    _Handler.truncate = set()


def test_mmpose_format_and_bare_state_dict_load_identically(tiny_ckpt, tmp_path):
    source = torch.load(tiny_ckpt, weights_only=True)
    assert set(source) == {"state_dict", "meta"}
    bare = tmp_path / "bare.pth"
    torch.save(source["state_dict"], bare)
    a, b = build_model("hrnetv2_tiny"), build_model("hrnetv2_tiny")
    loaded = load_checkpoint(a, tiny_ckpt, progress=False)
    load_checkpoint(b, bare, progress=False)
    assert loaded.meta["epoch"] == 3
    assert loaded.sha256 == sha256(tiny_ckpt)
    for key, value in source["state_dict"].items():
        assert torch.equal(a.state_dict()[key], value)
        assert torch.equal(b.state_dict()[key], value)


def test_url_download_verifies_the_name_hash_and_caches(tiny_ckpt, http_root, tmp_path):
    root, base = http_root
    digest = sha256(tiny_ckpt)
    name = f"tiny-{digest[:8]}_20240101.pth"  # mmpose's naming: hash prefix in the file name
    (root / name).write_bytes(tiny_ckpt.read_bytes())
    assert expected_hash_from_name(name) == digest[:8]
    cache = tmp_path / "cache"
    model = build_model("hrnetv2_tiny")
    loaded = load_checkpoint(model, f"{base}/{name}", cache_dir=cache, progress=False)
    assert loaded.path == cache / name and loaded.sha256 == digest
    # Second call is served from the cache even when the server no longer has the file.
    (root / name).unlink()
    assert download(f"{base}/{name}", None, cache, progress=False) == cache / name


def test_url_with_full_sha256_argument(tiny_ckpt, http_root, tmp_path):
    root, base = http_root
    (root / "plain.pth").write_bytes(tiny_ckpt.read_bytes())
    path = download(f"{base}/plain.pth", sha256(tiny_ckpt), tmp_path, progress=False)
    assert sha256(path) == sha256(tiny_ckpt)


def test_corrupted_download_is_rejected_and_not_cached(tiny_ckpt, http_root, tmp_path):
    root, base = http_root
    digest = sha256(tiny_ckpt)
    data = bytearray(tiny_ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    name = f"tiny-{digest[:8]}.pth"
    (root / name).write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match=f"sha256 mismatch.*expected {digest[:8]}"):
        download(f"{base}/{name}", None, cache, progress=False)
    assert list(cache.iterdir()) == []  # neither the file nor its .part stays behind


def test_wrong_hash_argument_is_rejected(tiny_ckpt, http_root, tmp_path):
    root, base = http_root
    (root / "a.pth").write_bytes(tiny_ckpt.read_bytes())
    with pytest.raises(CheckpointError, match="sha256 mismatch.*deadbeef"):
        download(f"{base}/a.pth", "deadbeef", tmp_path, progress=False)


def test_truncated_transfer_is_rejected(tiny_ckpt, http_root, tmp_path):
    root, base = http_root
    (root / "cut.pth").write_bytes(tiny_ckpt.read_bytes())
    _Handler.truncate = {"cut.pth"}
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="truncated|could not download"):
        download(f"{base}/cut.pth", None, cache, progress=False)
    assert list(cache.iterdir()) == []


def test_missing_url_names_the_url(http_root, tmp_path):
    _, base = http_root
    with pytest.raises(CheckpointError, match="could not download .*nothere.pth"):
        download(f"{base}/nothere.pth", None, tmp_path, progress=False)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, ck: p.write_bytes(b""), "empty"),
        (lambda p, ck: p.write_text("<!DOCTYPE html><html>Not Found</html>"), "HTML"),
        (lambda p, ck: p.write_bytes(ck.read_bytes()[:5000]), "truncated or damaged|damaged"),
        (lambda p, ck: torch.save([torch.zeros(2)], p), "holds a list"),
        (lambda p, ck: torch.save({"epoch": 1}, p), "not a checkpoint"),
    ],
    ids=["empty", "html", "truncated", "list", "dict-without-state"],
)
def test_unreadable_files_get_a_clear_message(tmp_path, tiny_ckpt, make, message):
    path = tmp_path / "bad.pth"
    make(path, tiny_ckpt)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(build_model("hrnetv2_tiny"), path, progress=False)


def test_missing_keys_are_named(tmp_path, tiny_ckpt):
    state = torch.load(tiny_ckpt, weights_only=True)["state_dict"]
    del state["keypoint_head.final_layer.3.bias"]
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys: keypoint_head\.final_layer\.3\.bias"):
        load_checkpoint(build_model("hrnetv2_tiny"), tmp_path / "m.pth", progress=False)


def test_unexpected_keys_are_named_with_the_dataparallel_hint(tmp_path, tiny_ckpt):
    state = torch.load(tiny_ckpt, weights_only=True)["state_dict"]
    wrapped = {f"module.{k}": v for k, v in state.items()}
    torch.save({"state_dict": wrapped, "meta": {}}, tmp_path / "u.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: module\.backbone.*DataParallel"):
        load_checkpoint(build_model("hrnetv2_tiny"), tmp_path / "u.pth", progress=False)


def test_shape_mismatch_is_named(tiny_ckpt):
    # A tiny checkpoint has a subset of W18's keys, with other widths.
    with pytest.raises(CheckpointError, match=r"shape mismatches: backbone\.\S+ \(\d+"):
        load_checkpoint(build_model("hrnetv2_w18"), tiny_ckpt, progress=False)


def test_damaged_zip_entry_is_detected(tmp_path, tiny_ckpt):
    data = bytearray(tiny_ckpt.read_bytes())
    with zipfile.ZipFile(tiny_ckpt) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data[info.header_offset + 100] ^= 0xFF  # inside the largest tensor's stored bytes
    bad = tmp_path / "crc.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged|CRC"):
        load_checkpoint(build_model("hrnetv2_tiny"), bad, progress=False)


def test_cli_reports_errors_in_one_line_without_traceback(tmp_path, capsys):
    code = main(["export", "--checkpoint", str(tmp_path / "absent.pth"), "--arch", "hrnetv2_tiny",
                 "--output", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert "checkpoint file not found" in err and "Traceback" not in err


def test_fetch_default_offline_fails_fast_and_says_where_to_put_the_file(tmp_path, capsys):
    url = "http://127.0.0.1:9/hrnetv2_w18_wflw_256x256_dark-3f8e0c2c_20210125.pth"  # port 9: refused
    code = main(["fetch-default", "--url", url, "--cache-dir", str(tmp_path), "--output",
                 str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "Offline?" in err and str(tmp_path / "hrnetv2_w18_wflw_256x256_dark-3f8e0c2c_20210125.pth") in err


def test_fetch_default_uses_a_file_put_in_the_cache_by_hand(tmp_path):
    model = build_model("hrnetv2_w18")
    staged = save_mmpose_checkpoint(model, tmp_path / "staging.pth")
    digest = sha256(staged)
    name = f"hrnetv2_w18_wflw_256x256_dark-{digest[:8]}_20210125.pth"
    cache = tmp_path / "cache"
    cache.mkdir()
    staged.rename(cache / name)
    url = f"http://127.0.0.1:9/{name}"  # never contacted: the cached file's hash matches
    assert main(["fetch-default", "--url", url, "--sha256", digest[:8], "--cache-dir", str(cache),
                 "--output", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 30_000_000
