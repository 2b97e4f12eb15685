"""`python -m model_export train`: train the landmark model on WFLW the way mmpose trains
`hrnetv2_w18_wflw_256x256_dark` (docs/PIPELINE.md section 5).

Defaults are mmpose's: Adam lr 2e-3 (PyTorch defaults otherwise, no weight decay, no gradient
clipping), linear warm-up over the first 500 iterations from 0.001 x lr, step decay x0.1 at
epochs 40 and 55, 60 epochs, batch 64 per process, 2 loader workers, JointsMSELoss with target
weights, flip / scale / rotation augmentation and unbiased Gaussian targets (sigma 2).
Every one is a flag (options are defined in `model_export.cli`). The target sigma is part of
the run's `HeatmapCodec`, which goes into the checkpoints' meta and the exported ONNX file, so
the service decodes with the DARK kernel that matches it (sigma 3 -> kernel 17).

Single process:   python -m model_export train --wflw-root DIR --work-dir DIR
Several GPUs/nodes:  torchrun --nproc_per_node 8 -m model_export train --wflw-root DIR ...
  (DistributedDataParallel over RANK / WORLD_SIZE / LOCAL_RANK from torchrun; NCCL on CUDA,
  gloo on CPU; --batch-size is per process and the learning rate is NOT rescaled with the
  number of processes: mmpose's 2e-3 goes with 8 GPUs x 64.)

Written to --work-dir (by rank 0): log.jsonl (one JSON object per line: config, train
iterations, epochs, validation), epoch_<n>.pth and best_NME_epoch_<n>.pth in mmpose's
checkpoint format (`python -m model_export export --checkpoint` takes them), resume.pth
(model, optimiser, schedule position, AMP scaler, RNG state) for --resume, and with --export
the ONNX file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from service.pipeline.config import HeatmapCodec, PipelineConfig

from . import metrics
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_state_dict,
    resolve,
    save_mmpose_checkpoint,
)
from .data.dataset import WFLWTrainDataset
from .data.transforms import AugmentConfig
from .data.wflw import FaceRecord, WFLWError, WFLWSource, find_split
from .export import ExportResult, Provenance, export_onnx
from .model import LandmarkModel, build_model

PRETRAINED_ALIASES = {
    # mmpose's `pretrained='open-mmlab://msra/hrnetv2_w18'` (ImageNet HRNetV2-W18).
    "open-mmlab://msra/hrnetv2_w18":
        "https://download.openmmlab.com/pretrain/third_party/hrnetv2_w18-00eb2006.pth",
}
RESUME_FILE = "resume.pth"
LOG_FILE = "log.jsonl"


# --------------------------------------------------------------------------- pieces


def joints_mse_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mmpose JointsMSELoss(use_target_weight=True): for each joint k the mean over batch and
    pixels of w[n, k] * (pred - target)^2, summed over k and divided by K.
    pred, target: (N, K, H, W); weight: (N, K, 1)."""
    w = weight.reshape(weight.shape[0], weight.shape[1], 1, 1).to(pred.dtype)
    per_joint = (w * (pred - target) ** 2).mean(dim=(0, 2, 3))
    return per_joint.sum() / pred.shape[1]


