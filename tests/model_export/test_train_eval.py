"""Training (one process and two via torchrun/gloo) and evaluation, end to end on CPU.

A tiny HRNet learns the synthetic WFLW set (tests/model_export/synthetic_wflw.py) in ~20 s;
the evaluator then runs the exported ONNX through service.pipeline. "Learned" means: the loss
falls clearly, and the NME on the training images is far below both untrained models' (the
starting weights, and the structured random weights of `export --random-init`) and clearly
below a mean-shape baseline, which a network that ignored the pixels could not beat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.checkpoint import read_state_dict, save_mmpose_checkpoint
from model_export.cli import build_parser, main
from model_export.data.wflw import read_split
from model_export.metrics import nme
from model_export.model import build_model
from model_export.train import (
    PRETRAINED_ALIASES,
    StepWarmupSchedule,
    joints_mse_loss,
    load_pretrained_backbone,
)
from tests.model_export.synthetic_wflw import make_synthetic_wflw

REPO = Path(__file__).resolve().parents[2]
# mmpose's schedule with test-sized overrides: the tiny model on 24 images needs a larger LR
# (mmpose's 2e-3 is for HRNetV2-W18 and 8 x 64 images per step) and a short warm-up.
FAST = ["--arch", "hrnetv2_tiny", "--epochs", "40", "--lr", "1e-2", "--warmup-iters", "10",
        "--lr-steps", "100", "--workers", "0", "--val-interval", "10", "--val-split", "train",
        "--checkpoint-interval", "20", "--no-progress"]


def _log(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]


def _epoch_losses(records: list[dict]) -> list[float]:
    epochs = [r for r in records if r["mode"] == "train_epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, len(epochs) + 1))  # each logged once
    return [r["loss"] for r in epochs]


def _evaluate(model: Path, root: Path, out: Path, *extra: str) -> dict:
    args = ["evaluate", "--model", str(model), "--out-dir", str(out), "--no-progress",
            "--device", "cpu", *extra]
    if "--ann-file" not in extra:
        args += ["--wflw-root", str(root)]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_wflw(tmp_path_factory.mktemp("synthetic_wflw"), num_train=24, num_test=6)


@pytest.fixture(scope="module")
def baselines(synth, tiny_onnx, tmp_path_factory):
    """NME on the training images of: the starting weights (seed 0, mmpose init), the structured
    random model, and the mean face shape placed in each crop."""
    tmp = tmp_path_factory.mktemp("baselines")
    torch.manual_seed(0)  # the trainer seeds the same way before building the model
    ckpt = save_mmpose_checkpoint(build_model("hrnetv2_tiny"), tmp / "init.pth")
    init_onnx = tmp / "init.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--arch", "hrnetv2_tiny",
                 "--output", str(init_onnx)]) == 0
    initial = _evaluate(init_onnx, synth.root, tmp / "init", "--split", "train")
    random = _evaluate(tiny_onnx, synth.root, tmp / "random", "--split", "train")

    records = read_split(synth.root, "train")
    gt = np.stack([r.keypoints for r in records]).astype(np.float64)
    center = np.stack([r.center for r in records])[:, None]
    scale = np.array([r.scale for r in records])[:, None, None]
    mean_shape = ((gt - center) / scale).mean(axis=0)
    return {"initial": initial["sets"]["train"]["nme"], "random": random["sets"]["train"]["nme"],
            "mean_shape": nme(mean_shape * scale + center, gt)}


def _assert_learned(work_dir: Path, trained_nme: float, baselines: dict) -> None:
    losses = _epoch_losses(_log(work_dir))
    start, end = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"{work_dir.name}: loss {start:.3e} -> {end:.3e}; NME trained {trained_nme:.4f}, "
          f"baselines {baselines}")
    assert end < 0.7 * start, losses
    assert trained_nme < 0.5 * min(baselines["initial"], baselines["random"])
    assert trained_nme < 0.7 * baselines["mean_shape"]


@pytest.fixture(scope="module")
def single_run(synth, tmp_path_factory):
    work = tmp_path_factory.mktemp("train_single")
    assert main(["train", "--wflw-root", str(synth.root), "--work-dir", str(work),
                 "--batch-size", "4", "--export", *FAST]) == 0
    return work


# --------------------------------------------------------------------------- units


def test_defaults_are_mmpose_schedule():
    args = build_parser().parse_args(["train", "--wflw-root", "x", "--work-dir", "y"])
    assert (args.epochs, args.batch_size, args.lr, args.lr_steps, args.lr_gamma) == \
        (60, 64, 2e-3, [40, 55], 0.1)
    assert (args.warmup_iters, args.warmup_ratio, args.workers, args.val_batch_size) == \
        (500, 0.001, 2, 32)
    assert (args.flip_prob, args.rot_factor, args.scale_factor, args.rot_prob, args.sigma) == \
        (0.5, 30.0, 0.25, 0.6, 2.0)
    assert args.arch == "hrnetv2_w18" and args.val_interval == 1 and not args.no_val_flip_test
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "NOT rescaled" in help_text


def test_lr_schedule_by_hand():
    s = StepWarmupSchedule()
    assert s.lr(0, 0) == pytest.approx(2e-3 * 0.001)
    assert s.lr(0, 250) == pytest.approx(2e-3 * (1 - 0.5 * 0.999))
    assert s.lr(0, 500) == s.lr(39, 10**6) == pytest.approx(2e-3)
    assert s.lr(40, 10**6) == pytest.approx(2e-4) and s.lr(54, 10**6) == pytest.approx(2e-4)
    assert s.lr(55, 10**6) == pytest.approx(2e-5) and s.lr(59, 10**6) == pytest.approx(2e-5)


def test_joints_mse_loss_by_hand():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    target[0, 0] = 1.0  # joint 0, sample 0: squared error 1 on 16 pixels
    target[1, 1] = 2.0  # joint 1, sample 1: weighted out
    weight = torch.tensor([[[1.0], [1.0], [1.0]], [[1.0], [0.0], [1.0]]])
    # joint 0: mean over (2 samples x 16 px) = 0.5; joints 1, 2: 0; sum / 3
    assert float(joints_mse_loss(pred, target, weight)) == pytest.approx(0.5 / 3)


def test_pretrained_backbone_without_prefix(tmp_path):
    model = build_model("hrnetv2_tiny")
    donor = build_model("hrnetv2_tiny")
    for p in donor.parameters():
        torch.nn.init.normal_(p)
    state = {k.removeprefix("backbone."): v for k, v in donor.state_dict().items()
             if k.startswith("backbone.")}
    state["incre_modules.0.0.conv1.weight"] = torch.zeros(3, 3)  # classification-head extras
    state["classifier.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "imagenet.pth")
    head_before = model.keypoint_head.final_layer[0].weight.clone()
    report = load_pretrained_backbone(model, str(tmp_path / "imagenet.pth"))
    backbone = [k for k in model.state_dict() if k.startswith("backbone.")]
    assert report["loaded"] == len(backbone) and report["missing"] == 0
    assert report["ignored"] == 2
    for key in backbone:
        assert torch.equal(model.state_dict()[key], donor.state_dict()[key])
    assert torch.equal(model.keypoint_head.final_layer[0].weight, head_before)

    state["conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="shape mismatches: conv1.weight"):
        load_pretrained_backbone(build_model("hrnetv2_tiny"), str(tmp_path / "bad.pth"))
    assert PRETRAINED_ALIASES["open-mmlab://msra/hrnetv2_w18"].endswith("hrnetv2_w18-00eb2006.pth")


# --------------------------------------------------------------------------- end to end


def test_single_process_training_learns(single_run, synth, baselines, tmp_path):
    records = _log(single_run)
    config = records[0]
    assert config["mode"] == "config" and config["world_size"] == 1 and config["amp"] is False
    vals = [r for r in records if r["mode"] == "val"]
    assert [v["epoch"] for v in vals] == [10, 20, 30, 40]
    best = min(vals, key=lambda v: v["nme"])
    assert (single_run / f"best_NME_epoch_{best['epoch']}.pth").is_file()
    assert sorted(p.name for p in single_run.glob("epoch_*.pth")) == ["epoch_20.pth", "epoch_40.pth"]
    state, meta = read_state_dict(single_run / "epoch_40.pth")  # mmpose checkpoint format
    assert meta["epoch"] == 40 and any(k.startswith("keypoint_head.") for k in state)

    onnx_path = single_run / "hrnetv2_tiny_wflw.onnx"
    result = _evaluate(onnx_path, synth.root, tmp_path / "eval", "--split", "train")
    trained = result["sets"]["train"]["nme"]
    # the evaluator (ONNX + service.pipeline) agrees with the trainer's own validation
    assert trained == pytest.approx(best["nme"], rel=1e-3)
    _assert_learned(single_run, trained, baselines)
    assert result["sets"]["train"]["failure_rate"] < 0.2
    assert result["flip_test"] is True and result["trained"] is True


def test_evaluator_outputs_and_subsets(single_run, synth, tmp_path):
    onnx_path = single_run / "hrnetv2_tiny_wflw.onnx"
    txt = _evaluate(onnx_path, synth.root, tmp_path / "txt")
    names = ["test", "pose", "illumination", "occlusion", "blur", "makeup", "expression"]
    assert list(txt["sets"]) == names
    for j, name in enumerate(["pose", "expression", "illumination", "makeup", "occlusion", "blur"]):
        assert txt["sets"][name]["faces"] == sum(f.flags[j] for f in synth.faces["test"])
    assert txt["sets"]["test"]["faces"] == len(synth.faces["test"]) == 7
    for f in ("results.md", "results.json", "ced.png"):
        assert (tmp_path / "txt" / f).stat().st_size > 0
    md = (tmp_path / "txt" / "results.md").read_text()
    assert "| NME test | NME pose | NME illumination |" in md and "AUC@0.10" in md
    # per-face NMEs in the JSON reproduce the set figures (all 98 points are visible)
    faces = [f["nme"] for f in txt["faces"]]
    assert np.mean(faces) == pytest.approx(txt["sets"]["test"]["nme"], rel=1e-5)
    assert txt["sets"]["test"]["failure_rate"] == pytest.approx(np.mean(np.array(faces) > 0.1))

    js = _evaluate(onnx_path, synth.root, tmp_path / "json", "--ann-file", str(synth.json["test"]),
                   "--img-dir", str(synth.img_dir))
    assert list(js["sets"]) == names and js["data"]["form"] == "json"
    # slightly different crops (mmpose's rounded centre/scale), so close but not identical
    assert js["sets"]["test"]["nme"] == pytest.approx(txt["sets"]["test"]["nme"], rel=0.25)

    off = _evaluate(onnx_path, synth.root, tmp_path / "noflip", "--no-flip-test",
                    "--subsets", "test")
    assert off["flip_test"] is False and list(off["sets"]) == ["test"]
    assert off["sets"]["test"]["nme"] != txt["sets"]["test"]["nme"]


def test_resume_continues_exactly(synth, tmp_path):
    """Two epochs + resume to three == three uninterrupted (JSON form, pretrained init)."""
    torch.manual_seed(1)
    donor = build_model("hrnetv2_tiny")
    for p in donor.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save({k.removeprefix("backbone."): v for k, v in donor.state_dict().items()
                if k.startswith("backbone.")}, tmp_path / "imagenet.pth")
    common = ["--train-ann-file", str(synth.json["test"]), "--val-ann-file", str(synth.json["test"]),
              "--img-dir", str(synth.img_dir), "--arch", "hrnetv2_tiny", "--batch-size", "4",
              "--lr", "5e-3", "--warmup-iters", "3", "--lr-steps", "2", "--workers", "0",
              "--pretrained", str(tmp_path / "imagenet.pth")]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["train", "--work-dir", str(full), "--epochs", "3", "--no-progress", *common]) == 0
    assert main(["train", "--work-dir", str(split), "--epochs", "2", *common]) == 0
    assert main(["train", "--work-dir", str(split), "--epochs", "3", "--resume", *common]) == 0

    log = _log(split)
    assert [r["mode"] for r in log].count("resume") == 1
    assert [r["epoch"] for r in log if r["mode"] == "train_epoch"] == [1, 2, 3]
    assert next(r for r in log if r["mode"] == "pretrained")["ignored"] == 0
    a, _ = read_state_dict(full / "final.pth")
    b, _ = read_state_dict(split / "final.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    losses_full = [r["loss"] for r in _log(full) if r["mode"] == "train_epoch"]
    losses_split = [r["loss"] for r in log if r["mode"] == "train_epoch"]
    np.testing.assert_allclose(losses_full, losses_split, rtol=1e-5)


@pytest.mark.slow
def test_two_process_torchrun_gloo_learns(synth, baselines, tmp_path):
    work = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "model_export", "train", "--wflw-root", str(synth.root), "--work-dir", str(work),
           "--batch-size", "2", "--export", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
                          check=False)
    output = f"\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, output
    # rank-0 logging: one config record, every epoch and validation once
    records = _log(work)
    assert [r["mode"] for r in records].count("config") == 1, output
    assert records[0]["world_size"] == 2 and records[0]["device"] == "cpu", output
    assert [r["epoch"] for r in records if r["mode"] == "val"] == [10, 20, 30, 40], output
    assert proc.stdout.count("epoch 40/40:") == 1, output
    result = _evaluate(work / "hrnetv2_tiny_wflw.onnx", synth.root, tmp_path / "eval",
                       "--split", "train")
    _assert_learned(work, result["sets"]["train"]["nme"], baselines)
