"""What one pretraining run is: `PretrainConfig` (saved as RUN/config.json) and how the method's
recipe fills in what the run leaves open."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgessl.train import augment, hardware
from edgessl.train.backbones import accepts_option
from edgessl.train.methods import method_class
from edgessl.train.views import ViewConfig

DEFAULT_LR = {"lars": 1.0, "sgd": 0.3, "adamw": 1e-3}  # per 256 images, scaled linearly with batch
DEFAULT_WEIGHT_DECAY = 1e-5

Option = bool | int | float | str


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="image folder, video file/folder, or .tar shards (file, folder, glob, {a..b})")
    out: str = Field(description="run folder: checkpoints, config.json, log.jsonl, tensorboard/")
    method: str = Field("simclr", description="SSL method")
    backbone: str = Field("resnet_tiny", description="backbone architecture")
    image_size: int = Field(32, ge=8, description="the model's input resolution (square): what devices feed it")
    view_size: int | None = Field(None, ge=8, description="resolution of the training views (default: image_size); "
                                  "lower trains faster and, with random-resized crops, shows objects at the size "
                                  "whole images show them at image_size (FixRes)")
    batch_size: int | None = Field(None, ge=2, description="global batch per optimiser step (all processes); "
                                   "default: the method's, else 256")
    epochs: float | None = Field(None, gt=0, description="length in epochs (default 10 unless --minutes)")
    minutes: float | None = Field(None, gt=0, description="wall-clock budget; the schedule is fitted to it")
    optimizer: Literal["lars", "sgd", "adamw"] | None = Field(None, description="default: the method's")
    lr: float | None = Field(None, gt=0, description="base lr per 256 images (default: the method's)")
    weight_decay: float | None = Field(None, ge=0, description="default: the method's")
    warmup_fraction: float | None = Field(None, ge=0, lt=1, description="default: the method's, else 0.05")
    temperature: float | None = Field(None, gt=0, description="loss temperature, for methods that have one")
    method_options: dict[str, Option] = Field(default_factory=dict, description="method keyword options")
    backbone_options: dict[str, Option] = Field(default_factory=dict, description="backbone keyword options")
    data_kind: Literal["auto", "images", "video", "shards"] = "auto"
    video_stride: int = Field(1, ge=1, description="use every n-th video frame")
    seed: int = 0
    workers: int = Field(0, ge=0, description="data loading processes (0: in the training process)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: all cores)")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a CPU with native bf16, else fp32; fp16 + scaler on CUDA")
    cache: bool = Field(True, description="decode an image folder once into a uint8 memory map ($EDGESSL_CACHE)")
    accumulate: int = Field(1, ge=1, description="micro-batches per optimiser step")
    sync_bn: bool = Field(True, description="BatchNorm statistics over all processes under DDP")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    checkpoint_minutes: float | None = Field(None, gt=0, description="also checkpoint after this many minutes")
    keep_checkpoints: int = Field(3, ge=0, description="numbered step checkpoints kept besides last.pt")
    crop_min_scale: float | None = Field(None, gt=0, le=1, description="smallest random crop, as a share of the "
                                         "image area; default: the augmentation policy's, else the method's, else 0.2")
    center_images: int = Field(2000, ge=1, description="images used for the centring vector")
    init_from: str | None = Field(None, description="checkpoint (run folder or .pt) whose weights start this run: "
                                  "the whole method (backbone and head) when it is the same method and backbone, "
                                  "else the backbone alone; the optimiser and schedule start afresh (a new run, "
                                  "unlike --resume). `edgessl adapt` continues training this way")
    tensorboard: bool = Field(True, description="write TensorBoard scalars to RUN/tensorboard")
    augment: Literal["auto", "natural", "grey", "document", "thermal"] = Field(
        "auto", description="augmentation policy; auto: picked from a sample of the data (train/augment.py)")
    augment_options: dict[str, Option] = Field(
        default_factory=dict, description="per-operation view settings over the policy (ViewConfig fields, "
        "min_scale); after the run starts: the resolved policy")
    augment_reason: str | None = Field(None, description="why the policy was chosen (filled in by the run)")

    @model_validator(mode="after")
    def _length(self) -> PretrainConfig:
        if self.epochs is None and self.minutes is None:
            self.epochs = 10
        if self.view_size is not None and self.view_size > self.image_size:
            raise ValueError(f"view_size {self.view_size} is larger than image_size {self.image_size}: views are "
                             "crops of the images, so they cannot hold more pixels than the images")
        return self

    def views(self) -> ViewConfig:
        """The training views: crops of the image_size images, resized to view_size."""
        return augment.view_config(self.view_size or self.image_size, self.crop_min_scale or 0.2,
                                   self.augment_options)

    @property
    def global_batch(self) -> int:
        """batch_size once resolve_config has filled it in from the method's recipe."""
        if self.batch_size is None:
            raise ValueError("batch_size is not resolved yet: call resolve_config first")
        return self.batch_size

    @property
    def base_lr(self) -> float:
        return (self.lr or DEFAULT_LR[self.optimizer or "lars"]) * (self.batch_size or 256) / 256


def resolve_config(cfg: PretrainConfig) -> PretrainConfig:
    """Fill in what the method and backbone decide: optimiser, lr, weight decay, a ViT's img_size."""
    cls = method_class(cfg.method)
    d = cls.defaults
    update: dict[str, Any] = {}
    optimizer = cfg.optimizer or d.get("optimizer", "lars")
    same = optimizer == d.get("optimizer", "lars")
    update["optimizer"] = optimizer
    update["lr"] = cfg.lr or (d["lr"] if same and "lr" in d else DEFAULT_LR[optimizer])
    if cfg.weight_decay is None:
        update["weight_decay"] = d["weight_decay"] if same and "weight_decay" in d else DEFAULT_WEIGHT_DECAY
    # The rest of the method's recipe (train/methods/<name>.py `defaults`), unless the run sets it.
    for key, fallback in (("batch_size", 256), ("warmup_fraction", 0.05)):
        if getattr(cfg, key) is None:
            update[key] = d.get(key, fallback)
    if cfg.precision == "auto":
        # Emulated bf16 (AVX2, plain AVX-512) is slower than fp32; native bf16 measured faster (docs/benchmarks.md).
        on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        update["precision"] = "bf16" if on_cpu and hardware.native_bf16() else "fp32"
    fixed_size = accepts_option(cfg.backbone, "img_size")  # a ViT: position embeddings for one size
    if cfg.view_size is None and "view_scale" in d and not fixed_size:
        update["view_size"] = max(8, round(cfg.image_size * d["view_scale"]))
    if fixed_size:
        if cfg.view_size not in (None, cfg.image_size):
            raise ValueError(f"{cfg.backbone} has a fixed input size (its position embeddings), so it trains at "
                             f"the size it runs at: drop --view-size or set it to --image-size {cfg.image_size}")
        if "img_size" not in cfg.backbone_options:
            update["backbone_options"] = {**cfg.backbone_options, "img_size": cfg.image_size}
    return cfg.model_copy(update=update)


def method_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(cfg.method_options)
    if cfg.temperature is not None:
        from edgessl.train.methods import method_options

        if "temperature" not in method_options(cfg.method):
            raise ValueError(f"method {cfg.method!r} has no temperature; its options: "
                             f"{', '.join(method_options(cfg.method)) or 'none'}")
        kwargs.setdefault("temperature", cfg.temperature)
    return kwargs
