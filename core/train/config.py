"""Fine-tuning settings: one dataclass, the single source of the defaults the CLI and the dialogs show.

:data:`FINETUNE_OPTIONS` (and :data:`AUGMENT_OPTIONS` for the augmentations the CLI exposes) add help and
ranges to the fields; ``core/cli/finetune.py`` and the fine-tuning dialog read defaults, ranges and help
from there. The default backbone is the paper's member A, ConvNeXt-Tiny (ImageNet weights
``convnext_tiny.fb_in1k``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.data.transforms import AugmentConfig
from core.models.backbones import TINY_CONVNEXT
from core.models.tta import TTA_CHOICES
from core.train.options import ConfigOptions, Option
from core.train.precision import PRECISION_HELP, PRECISIONS


@dataclass
class FinetuneConfig:
    backbone: str = "convnext_tiny"
    tiny: bool = False                    # core.models.backbones.TINY_CONVNEXT dims (tests)
    timm_kwargs: dict = field(default_factory=dict)
    init: str = "imagenet"                # imagenet | pretrained (init_weights = checkpoint) | random
    init_weights: str | None = None       # imagenet: optional file; pretrained: MAE run / encoder / checkpoint
    image_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4                      # peak lr of the head; layer i gets lr * layer_decay ** (depth - i)
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float | None = 0.75      # None/1.0 = off; forced off for random init
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    balance: str = "sampler"              # sampler | loss | none
    patience: int = 8                     # epochs without better val balanced accuracy before stopping
    grad_clip: float | None = 1.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    num_workers: int | None = None        # None: min(2, cpus) (augmentation in worker processes)
    cache_mb: float = 2048
    device: str | None = None
    precision: str = "auto"              # auto | fp32 | bf16 | fp16 (core.train.precision)
    tta: str = "none"                    # none | hflip (core.models.tta): every evaluation and prediction
    aug: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aug"] = self.aug.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        d = dict(d)
        if "amp" in d and "precision" not in d:   # configs written before the precision setting
            d["precision"] = "auto" if d["amp"] else "fp32"
        d["aug"] = AugmentConfig.from_dict(d.get("aug"))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def model_kwargs(self) -> dict:
        kw = dict(TINY_CONVNEXT) if self.tiny else {}
        kw.update(self.timm_kwargs)
        if self.drop_path and "drop_path_rate" not in kw:
            kw["drop_path_rate"] = self.drop_path
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}


FINETUNE_OPTIONS = ConfigOptions(FinetuneConfig, {
    "backbone": Option("timm model name"),
    "image_size": Option("square input size in pixels", min=32, max=1024),
    "drop_path": Option("stochastic depth rate", min=0.0, max=1.0),
    "epochs": Option("training epochs", min=1, max=10000),
    "batch_size": Option("images per step, all processes together", min=1, max=4096),
    "lr": Option("peak learning rate (of the head)", min=1e-6, max=1.0),
    "min_lr": Option("final learning rate of the cosine schedule", min=0.0),
    "weight_decay": Option("AdamW weight decay", min=0.0),
    "layer_decay": Option("layer-wise lr decay (1 = off)", min=0.0, max=1.0),
    "warmup_epochs": Option("linear warm-up epochs before the cosine decay", min=0.0),
    "label_smoothing": Option("label smoothing of the cross-entropy", min=0.0, max=1.0),
    "balance": Option("class balancing: balanced sampling, class-weighted loss, or none",
                      choices=("sampler", "loss", "none")),
    "patience": Option("early stopping on val balanced accuracy: epochs without a better one", min=1, max=1000),
    "seed": Option("seed of the split, the sampling and the initialisation", min=0),
    "val_fraction": Option("fraction of the images (per class) used for validation", min=0.05, max=0.5),
    "test_fraction": Option("fraction of the images held out for the test (ignored with --kfold: test = held-out "
                            "fold)", min=0.0, max=0.5),
    "num_workers": Option("DataLoader worker processes (none given: min(2, CPU count))", min=0),
    "device": Option("cpu, cuda, cuda:1 (default: CUDA when present)"),
    "precision": Option(PRECISION_HELP, choices=PRECISIONS),
    "tta": Option("test-time augmentation of every evaluation and prediction of the model: hflip averages the "
                  "logits of the image and its mirror (twice the inference time)", choices=TTA_CHOICES),
})

AUGMENT_OPTIONS = ConfigOptions(AugmentConfig, {
    "vflip": Option("vertical flip probability (0 for ultrasound)", min=0.0, max=1.0),
    "rotate_deg": Option("max rotation in degrees", min=0.0, max=180.0),
})
