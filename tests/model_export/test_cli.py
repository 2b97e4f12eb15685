"""The `python -m model_export` command line: help texts, safe default paths, no torch where
none is needed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.cli import ARCH_NAMES, DEFAULT_MODEL_PATH, DEMO_MODEL_PATH, build_parser, main
from model_export.export import read_metadata
from model_export.model import ARCHITECTURES

REPO = Path(__file__).resolve().parents[2]
# Commands whose options are defined in model_export/cli.py.
OWN_COMMANDS = ("export", "fetch-default", "train", "fetch-detector", "calibrate-detector")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_random_init_export_never_lands_on_the_official_model_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--random-init", "--arch", "hrnetv2_tiny"]) == 0
    assert not (tmp_path / DEFAULT_MODEL_PATH).exists()
    meta = read_metadata(tmp_path / DEMO_MODEL_PATH)
    assert "untrained" in json.loads(meta["landmarks.model_name"])
    assert json.loads(meta["landmarks.trained"]) is False


def test_arch_choices_match_the_model_registry():
    assert tuple(sorted(ARCHITECTURES)) == ARCH_NAMES


def test_every_command_and_option_says_what_it_is():
    commands = _subparsers()
    assert set(OWN_COMMANDS) <= set(commands)
    top = build_parser().format_help()
    for name in commands:
        assert name in top
    for name, parser in commands.items():
        assert parser.description, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), (name, action.dest)


@pytest.mark.parametrize("name", OWN_COMMANDS)
def test_help_shows_defaults_and_no_internal_files(name):
    parser = _subparsers()[name]
    text = parser.format_help()
    assert ".md" not in text and ".py" not in text, text
    squeezed = "".join(text.split())  # argparse wraps lines, even inside long words
    for action in parser._actions:
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and action.option_strings:
            default = "".join(str(action.default).split())
            assert f"(default:{default}" in squeezed or "(default:" in (action.help or ""), \
                (name, action.dest)


def test_help_of_train_and_export_states_the_defaults():
    help_text = " ".join(_subparsers()["train"].format_help().split())
    assert "--sigma SIGMA target Gaussian sigma" in help_text and "(default: 2.0)" in help_text
    assert "NOT rescaled" in help_text
    export = " ".join(_subparsers()["export"].format_help().split())
    assert f"(default: {DEFAULT_MODEL_PATH}, or {DEMO_MODEL_PATH} with --random-init)" in export
    detector = " ".join(_subparsers()["fetch-detector"].format_help().split())
    assert "(default: models/retinaface_mnet025.onnx)" in detector


BLOCK_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed in this image")

sys.meta_path.insert(0, NoTorch())
from model_export.cli import build_parser
args = build_parser().parse_args(sys.argv[1:])
assert args.command == "fetch-detector"
import model_export.detector  # what the command imports when it runs
assert "torch" not in sys.modules
print("ok", args.output)
"""


def test_fetch_detector_needs_no_torch(tmp_path):
    out = tmp_path / "det.onnx"
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "fetch-detector", "--output", str(out)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ok {out}"