@dataclass
class StepWarmupSchedule:
    """mmcv's `step` LR policy by epoch with linear warm-up by iteration (LR 87-218):
    lr = base * gamma^(number of milestones <= epoch), times 1 - (1 - i/warmup)(1 - ratio)
    while the run's iteration i < warmup_iters. Epochs are 0-based."""

    base_lr: float = 2e-3
    steps: tuple[int, ...] = (40, 55)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001

    def regular(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** sum(epoch >= s for s in self.steps)

    def lr(self, epoch: int, iteration: int) -> float:
        lr = self.regular(epoch)
        if iteration < self.warmup_iters:
            lr *= 1 - (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
        return lr


def load_pretrained_backbone(model: LandmarkModel, source: str, sha256: str | None = None,
                             cache_dir: Path | None = None, progress: bool = True) -> dict:
    """ImageNet weights (file or URL; `open-mmlab://msra/hrnetv2_w18` is understood) into the
    backbone. Keys may lack the `backbone.` prefix (the MSRA file) or carry it; keys the
    backbone does not have (the classification head: incre_modules, downsamp_modules,
    final_layer, classifier) are ignored; a shape mismatch on a shared key is an error.
    Returns {"loaded", "ignored", "missing", "source"} (counts; the head is never loaded)."""
    url = PRETRAINED_ALIASES.get(source, source)
    path, _ = resolve(url, sha256, cache_dir, progress)
    state, _ = read_state_dict(path)
    own = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        name = key.removeprefix("module.")
        name = name if name.startswith("backbone.") else "backbone." + name
        if name not in own:
            ignored.append(key)
        elif not isinstance(value, torch.Tensor) or value.shape != own[name].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            mismatched.append(f"{key} {shape} != model {tuple(own[name].shape)}")
        else:
            matched[name] = value
    if mismatched:
        more = f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
        raise CheckpointError(
            f"pretrained weights {source} do not fit the {model.config.name!r} backbone: "
            f"{len(mismatched)} shape mismatches: {'; '.join(mismatched[:5])}{more}")
    if not matched:
        raise CheckpointError(f"pretrained weights {source}: no key matches the backbone")
    model.load_state_dict(matched, strict=False)
    backbone_keys = [k for k in own if k.startswith("backbone.")]
    return {"loaded": len(matched), "ignored": len(ignored),
            "missing": len([k for k in backbone_keys if k not in matched]),
            "ignored_examples": sorted(ignored)[:5], "source": str(source)}


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistInfo:
    """Process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process
    without them. NCCL when on CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but PyTorch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank, dev)


class JsonLog:
    """Append-only JSON lines, written by rank 0 only."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------- data


def _sources(args, pixel_std: float) -> tuple[WFLWSource, WFLWSource | None]:
    """Training and validation data from the options (records' scale in pixel_std units)."""
    if args.wflw_root is not None:
        train = find_split(args.wflw_root, "train", pixel_std)
        val = (find_split(args.wflw_root, args.val_split, pixel_std)
               if args.val_interval > 0 else None)
    elif args.train_ann_file is not None and args.img_dir is not None:
        train = WFLWSource("json", args.train_ann_file, args.img_dir, pixel_std)
        val = None
        if args.val_interval > 0:
            val_file = args.val_ann_file or (args.train_ann_file if args.val_split == "train" else None)
            if val_file is None:
                raise WFLWError("validation needs --val-ann-file (or --val-interval 0)")
            val = WFLWSource("json", val_file, args.img_dir, pixel_std)
    else:
        raise WFLWError("give --wflw-root DIR, or --train-ann-file FILE.json with --img-dir DIR")
    return train, val


@torch.no_grad()
def validate(model: LandmarkModel, records: list[FaceRecord], config: PipelineConfig,
             info: DistInfo, flip_test: bool, batch_size: int, threshold: float = 0.1) -> dict:
    """NME / failure rate / AUC of the current weights through service.pipeline (the same
    prepare -> network -> flip merge -> DARK path as the evaluator), each rank on its shard."""
    from .evaluate import predict_records, record_errors

    if info.distributed:  # every rank validates with rank 0's BN statistics (the saved ones)
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    was_training = model.training
    model.eval()

    def run(rows: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(rows).to(info.device)).float().cpu().numpy()

    shard = records[info.rank::info.world_size]
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # error sum, error count, faces, failures, AUC area
    if shard:
        pred = predict_records(run, shard, config, flip_test, batch_size)
        errors, valid = record_errors(shard, pred)
        face = metrics.per_face_nme(errors, valid)
        face = face[~np.isnan(face)]
        sums = [float(errors[valid].sum(dtype=np.float64)), float(valid.sum()), float(len(face)),
                float(np.sum(face > threshold)), float(np.sum(np.clip(threshold - face, 0, None)))]
    err_sum, count, faces, failures, area = _all_reduce_sum(sums, info)
    model.train(was_training)
    return {"nme": err_sum / max(count, 1), "faces": int(faces),
            "failure_rate": failures / max(faces, 1), "auc": area / max(faces, 1) / threshold}


# --------------------------------------------------------------------------- training


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    # numpy: the loaders' Generators are re-derived from (seed, rank, worker, epoch); no state.
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_command(args: argparse.Namespace) -> int:
    """`train` subcommand: the options as parsed by `model_export.cli`."""
    info = setup_distributed(args.device)
    try:
        Trainer(args, info).run()
        return 0
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def codec_for(args) -> HeatmapCodec:
    """The heatmap codec of a run: mmpose's WFLW codec with the run's target sigma (the DARK
    blur kernel follows from it and travels into the exported ONNX file)."""
    return HeatmapCodec(sigma=args.sigma)


class Trainer:
    """One training run (this process's share of it under torchrun), in named steps.

    `run()` = seed -> data -> model (+ resume or pretrained backbone) -> DDP -> per epoch
    (train, validate, checkpoints) -> final checkpoint and optional export. `args` are the
    `train` command's options.
    """

    def __init__(self, args, info: DistInfo):
        self.args, self.info = args, info
        self.work_dir = Path(args.work_dir)
        self.log = JsonLog(self.work_dir / LOG_FILE, info.is_main)
        self.amp = info.device.type == "cuda" and not args.no_amp  # CUDA only; CPU stays fp32
        self.config = PipelineConfig(codec=codec_for(args))
        self.best = {"nme": math.inf, "epoch": None, "path": None}
        self.start_epoch, self.global_iter = 0, 0

    def say(self, *parts, **kwargs) -> None:
        if self.info.is_main:
            print(*parts, **kwargs)

    def run(self) -> None:
        if self.info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.seed()
        self.build_data()
        resume = self.build_model()
        self.log_start(resumed=resume is not None)
        for epoch in range(self.start_epoch, self.args.epochs):
            self.train_epoch(epoch)
            done = epoch + 1
            val = self.validate_epoch(done)
            if self.info.is_main:
                self.save_checkpoints(done, val)
            if self.info.distributed:
                dist.barrier()
        if self.info.is_main:
            self.finish()

    # ------------------------------------------------------------------ set-up steps

    def seed(self) -> None:
        random.seed(self.args.seed)
        torch.manual_seed(self.args.seed)

    def build_data(self) -> None:
        args, info = self.args, self.info
        train_source, val_source = _sources(args, self.config.pixel_std)
        check = not args.no_check_images
        self.train_records = train_source.read(check)
        self.val_records = val_source.read(check) if val_source is not None else []
        aug = AugmentConfig(flip_prob=args.flip_prob, rot_factor=args.rot_factor,
                            scale_factor=args.scale_factor, rot_prob=args.rot_prob)
        self.dataset = WFLWTrainDataset(self.train_records, self.config, aug, seed=args.seed,
                                        rank=info.rank)
        self.sampler = DistributedSampler(self.dataset, num_replicas=info.world_size,
                                          rank=info.rank, shuffle=True, seed=args.seed,
                                          drop_last=False)
        self.loader = DataLoader(self.dataset, batch_size=args.batch_size, sampler=self.sampler,
                                 num_workers=args.workers,
                                 pin_memory=info.device.type == "cuda", drop_last=False,
                                 persistent_workers=False)

    def build_model(self) -> dict | None:
        """Model, schedule, optimiser and AMP scaler; resume state or pretrained backbone;
        DDP wrapper. Returns the resume state (None for a fresh run)."""
        args, info = self.args, self.info
        self.raw_model = build_model(args.arch)
        self.schedule = StepWarmupSchedule(args.lr, tuple(args.lr_steps), args.lr_gamma,
                                           args.warmup_iters, args.warmup_ratio)
        state = self.read_resume_state()
        if state is None and args.pretrained and info.is_main:
            self.load_pretrained()
        self.raw_model.to(info.device)
        self.optimizer = torch.optim.Adam(self.raw_model.parameters(), lr=self.schedule.lr(0, 0))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        if state is not None:
            self.restore(state)
        self.model = self.raw_model
        if info.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.raw_model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
        return state

    def read_resume_state(self) -> dict | None:
        # Rank 0 reads the resume file and hands it to the others, so a multi-node run resumes
        # consistently even when the work dir is only on rank 0's machine.
        state = None
        if self.info.is_main:
            path = _resume_path(self.args, self.work_dir)
            if path is not None:
                state = torch.load(path, map_location="cpu", weights_only=True)
                state["path"] = str(path)
        if self.info.distributed:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        return state

    def load_pretrained(self) -> None:
        args = self.args
        report = load_pretrained_backbone(self.raw_model, args.pretrained, args.pretrained_sha256,
                                          args.cache_dir, progress=not args.no_progress)
        self.say(f"pretrained backbone from {args.pretrained}: loaded {report['loaded']} tensors, "
                 f"ignored {report['ignored']} keys not in the backbone "
                 f"(e.g. {', '.join(report['ignored_examples'][:3]) or '-'}), "
                 f"{report['missing']} backbone tensors left at their initialisation")
        self.log.write(mode="pretrained", **report)

    def restore(self, state: dict) -> None:
        if state.get("arch") != self.args.arch:
            raise ValueError(f"{state['path']} was written for --arch {state.get('arch')}, "
                             f"not {self.args.arch}")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.amp:
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.global_iter = int(state["epoch"]), int(state["global_iter"])
        self.best = dict(state.get("best") or self.best)
        _set_rng_state(state["rng"])
        self.say(f"resumed from {state['path']}: {self.start_epoch} epochs done, "
                 f"iteration {self.global_iter}")
        self.log.write(mode="resume", path=state["path"], epoch=self.start_epoch,
                       global_iter=self.global_iter)

    def log_start(self, resumed: bool) -> None:
        args, info = self.args, self.info
        num_params = sum(p.numel() for p in self.raw_model.parameters())
        self.say(f"training {args.arch} ({num_params:,} parameters) on {len(self.train_records)} "
                 f"faces, {info.world_size} process(es) x batch {args.batch_size} on {info.device}"
                 f"{' with AMP' if self.amp else ''}; {args.epochs} epochs, "
                 f"{len(self.loader)} iterations/epoch")
        if not resumed:
            self.log.write(mode="config", arch=args.arch, num_params=num_params,
                           world_size=info.world_size, device=str(info.device), amp=self.amp,
                           train_faces=len(self.train_records), val_faces=len(self.val_records),
                           codec=self.config.codec.to_dict(),
                           args={k: v for k, v in vars(args).items() if k != "func"})

    # ------------------------------------------------------------------ per epoch

    def train_epoch(self, epoch: int) -> None:
        args, info = self.args, self.info
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.model.train()
        epoch_start = time.perf_counter()
        loss_sum, loss_count, seen = 0.0, 0, 0
        window: list[float] = []
        bar = None
        if info.is_main and not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.loader), desc=f"epoch {epoch + 1}/{args.epochs}", unit="it",
                       file=sys.stderr, dynamic_ncols=True, leave=False)
        tick = time.perf_counter()
        lr = self.schedule.lr(epoch, self.global_iter)
        for i, batch in enumerate(self.loader):
            data_time = time.perf_counter() - tick
            lr = self.schedule.lr(epoch, self.global_iter)
            value, batch_n = self.step(batch, lr)
            seen += batch_n
            loss_sum += value
            loss_count += 1
            window.append(value)
            self.global_iter += 1
            now = time.perf_counter()
            iter_time, tick = now - tick, now
            throughput = batch_n / max(iter_time, 1e-9)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3e}", lr=f"{lr:.2e}", img_s=f"{throughput:.1f}")
                bar.update(1)
            if (i + 1) % args.log_interval == 0 or i + 1 == len(self.loader):
                self.log.write(mode="train", epoch=epoch + 1, iter=i + 1,
                               global_iter=self.global_iter, lr=lr,
                               loss=sum(window) / len(window), data_time=data_time,
                               iter_time=iter_time, samples_per_s=throughput)
                window = []
        if bar is not None:
            bar.close()
        epoch_time = time.perf_counter() - epoch_start
        epoch_loss = loss_sum / max(loss_count, 1)
        self.say(f"epoch {epoch + 1}/{args.epochs}: loss {epoch_loss:.4e}, lr {lr:.2e}, "
                 f"{epoch_time:.1f} s ({seen / max(epoch_time, 1e-9):.1f} img/s)")
        self.log.write(mode="train_epoch", epoch=epoch + 1, loss=epoch_loss, lr=lr,
                       global_iter=self.global_iter, seconds=epoch_time,
                       samples_per_s=seen / max(epoch_time, 1e-9))

    def step(self, batch: dict, lr: float) -> tuple[float, int]:
        """One optimiser step; returns (loss averaged over processes, images in the step)."""
        info = self.info
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        img = batch["img"].to(info.device, non_blocking=True)
        target = batch["target"].to(info.device, non_blocking=True)
        weight = batch["target_weight"].to(info.device, non_blocking=True)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
            pred = self.model(img)
        loss = joints_mse_loss(pred.float(), target, weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # The logged loss is the mean over processes, as mmpose logs it.
        value = loss.detach().clone()
        if info.distributed:
            dist.all_reduce(value)
            value /= info.world_size
        return float(value), img.shape[0] * info.world_size

    def validate_epoch(self, done: int) -> dict | None:
        """Validation after `done` epochs when due (every --val-interval and after the last)."""
        args = self.args
        last = done == args.epochs
        if not self.val_records or not (done % args.val_interval == 0 or last):
            return None
        val = validate(self.raw_model, self.val_records, self.config, self.info,
                       not args.no_val_flip_test, args.val_batch_size)
        improved = val["nme"] < self.best["nme"]
        if improved:
            self.best["nme"], self.best["epoch"] = val["nme"], done
        self.say(f"epoch {done} validation ({args.val_split}, {val['faces']} faces): "
                 f"NME {val['nme'] * 100:.3f}%, FR@0.1 {val['failure_rate'] * 100:.2f}%, "
                 f"AUC@0.1 {val['auc']:.4f}" + (" (best)" if improved else ""))
        self.log.write(mode="val", epoch=done, split=args.val_split, **val,
                       best_nme=self.best["nme"], best_epoch=self.best["epoch"])
        return val

    def checkpoint_meta(self, epoch: int) -> dict:
        """mmcv-style checkpoint meta, plus the codec so `export --checkpoint` reproduces it."""
        return {"epoch": epoch, "iter": self.global_iter, "arch": self.args.arch,
                "config": "hrnetv2_w18_wflw_256x256_dark (model_export)",
                "codec": json.loads(json.dumps(self.config.codec.to_dict())),
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save_checkpoints(self, done: int, val: dict | None) -> None:
        """Rank 0: epoch_<n>.pth when due, best_NME_epoch_<n>.pth on improvement, resume.pth."""
        args, best = self.args, self.best
        last = done == args.epochs
        meta = self.checkpoint_meta(done)
        if val is not None:
            meta["nme"] = val["nme"]
        if args.checkpoint_interval > 0 and (done % args.checkpoint_interval == 0 or last):
            save_mmpose_checkpoint(self.raw_model, self.work_dir / f"epoch_{done}.pth", meta)
            _prune_checkpoints(self.work_dir, args.max_keep_ckpts)
        if val is not None and best["epoch"] == done:
            path = self.work_dir / f"best_NME_epoch_{done}.pth"
            save_mmpose_checkpoint(self.raw_model, path, meta)
            if best["path"] and Path(best["path"]) != path:
                Path(best["path"]).unlink(missing_ok=True)
            best["path"] = str(path)
        schedule = self.schedule
        _atomic_save({
            "arch": args.arch, "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp else None,
            "epoch": done, "global_iter": self.global_iter, "best": best, "seed": args.seed,
            "schedule": {"base_lr": schedule.base_lr, "steps": list(schedule.steps),
                         "gamma": schedule.gamma, "warmup_iters": schedule.warmup_iters,
                         "warmup_ratio": schedule.warmup_ratio},
            "rng": _rng_state(),
        }, self.work_dir / RESUME_FILE)

    # ------------------------------------------------------------------ end of run

    def finish(self) -> None:
        """Rank 0: final.pth, the closing log record, and the ONNX export if asked for."""
        args, best = self.args, self.best
        final = self.work_dir / "final.pth"
        meta = self.checkpoint_meta(args.epochs)
        save_mmpose_checkpoint(self.raw_model, final,
                               {k: meta[k] for k in ("epoch", "iter", "arch", "codec")})
        self.log.write(mode="done", epochs=args.epochs, global_iter=self.global_iter,
                       best_nme=None if math.isinf(best["nme"]) else best["nme"],
                       best_epoch=best["epoch"], best_checkpoint=best["path"])
        if args.export is not None:
            self.export(final)

    def export(self, final: Path) -> ExportResult:
        """The best (or last) checkpoint -> ONNX with this run's pipeline config and codec."""
        args = self.args
        which = self.best.get("path") if args.export_which == "best" else None
        checkpoint = Path(which) if which else final
        output = (Path(args.export) if args.export != "auto"
                  else self.work_dir / f"{args.arch}_wflw.onnx")
        print(f"exporting {checkpoint} -> {output}")
        model = build_model(args.arch)
        loaded = load_checkpoint(model, checkpoint, progress=False)
        result = export_onnx(model, output, config=self.config,
                             provenance=Provenance(trained=True, source=str(checkpoint),
                                                   checkpoint_sha256=loaded.sha256))
        for line in result.summary():
            print(line)
        return result


def _resume_path(args, work_dir: Path) -> Path | None:
    if args.resume is None:
        return None
    if args.resume == "auto":
        path = work_dir / RESUME_FILE
        if not path.is_file():
            print(f"--resume: no {path} yet, starting from scratch")
            return None
        return path
    path = Path(args.resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    return path


def _prune_checkpoints(work_dir: Path, keep: int) -> None:
    if keep is None or keep < 0:
        return
    found = sorted(work_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    for path in found[:max(0, len(found) - keep)]:
        path.unlink(missing_ok=True)
