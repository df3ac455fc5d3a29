"""Pretraining settings: one dataclass shared by every method, the single source of the CLI's and the
dialog's defaults; :data:`TRAIN_OPTIONS` adds help and ranges to its fields (a method's own options are
declared by the method, ``PretrainMethod.default_options`` / ``add_arguments``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from core.train.options import ConfigOptions, Option
from core.train.precision import PRECISION_HELP, PRECISIONS

# Runs written before the option names were aligned with fine-tuning's: old name -> new name.
RENAMED_KEYS = {"backbone_kwargs": "timm_kwargs", "clip_grad": "grad_clip", "workers": "num_workers"}


def current_names(d: dict) -> dict:
    """A stored config (or encoder metadata) with today's option names."""
    return {RENAMED_KEYS.get(k, k): v for k, v in d.items()}
# Config fields that must match for --resume (everything that changes the trajectory).
IDENTITY_KEYS = ("method", "backbone", "timm_kwargs", "image_size", "cell", "epochs", "batch_size",
                 "accum_steps", "lr", "min_lr", "weight_decay", "betas", "warmup_epochs", "grad_clip",
                 "seed", "hflip", "mean", "std", "options")


INIT_CHOICES = ("random", "imagenet", "pretrained")


@dataclass
class TrainConfig:
    method: str = "mae"
    data: str = ""                      # image folder
    files: list = field(default_factory=list)   # only these images (paths relative to data); empty = all
    out: str = ""                       # run folder
    backbone: str = "convnext_tiny"
    timm_kwargs: dict = field(default_factory=dict)   # timm kwargs (e.g. tiny depths/dims)
    image_size: int = 224
    cell: int = 32                      # mask cell = encoder total stride
    epochs: int = 100
    batch_size: int = 64                # images per micro-step, all processes together
    accum_steps: int = 1                # micro-steps per optimizer step
    lr: float = 5e-4                    # peak learning rate (absolute, not scaled by batch size)
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    warmup_epochs: float = 5.0
    grad_clip: float = 3.0              # max gradient L2 norm; 0 = no clipping
    seed: int = 0
    hflip: bool = True
    mean: tuple = IMAGENET_MEAN         # encoder input normalisation (recorded for fine-tuning)
    std: tuple = IMAGENET_STD
    options: dict = field(default_factory=dict)          # the method's own options
    # run settings (may change between a run and its resume)
    device: str | None = None
    precision: str = "auto"             # auto | fp32 | bf16 | fp16 (core.train.precision)
    num_workers: int = 0
    cache_mb: float = 2048
    checkpoint_epochs: int = 1          # save every N epochs (and at the end, on cancel)
    checkpoint_steps: int = 0           # also every N optimizer steps (0 = off)
    probe_size: int = 64                # images for the per-epoch collapse metrics
    max_nan_skips: int = 20             # consecutive non-finite steps before giving up
    max_steps: int | None = None        # stop (with a checkpoint) after this many optimizer steps in total
    init: str = "random"                # random | imagenet (the backbone's ImageNet weights) | pretrained
    init_weights: str | None = None     # pretrained: encoder weights to start from; imagenet: its weights file

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"], d["mean"], d["std"] = list(self.betas), list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = current_names(d)
        if "init" not in d:               # runs written before ``init``: encoder weights or nothing
            d = {**d, "init": "pretrained" if d.get("init_weights") else "random"}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.betas, cfg.mean, cfg.std = tuple(cfg.betas), tuple(cfg.mean), tuple(cfg.std)
        return cfg


TRAIN_OPTIONS = ConfigOptions(TrainConfig, {
    "backbone": Option("timm ConvNeXt / ConvNeXt-V2 name, e.g. convnext_atto, convnext_tiny, convnextv2_nano; the MAE "
                       "also takes an EfficientNet-Lite (efficientnet_lite0)"),
    "init": Option("the encoder's initial weights: random, imagenet (the backbone's ImageNet weights, found as "
                   "fine-tuning finds them; --init-weights names the file) or pretrained (--init-weights)",
                   choices=INIT_CHOICES),
    "image_size": Option("images are resized to this square size, a multiple of 32", min=32, max=1024),
    "cache_mb": Option("keep resized images in memory up to this size (MB)", min=0.0),
    "num_workers": Option("data loader processes", min=0),
    "epochs": Option("training epochs", min=1, max=10000),
    "batch_size": Option("images per step over all processes", min=1, max=4096),
    "accum_steps": Option("gradient accumulation: micro-batches per optimizer step", min=1),
    "lr": Option("peak AdamW learning rate", min=1e-6, max=1.0),
    "min_lr": Option("final learning rate", min=0.0),
    "weight_decay": Option("AdamW weight decay", min=0.0),
    "warmup_epochs": Option("linear warm-up, then cosine decay per iteration", min=0.0),
    "grad_clip": Option("clip the gradient L2 norm; 0 = off", min=0.0),
    "seed": Option("seed of the data order, the masks and the initialisation", min=0),
    "device": Option("cpu, cuda, cuda:1 (default: CUDA when present)"),
    "precision": Option(PRECISION_HELP, choices=PRECISIONS),
    "checkpoint_epochs": Option("save a checkpoint every N epochs", min=1),
    "checkpoint_steps": Option("also save every N optimizer steps; 0 = off", min=0),
    "max_steps": Option("stop (with a checkpoint) after this many optimizer steps in total; resume later", min=1),
})
