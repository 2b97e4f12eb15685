"""`python -m model_export train`: train the landmark model on WFLW the way mmpose trains
`hrnetv2_w18_wflw_256x256_dark` (PIPELINE.md section 5).

Defaults are mmpose's: Adam lr 2e-3 (PyTorch defaults otherwise, no weight decay, no gradient
clipping), linear warm-up over the first 500 iterations from 0.001 x lr, step decay x0.1 at
epochs 40 and 55, 60 epochs, batch 64 per process, 2 loader workers, JointsMSELoss with target
weights, flip / scale / rotation augmentation and unbiased Gaussian targets (sigma 2).
Every one is a flag.

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

from service.pipeline.config import PipelineConfig

from . import metrics
from .checkpoint import CheckpointError, read_state_dict, resolve, save_mmpose_checkpoint
from .data.dataset import WFLWTrainDataset
from .data.transforms import AugmentConfig
from .data.wflw import FaceRecord, WFLWError, WFLWSource, find_split
from .model import ARCHITECTURES, LandmarkModel, build_model

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


def _sources(args) -> tuple[WFLWSource, WFLWSource | None]:
    if args.wflw_root is not None:
        train = find_split(args.wflw_root, "train")
        val = find_split(args.wflw_root, args.val_split) if args.val_interval > 0 else None
    elif args.train_ann_file is not None and args.img_dir is not None:
        train = WFLWSource("json", args.train_ann_file, args.img_dir)
        val = None
        if args.val_interval > 0:
            val_file = args.val_ann_file or (args.train_ann_file if args.val_split == "train" else None)
            if val_file is None:
                raise WFLWError("validation needs --val-ann-file (or --val-interval 0)")
            val = WFLWSource("json", val_file, args.img_dir)
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
    info = setup_distributed(args.device)
    try:
        return _train(args, info)
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, info: DistInfo) -> int:
    work_dir = Path(args.work_dir)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    say = print if info.is_main else (lambda *a, **k: None)
    log = JsonLog(work_dir / LOG_FILE, info.is_main)

    amp = info.device.type == "cuda" and not args.no_amp  # CUDA only; CPU stays float32
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    train_source, val_source = _sources(args)
    check = not args.no_check_images
    train_records = train_source.read(check)
    val_records = val_source.read(check) if val_source is not None else []
    config = PipelineConfig()
    aug = AugmentConfig(flip_prob=args.flip_prob, rot_factor=args.rot_factor,
                        scale_factor=args.scale_factor, rot_prob=args.rot_prob, sigma=args.sigma)
    dataset = WFLWTrainDataset(train_records, config, aug, seed=args.seed, rank=info.rank)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=args.seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers, pin_memory=info.device.type == "cuda",
                        drop_last=False, persistent_workers=False)

    model = build_model(args.arch)
    schedule = StepWarmupSchedule(args.lr, tuple(args.lr_steps), args.lr_gamma,
                                  args.warmup_iters, args.warmup_ratio)
    start_epoch, global_iter = 0, 0
    best = {"nme": math.inf, "epoch": None, "path": None}

    # Rank 0 reads the resume file and hands it to the others, so a multi-node run resumes
    # consistently even when the work dir is only on rank 0's machine.
    resume_path, state = None, None
    if info.is_main:
        resume_path = _resume_path(args, work_dir)
        if resume_path is not None:
            state = torch.load(resume_path, map_location="cpu", weights_only=True)
            state["path"] = str(resume_path)
    if info.distributed:
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    if state is None and args.pretrained and info.is_main:
        report = load_pretrained_backbone(model, args.pretrained, args.pretrained_sha256,
                                          args.cache_dir, progress=not args.no_progress)
        say(f"pretrained backbone from {args.pretrained}: loaded {report['loaded']} tensors, "
            f"ignored {report['ignored']} keys not in the backbone "
            f"(e.g. {', '.join(report['ignored_examples'][:3]) or '-'}), "
            f"{report['missing']} backbone tensors left at their initialisation")
        log.write(mode="pretrained", **report)
    model.to(info.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.lr(0, 0))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    if state is not None:
        if state.get("arch") != args.arch:
            raise ValueError(f"{state['path']} was written for --arch {state.get('arch')}, "
                             f"not {args.arch}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and amp:
            scaler.load_state_dict(state["scaler"])
        start_epoch, global_iter = int(state["epoch"]), int(state["global_iter"])
        best = dict(state.get("best") or best)
        _set_rng_state(state["rng"])
        say(f"resumed from {state['path']}: {start_epoch} epochs done, iteration {global_iter}")
        log.write(mode="resume", path=state["path"], epoch=start_epoch, global_iter=global_iter)

    raw_model = model
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    num_params = sum(p.numel() for p in raw_model.parameters())
    say(f"training {args.arch} ({num_params:,} parameters) on {len(train_records)} faces, "
        f"{info.world_size} process(es) x batch {args.batch_size} on {info.device}"
        f"{' with AMP' if amp else ''}; {args.epochs} epochs, {len(loader)} iterations/epoch")
    if state is None:
        log.write(mode="config", arch=args.arch, num_params=num_params,
                  world_size=info.world_size, device=str(info.device), amp=amp,
                  train_faces=len(train_records), val_faces=len(val_records),
                  args={k: v for k, v in vars(args).items() if k != "func"})

    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()
        epoch_start = time.perf_counter()
        loss_sum, loss_count, seen = 0.0, 0, 0
        window: list[float] = []
        bar = None
        if info.is_main and not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{args.epochs}", unit="it",
                       file=sys.stderr, dynamic_ncols=True, leave=False)
        tick = time.perf_counter()
        for i, batch in enumerate(loader):
            data_time = time.perf_counter() - tick
            lr = schedule.lr(epoch, global_iter)
            for group in optimizer.param_groups:
                group["lr"] = lr
            img = batch["img"].to(info.device, non_blocking=True)
            target = batch["target"].to(info.device, non_blocking=True)
            weight = batch["target_weight"].to(info.device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                pred = model(img)
            loss = joints_mse_loss(pred.float(), target, weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            # The logged loss is the mean over processes, as mmpose logs it.
            value = loss.detach().clone()
            if info.distributed:
                dist.all_reduce(value)
                value /= info.world_size
            value = float(value)
            batch_n = img.shape[0] * info.world_size
            seen += batch_n
            loss_sum += value
            loss_count += 1
            window.append(value)
            global_iter += 1
            now = time.perf_counter()
            iter_time, tick = now - tick, now
            throughput = batch_n / max(iter_time, 1e-9)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3e}", lr=f"{lr:.2e}", img_s=f"{throughput:.1f}")
                bar.update(1)
            if (i + 1) % args.log_interval == 0 or i + 1 == len(loader):
                log.write(mode="train", epoch=epoch + 1, iter=i + 1, global_iter=global_iter,
                          lr=lr, loss=sum(window) / len(window), data_time=data_time,
                          iter_time=iter_time, samples_per_s=throughput)
                window = []
        if bar is not None:
            bar.close()
        epoch_time = time.perf_counter() - epoch_start
        epoch_loss = loss_sum / max(loss_count, 1)
        say(f"epoch {epoch + 1}/{args.epochs}: loss {epoch_loss:.4e}, lr {lr:.2e}, "
            f"{epoch_time:.1f} s ({seen / max(epoch_time, 1e-9):.1f} img/s)")
        log.write(mode="train_epoch", epoch=epoch + 1, loss=epoch_loss, lr=lr,
                  global_iter=global_iter, seconds=epoch_time,
                  samples_per_s=seen / max(epoch_time, 1e-9))

        done = epoch + 1
        last = done == args.epochs
        val = None
        if val_records and (done % args.val_interval == 0 or last):
            val = validate(raw_model, val_records, config, info, not args.no_val_flip_test,
                           args.val_batch_size)
            improved = val["nme"] < best["nme"]
            if improved:
                best["nme"], best["epoch"] = val["nme"], done
            say(f"epoch {done} validation ({args.val_split}, {val['faces']} faces): "
                f"NME {val['nme'] * 100:.3f}%, FR@0.1 {val['failure_rate'] * 100:.2f}%, "
                f"AUC@0.1 {val['auc']:.4f}" + (" (best)" if improved else ""))
            log.write(mode="val", epoch=done, split=args.val_split, **val,
                      best_nme=best["nme"], best_epoch=best["epoch"])
        if info.is_main:
            meta = {"epoch": done, "iter": global_iter, "arch": args.arch,
                    "config": "hrnetv2_w18_wflw_256x256_dark (model_export)",
                    "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            if val is not None:
                meta["nme"] = val["nme"]
            if args.checkpoint_interval > 0 and (done % args.checkpoint_interval == 0 or last):
                save_mmpose_checkpoint(raw_model, work_dir / f"epoch_{done}.pth", meta)
                _prune_checkpoints(work_dir, args.max_keep_ckpts)
            if val is not None and best["epoch"] == done:
                path = work_dir / f"best_NME_epoch_{done}.pth"
                save_mmpose_checkpoint(raw_model, path, meta)
                if best["path"] and Path(best["path"]) != path:
                    Path(best["path"]).unlink(missing_ok=True)
                best["path"] = str(path)
            _atomic_save({
                "arch": args.arch, "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if amp else None,
                "epoch": done, "global_iter": global_iter, "best": best, "seed": args.seed,
                "schedule": {"base_lr": schedule.base_lr, "steps": list(schedule.steps),
                             "gamma": schedule.gamma, "warmup_iters": schedule.warmup_iters,
                             "warmup_ratio": schedule.warmup_ratio},
                "rng": _rng_state(),
            }, work_dir / RESUME_FILE)
        if info.distributed:
            dist.barrier()

    if info.is_main:
        final = work_dir / "final.pth"
        save_mmpose_checkpoint(raw_model, final, {"epoch": args.epochs, "iter": global_iter,
                                                  "arch": args.arch})
        log.write(mode="done", epochs=args.epochs, global_iter=global_iter,
                  best_nme=None if math.isinf(best["nme"]) else best["nme"],
                  best_epoch=best["epoch"], best_checkpoint=best["path"])
        if args.export is not None:
            _export(args, work_dir, best, final)
    return 0


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


def _export(args, work_dir: Path, best: dict, final: Path) -> None:
    from .cli import export_command

    checkpoint = Path(best["path"]) if args.export_which == "best" and best.get("path") else final
    output = Path(args.export) if args.export != "auto" else work_dir / f"{args.arch}_wflw.onnx"
    print(f"exporting {checkpoint} -> {output}")
    export_command(argparse.Namespace(
        checkpoint=str(checkpoint), random_init=False, sha256=None, seed=0, output=output,
        arch=args.arch, fp16=False, fp16_output=None, cache_dir=args.cache_dir,
    ))


# --------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train on WFLW with mmpose's schedule (torchrun for several GPUs/nodes)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--wflw-root", type=Path, default=None,
                      help="WFLW root in the official layout (WFLW_annotations/, WFLW_images/) "
                           "or mmpose's (annotations/*.json, images/)")
    data.add_argument("--train-ann-file", type=Path, default=None,
                      help="instead of --wflw-root: mmpose JSON for training (with --img-dir)")
    data.add_argument("--val-ann-file", type=Path, default=None, help="mmpose JSON for validation")
    data.add_argument("--img-dir", type=Path, default=None, help="image folder of the JSON files")
    data.add_argument("--val-split", choices=["test", "train"], default="test",
                      help="split validated on (default: test, as mmpose)")
    data.add_argument("--no-check-images", action="store_true",
                      help="skip the up-front check that every image file exists")
    p.add_argument("--work-dir", type=Path, required=True, help="logs and checkpoints go here")
    p.add_argument("--arch", default="hrnetv2_w18", choices=sorted(ARCHITECTURES),
                   help="model width/depth (default: hrnetv2_w18; hrnetv2_tiny for tests)")

    sched = p.add_argument_group("schedule (defaults: mmpose's config)")
    sched.add_argument("--epochs", type=int, default=60, help="total epochs (default: 60)")
    sched.add_argument("--batch-size", type=int, default=64,
                       help="samples per process and iteration (default: 64)")
    sched.add_argument("--lr", type=float, default=2e-3,
                       help="Adam learning rate (default: 2e-3, for 8 processes x 64; NOT "
                            "rescaled automatically for other world or batch sizes)")
    sched.add_argument("--lr-steps", type=int, nargs="*", default=[40, 55],
                       help="epochs at which the LR is multiplied by --lr-gamma (default: 40 55)")
    sched.add_argument("--lr-gamma", type=float, default=0.1, help="step decay factor (default: 0.1)")
    sched.add_argument("--warmup-iters", type=int, default=500,
                       help="linear warm-up iterations (default: 500; 0 disables)")
    sched.add_argument("--warmup-ratio", type=float, default=0.001,
                       help="warm-up starting LR as a fraction of --lr (default: 0.001)")
    sched.add_argument("--workers", type=int, default=2,
                       help="DataLoader worker processes per process (default: 2)")
    sched.add_argument("--seed", type=int, default=0, help="seed of init, sampler and augmentation")

    augment = p.add_argument_group("augmentation and targets (defaults: mmpose's config)")
    augment.add_argument("--flip-prob", type=float, default=0.5)
    augment.add_argument("--rot-factor", type=float, default=30.0,
                         help="rotation = clip(N(0,1) x this, +-2 x this) degrees (default: 30)")
    augment.add_argument("--rot-prob", type=float, default=0.6)
    augment.add_argument("--scale-factor", type=float, default=0.25,
                         help="scale x clip(1 + N(0,1) x this, 1 -+ this) (default: 0.25)")
    augment.add_argument("--sigma", type=float, default=2.0, help="target Gaussian sigma (default: 2)")

    run = p.add_argument_group("validation, checkpoints, logging")
    run.add_argument("--val-interval", type=int, default=1,
                     help="validate every N epochs and keep the best NME checkpoint (0: never)")
    run.add_argument("--val-batch-size", type=int, default=32,
                     help="network rows per forward pass in validation (default: 32)")
    run.add_argument("--no-val-flip-test", action="store_true",
                     help="validate without the flip test (mmpose validates with it)")
    run.add_argument("--checkpoint-interval", type=int, default=1,
                     help="save epoch_<n>.pth every N epochs (default: 1; 0: only resume.pth, "
                          "best and final)")
    run.add_argument("--max-keep-ckpts", type=int, default=-1,
                     help="keep only the newest N epoch_<n>.pth files (default: -1, all)")
    run.add_argument("--log-interval", type=int, default=5,
                     help="iterations per log.jsonl train record (default: 5)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                     help="continue from PATH, or with no value from <work-dir>/resume.pth if it "
                          "exists (restores model, optimiser, schedule, AMP scaler and RNG state)")

    init = p.add_argument_group("initialisation and hardware")
    init.add_argument("--pretrained", default=None, metavar="FILE|URL",
                      help="ImageNet HRNetV2 backbone weights (mmpose: "
                           "open-mmlab://msra/hrnetv2_w18, understood as an alias of its URL); "
                           "default: mmpose's random init")
    init.add_argument("--pretrained-sha256", default=None,
                      help="expected sha256 (prefix) of --pretrained; URLs default to the hash "
                           "in the file name")
    init.add_argument("--cache-dir", type=Path, default=None, help="download cache")
    init.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="auto: CUDA when available (process LOCAL_RANK's GPU)")
    init.add_argument("--no-amp", action="store_true",
                      help="disable mixed precision (used on CUDA only; CPU is always float32)")

    out = p.add_argument_group("export")
    out.add_argument("--export", nargs="?", const="auto", default=None, metavar="ONNX",
                     help="after training, export to ONNX through `export` (default path: "
                          "<work-dir>/<arch>_wflw.onnx)")
    out.add_argument("--export-which", choices=["best", "last"], default="best",
                     help="checkpoint to export: best validation NME (default) or the last epoch")
    p.set_defaults(func=train_command)
