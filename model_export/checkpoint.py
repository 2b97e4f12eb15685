"""Load mmpose checkpoints (local file or http(s) URL) into `LandmarkModel` with strict=True.

Every way a checkpoint can be wrong ends in a `CheckpointError` whose message names the
problem (and the first offending keys), never in a bare torch traceback.

Downloading and hash checking need no torch (torch is imported where a checkpoint is read or
written), so commands that only fetch files run in an image without it.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.checksums import file_sha256

from .cache import default_cache_dir

if TYPE_CHECKING:
    import torch

    from .model import LandmarkModel

# mmpose model zoo entry for configs/face/.../wflw/hrnetv2_w18_wflw_256x256_dark.py
OFFICIAL_CHECKPOINT_URL = (
    "https://download.openmmlab.com/mmpose/face/darkpose/"
    "hrnetv2_w18_wflw_256x256_dark-3f8e0c2c_20210125.pth"
)
# OpenMMLab publishes the first 8 hex digits of the file's sha256 in its name.
OFFICIAL_CHECKPOINT_SHA256 = "3f8e0c2c"

_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})(?:_\d{8})?\.pth$")
_MAX_LISTED = 5


class CheckpointError(RuntimeError):
    """A checkpoint could not be fetched, verified or loaded; the message says why."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    sha256: str
    meta: dict


def expected_hash_from_name(name: str) -> str | None:
    """The hash prefix mmpose writes into file names: `...-3f8e0c2c_20210125.pth`."""
    match = _NAME_HASH.search(name)
    return match.group(1) if match else None


def check_hash(actual: str, expected: str | None, what: str) -> None:
    if expected is None:
        return
    expected = expected.lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise CheckpointError(f"expected sha256 {expected!r} is not 8 to 64 hex digits")
    if not actual.startswith(expected):
        raise CheckpointError(
            f"sha256 mismatch for {what}: expected {expected}..., got {actual}. "
            "The file is corrupt, truncated or not the one you asked for."
        )


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https")


def download(url: str, expected_sha256: str | None, cache_dir: Path | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` into the cache (once), verify its sha256, return the local path.

    Downloads go to a `.part` file that is renamed only after the hash matches, so an
    interrupted or corrupted transfer never poisons the cache.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    expected = expected_sha256 or expected_hash_from_name(name)
    target = cache_dir / name
    if target.exists():
        actual = file_sha256(target)
        if expected is None or actual.startswith(expected.lower()):
            return target
        target.unlink()  # stale or corrupt cache entry: fetch again
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            _copy_with_progress(response, out, total, name, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        raise CheckpointError(f"could not download {url}: {exc}") from None
    if total is not None and part.stat().st_size != total:
        size = part.stat().st_size
        part.unlink(missing_ok=True)
        raise CheckpointError(f"download of {url} is truncated: {size} of {total} bytes")
    try:
        check_hash(file_sha256(part), expected, url)
    except CheckpointError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    return target


def _copy_with_progress(src, dst, total: int | None, label: str, progress: bool) -> None:
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=label)
        except ImportError:  # progress is a nicety; never a reason to fail
            bar = None
    try:
        while block := src.read(1 << 16):
            dst.write(block)
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()


def resolve(source: str | os.PathLike, sha256: str | None = None, cache_dir: Path | None = None,
            progress: bool = True) -> tuple[Path, str]:
    """Local path or URL -> (local path, full sha256), verified against `sha256` if given
    (full hash or a prefix of at least 8 hex digits)."""
    if is_url(str(source)):
        path = download(str(source), sha256, cache_dir, progress)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
    actual = file_sha256(path)
    check_hash(actual, sha256, str(path))
    return path, actual


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an mmpose checkpoint (`{'state_dict', 'meta'}`) or a bare state dict."""
    import torch

    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{path} is a damaged checkpoint archive: {exc}") from None
        if bad is not None:
            raise CheckpointError(f"{path} is a damaged checkpoint archive: entry {bad} fails its CRC")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    # torch raises many exception types for a bad file; all mean the same here
    except Exception as exc:
        raise CheckpointError(_explain_load_failure(path, exc)) from None
    if isinstance(obj, dict) and "state_dict" in obj:
        state_dict, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict, meta = obj, {}
    else:
        kind = type(obj).__name__
        keys = list(obj)[:_MAX_LISTED] if isinstance(obj, dict) else []
        raise CheckpointError(
            f"{path} holds a {kind} {keys or ''}, not a checkpoint: expected a dict with "
            "'state_dict' (mmpose) or a bare state dict of tensors"
        )
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state_dict).__name__}, not a dict")
    return dict(state_dict), meta if isinstance(meta, dict) else {}


def _explain_load_failure(path: Path, exc: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK"):
        what = "a truncated or damaged PyTorch zip archive"
    elif head[:1] == b"\x80":
        what = "a legacy pickle that is truncated or holds objects other than tensors"
    elif head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        what = "an HTML/XML page, not a checkpoint (a failed download?)"
    else:
        what = "not a PyTorch checkpoint"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot read {path}: it looks like {what} ({first_line[:200]})"


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_into(model: LandmarkModel, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a readable account of every mismatch."""
    import torch

    own = model.state_dict()
    missing = own.keys() - state_dict.keys()
    unexpected = state_dict.keys() - own.keys()
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        hint = ""
        if all(k.startswith("module.") for k in unexpected):
            hint = " (keys start with 'module.': saved from a DataParallel wrapper?)"
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}{hint}")
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} != model {tuple(own[k].shape)}"
        for k in sorted(own.keys() & state_dict.keys())
        if not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != own[k].shape
    ]
    if shapes:
        more = f" and {len(shapes) - _MAX_LISTED} more" if len(shapes) > _MAX_LISTED else ""
        problems.append(f"{len(shapes)} shape mismatches: " + "; ".join(shapes[:_MAX_LISTED]) + more)
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit architecture {model.config.name!r}: "
            + " | ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(model: LandmarkModel, source: str | os.PathLike, sha256: str | None = None,
                    cache_dir: Path | None = None, progress: bool = True) -> LoadedCheckpoint:
    path, digest = resolve(source, sha256, cache_dir, progress)
    state_dict, meta = read_state_dict(path)
    load_into(model, state_dict, str(source))
    return LoadedCheckpoint(path=path, sha256=digest, meta=meta)


def save_mmpose_checkpoint(model: LandmarkModel, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write `{'state_dict', 'meta'}` the way mmcv's `save_checkpoint` lays it out."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": dict(meta or {})}, path)
    return path
