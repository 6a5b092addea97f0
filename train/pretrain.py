"""The pretraining loop: reads top to bottom, like DINO's main_dino.py.

One process, or one per GPU/CPU slot under `torchrun` (DDP). `batch_size` is always the
global batch of one optimiser step (all processes, all accumulation micro-batches), and the
learning rate is `lr * batch_size / 256`, so changing the number of processes changes
neither the schedule nor the learning rate.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from edgessl.train import augment, hardware
from edgessl.train import distributed as D
from edgessl.train.backbones import create_backbone
from edgessl.train.batches import epoch_batches
from edgessl.train.checkpoint import backbone_state, load_checkpoint
from edgessl.train.config import PretrainConfig, method_kwargs, resolve_config
from edgessl.train.data import CachedImages, ImageFolder, build_dataset, collate
from edgessl.train.methods import Method, create_method, method_class, method_options
from edgessl.train.optim import create_optimizer, param_groups, warmup_cosine, warmup_cosine_progress
from edgessl.train.rng import BatchGenerator
from edgessl.train.run_files import center_and_samples, keep_numbered, save_run, tensorboard_writer
from edgessl.train.shards import TarShards

log = logging.getLogger(__name__)

# The loop's clock: a module attribute so that tests can drive the time budget with a simulated one.
_clock = time.monotonic

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but torch sees no CUDA GPU; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def pretrain(cfg: PretrainConfig, resume: bool = False) -> Path:
    """Train, checkpointing to RUN/checkpoints/last.pt; returns that path. Under torchrun every
    process calls this; only process 0 writes files."""
    owns_group = not D.dist.is_initialized()
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_distributed(device)
    try:
        return _pretrain(resolve_config(cfg), resume, device, info)
    finally:
        if owns_group and info.enabled:
            D.cleanup()


def _pretrain(cfg: PretrainConfig, resume: bool, device: torch.device, info: D.DistInfo) -> Path:
    out = Path(cfg.out)
    ckpt_path = out / "checkpoints" / "last.pt"
    main = info.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    # ---- batch geometry: global batch = processes x accumulation x micro-batch
    if cfg.global_batch % (info.world * cfg.accumulate):
        raise ValueError(f"batch size {cfg.global_batch} must be a multiple of processes x accumulation "
                         f"= {info.world} x {cfg.accumulate}")
    per_rank = cfg.global_batch // info.world

    # ---- data: decoded and resized once per image; augmentation runs on whole batches
    kwargs = method_kwargs(cfg)
    clip_length = (int(kwargs.get("clip_length", method_options(cfg.method).get("clip_length", 1)))
                   if method_class(cfg.method).input == "clips" else 1)
    dataset = build_dataset(cfg.data, cfg.image_size, cfg.data_kind, clip_length=clip_length,
                            video_stride=cfg.video_stride, seed=cfg.seed)
    if cfg.cache and isinstance(dataset, ImageFolder):
        dataset = CachedImages(dataset)

    # ---- augmentation policy: fitted to a sample of the data unless --augment names one; the
    # resolved operations are stored in config.json (a resume re-uses them as they are)
    policy = augment.resolve(cfg.augment, dataset, cfg.image_size, dict(cfg.augment_options))
    options = dict(policy.options)
    if cfg.crop_min_scale is not None:  # the flag wins over the policy and the method
        options["min_scale"] = cfg.crop_min_scale
    options.setdefault("min_scale", method_class(cfg.method).defaults.get("crop_min_scale", 0.2))
    cfg = cfg.model_copy(update={"augment": policy.name, "augment_options": options,
                                 "augment_reason": policy.reason, "crop_min_scale": options["min_scale"]})
    if main:
        log.info("%s", policy.describe())
        print(policy.describe(), flush=True)

    # ---- model: backbone + method (views, head, loss)
    backbone = create_backbone(cfg.backbone, **cfg.backbone_options)
    views = cfg.views()
    method = create_method(cfg.method, backbone, views, **kwargs)
    method = method.to(device=device, memory_format=torch.channels_last)  # faster convolutions on CPU
    if isinstance(dataset, TarShards):
        steps_per_epoch = min(dataset.samples_per_rank(info.world)) // per_rank
    else:
        steps_per_epoch = len(dataset) // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data}: {len(dataset)} samples, fewer than one batch of {cfg.global_batch}")

    # ---- efficiency figures: FLOPs per sample (counted), the CPU's nominal peak, the allocator
    flops_per_sample = _flops_per_sample(method, dataset, cfg, device)
    threads = torch.get_num_threads()
    peak = (hardware.peak_gflops(min(threads, os.cpu_count() or threads), bf16=cfg.precision == "bf16")
            if device.type == "cpu" else 0.0)
    run_info: dict[str, Any] = {
        "cpu": hardware.describe(), "allocator": hardware.loaded_allocator(), "threads": threads,
        "precision": cfg.precision, "gflop_per_sample_step": round(flops_per_sample / 1e9, 4),
        "peak_gflops": round(peak, 1) if peak else None, "torch": torch.__version__}
    log.info("allocator %s, %s, %d threads, %.3f GFLOP per sample and step, nominal peak %s GFLOP/s (%s)",
             run_info["allocator"], run_info["cpu"], threads, flops_per_sample / 1e9,
             f"{peak:.0f}" if peak else "n/a", cfg.precision)

    # ---- distributed: BatchNorm over the global batch, DDP averages gradients
    if info.enabled and cfg.sync_bn:
        method = D.convert_batchnorm(method, device)
    model: torch.nn.Module = method
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=cfg.backbone.startswith("timm:"))
    assert cfg.optimizer is not None and cfg.weight_decay is not None
    optimizer = create_optimizer(cfg.optimizer, param_groups(method, cfg.weight_decay), cfg.base_lr)

    # ---- precision: bf16 autocast anywhere; fp16 needs a GPU and a gradient scaler
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 on CPU")
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    step, elapsed_before, total_steps = 0, 0.0, None
    ckpt = load_checkpoint(ckpt_path) if resume and main and ckpt_path.is_file() else None
    if resume and info.enabled:  # process 0 reads it and hands it to the others (other nodes may not see RUN)
        box = [ckpt]
        D.dist.broadcast_object_list(box, src=0)
        ckpt = box[0]
    if ckpt is None and cfg.init_from:
        _init_weights(method, cfg.init_from)
    if ckpt is not None:
        method.load_state_dict(ckpt["method_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, elapsed_before, total_steps = ckpt["step"], ckpt["elapsed_s"], ckpt["total_steps"]
        log.info("resuming %s at step %d of %d", ckpt_path, step, total_steps)
    if main:
        text = json.dumps(cfg.model_dump(), indent=2) + "\n"
        (out / "config.json").write_text(text)
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "config.json").write_text(text)  # next to every checkpoint

    # ---- schedule: warmup + cosine over steps (epochs), or over the share of the time budget spent
    # (minutes). Elapsed time only grows, so a time-budget lr never jumps back up or falls off a
    # cliff when a shared machine changes speed; the step count is only an estimate, for the bar.
    time_budget = cfg.minutes is not None
    schedule_s = cfg.minutes * 60 * 0.97 if cfg.minutes is not None else 0.0  # 3%: centring + saving
    if not time_budget:
        total_steps = total_steps or max(1, round((cfg.epochs or 10) * steps_per_epoch))
    warmup = round((cfg.warmup_fraction or 0.0) * (total_steps or 0))
    start = _clock() - elapsed_before
    progress = (elapsed_before / schedule_s) if time_budget else step / (total_steps or 1)
    estimate = total_steps  # time budget: the bar's total, estimated at step 5, settled at step 20
    log.info("%d samples, %s steps of %d (%d processes x %d accumulation), %s lr %.3g, wd %.2g, %s",
             len(dataset), f"{total_steps}" if total_steps else f"{cfg.minutes:g} minutes of",
             cfg.global_batch, info.world, cfg.accumulate, cfg.optimizer, cfg.base_lr, cfg.weight_decay,
             cfg.precision)
    if main:
        (out / "run_info.json").write_text(json.dumps(run_info, indent=2) + "\n")

    # ---- train
    method.train()
    bad_files: set[str] = set()
    writer = tensorboard_writer(out) if cfg.tensorboard and main else None
    t_prev = last_save = _clock()
    t_first: float | None = None
    smooth_rate = 0.0
    bar = tqdm(total=total_steps, initial=step, desc=f"pretrain {cfg.method}", unit="step", dynamic_ncols=True,
               disable=not main)
    log_file = open(out / "log.jsonl", "a") if main else None  # noqa: SIM115
    try:
        while (progress < 1) if time_budget else (step < (total_steps or 0)):
            epoch, offset = divmod(step, steps_per_epoch)
            for images, bad in epoch_batches(dataset, cfg, epoch, offset, steps_per_epoch, per_rank, info):
                if bad:
                    new = set(bad) - bad_files
                    bad_files |= new
                    for path in new:
                        log.warning("skipping unreadable image %s", path)
                if len(images) < 2:
                    continue
                if time_budget:
                    lr = cfg.base_lr * warmup_cosine_progress(progress, cfg.warmup_fraction or 0.0)
                else:
                    assert total_steps is not None
                    lr = cfg.base_lr * warmup_cosine(step, total_steps, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device, non_blocking=True)

                # Micro-batches (gradient accumulation); DDP reduces gradients only on the last one.
                # Each draws its augmentations as rows of the global batch (rng.BatchGenerator).
                optimizer.zero_grad(set_to_none=True)
                n_global = len(images) * info.world
                loss_value = torch.zeros((), device=device)
                chunks = torch.tensor_split(images, cfg.accumulate)
                row = info.rank * len(images)
                for i, chunk in enumerate(chunks):
                    g = BatchGenerator(cfg.seed * 1_000_003 + step, start=row, size=len(chunk), total=n_global)
                    row += len(chunk)
                    last = i == len(chunks) - 1
                    sync: Any = contextlib.nullcontext() if last or not info.enabled else model.no_sync()  # type: ignore[operator]
                    autocast: Any = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype
                                     else contextlib.nullcontext())
                    with sync, autocast:
                        loss = model(chunk, g) * (len(chunk) / len(images))
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    loss_value += loss.detach().float()
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                step += 1

                now = _clock()
                rate, t_prev = n_global / max(now - t_prev, 1e-9), now  # data loading included
                smooth_rate = rate if step <= 2 else 0.9 * smooth_rate + 0.1 * rate
                time_progress = (now - start) / schedule_s if time_budget else 0.0
                save_by_clock = cfg.checkpoint_minutes is not None and now - last_save > cfg.checkpoint_minutes * 60
                # One collective: the global mean loss, and process 0's clock and decisions for everyone.
                stats = _sync(torch.stack([loss_value.cpu(), torch.tensor(time_progress),
                                           torch.tensor(float(save_by_clock))]), info, device)
                loss_mean, save_by_clock = float(stats[0]), bool(stats[2])
                progress = float(stats[1]) if time_budget else step / (total_steps or 1)
                out_of_time = time_budget and progress >= 1
                if not torch.isfinite(torch.tensor(loss_mean)):
                    raise FloatingPointError(f"loss became {loss_mean} at step {step}; lower --lr")
                method.on_step_end(min(1.0, progress))

                if time_budget and step == 1:
                    t_first = now  # the first step pays for warm-up (allocations, oneDNN kernels): not timed
                if time_budget and t_first is not None and step in (5, 20):
                    # The bar's total, from the pace so far: set twice, then left alone.
                    per_step = (now - t_first) / (step - 1)
                    estimate = step + max(0, round((schedule_s - (now - start)) / max(per_step, 1e-9)))
                    bar.total = estimate
                bar.update(1)
                gflops = flops_per_sample * smooth_rate / 1e9
                share = gflops / peak if peak else None
                bar.set_postfix(loss=f"{loss_mean:.3f}", img_s=f"{smooth_rate:.0f}", lr=f"{lr:.3g}",
                                gflops=f"{gflops:.0f}" + (f" ({100 * share:.0f}% of peak)" if share else ""))
                record: dict[str, Any] = {"step": step, "epoch": epoch, "loss": loss_mean, "lr": lr,
                                          "img_per_s": round(rate, 1), "gflops": round(flops_per_sample * rate / 1e9, 1),
                                          "elapsed_s": round(now - start, 1)}
                if share is not None:
                    record["peak_share"] = round(flops_per_sample * rate / 1e9 / peak, 3)
                if time_budget:
                    record["progress"] = round(progress, 8)
                    record["steps_estimate"] = estimate
                checkpoint_now = (step % cfg.checkpoint_every == 0 or out_of_time or save_by_clock
                                  or (not time_budget and step >= (total_steps or 0)))
                if checkpoint_now and info.enabled:
                    record["ranks_identical"] = D.ranks_identical(method)
                    if not record["ranks_identical"]:
                        raise RuntimeError(f"processes hold different weights at step {step}: "
                                           "training is not deterministic across ranks")
                if writer is not None:
                    for k in ("loss", "lr", "img_per_s", "gflops"):
                        writer.add_scalar(f"train/{k}", record[k], step)
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                if checkpoint_now and main:
                    assert log_file is not None
                    log_file.flush()
                    if writer is not None:
                        writer.flush()
                    save_run(ckpt_path, cfg, method, optimizer, scaler, step, estimate or step, now - start)
                    keep_numbered(ckpt_path, step, cfg.keep_checkpoints)
                    last_save = now
                if out_of_time or (not time_budget and step >= (total_steps or 0)):
                    break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
    total_steps = step
    if bad_files:
        log.warning("%d unreadable images were skipped", len(bad_files))

    # ---- what export needs: the centring vector and a few real images
    if main:
        center, samples = center_and_samples(method.backbone, dataset, cfg, device)
        save_run(ckpt_path, cfg, method, optimizer, scaler, step, total_steps, _clock() - start,
              center, samples)
        log.info("wrote %s (%d steps, %.1f min)", ckpt_path, step, (_clock() - start) / 60)
    if info.enabled:
        D.dist.barrier()
    return ckpt_path


def _sync(values: torch.Tensor, info: D.DistInfo, device: torch.device) -> torch.Tensor:
    """[mean over processes of values[0], then values[1:] as process 0 has them]."""
    if not info.enabled:
        return values
    v = values.clone().float().to(device)  # NCCL reduces GPU tensors only
    if info.rank != 0:
        v[1:] = 0
    D.dist.all_reduce(v)
    v[0] /= info.world
    return v.cpu()


def _flops_per_sample(method: Method, dataset: Dataset | TarShards, cfg: PretrainConfig,
                      device: torch.device) -> float:
    """FLOPs of one training step (forward + backward) per sample, counted by torch on a small
    batch; for the GFLOP/s in the bar. The step leaves nothing behind (BatchNorm statistics,
    DINO's centre, gradients and the global RNG are restored)."""
    from torch.utils.flop_counter import FlopCounterMode

    state = copy.deepcopy(method.state_dict())
    rng_state = torch.get_rng_state()
    n = min(8, len(dataset)) if not isinstance(dataset, TarShards) else 8  # type: ignore[arg-type]
    images = next(iter(DataLoader(dataset, batch_size=n, collate_fn=collate)))[0].to(device)
    try:
        with FlopCounterMode(display=False) as counter:
            method.training_step(images, BatchGenerator(0, 0, len(images), len(images))).backward()
        flops = counter.get_total_flops() / max(1, len(images))
    finally:
        method.zero_grad(set_to_none=True)
        method.load_state_dict(state)
        torch.set_rng_state(rng_state)
    return float(flops)


def _init_weights(method: torch.nn.Module, source: str) -> None:
    """Start from another run's weights: the whole method when its state fits (same method and
    backbone: the projection head goes on too, so the loss does not start from a random head),
    else the backbone alone. A distillation's frozen teacher is never overwritten: the run's own
    teacher (e.g. the adapted one) stays."""
    init = load_checkpoint(source)
    state = {k: v for k, v in init["method_state"].items() if not k.startswith("teacher.")}
    try:
        missing, unexpected = method.load_state_dict(state, strict=False)
        if not unexpected and all(k.startswith("teacher.") for k in missing):
            log.info("weights from %s (method and backbone)", source)
            return
    except RuntimeError:
        pass
    backbone = getattr(method, "backbone", None)
    if backbone is None:
        raise ValueError(f"{source}: cannot start this method from it: it has no backbone to load weights into")
    try:
        backbone.load_state_dict(backbone_state(init))
    except RuntimeError as exc:
        raise ValueError(f"{source}: its backbone ({init['config'].get('backbone')}) does not fit this run's "
                         f"backbone: {str(exc).splitlines()[0]}") from None
    log.info("weights from %s (backbone only: the method's head starts afresh)", source)
