"""Fine-tuning settings: one dataclass, the single source of the defaults the CLI and the dialogs show."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.data.transforms import AugmentConfig
from core.models.backbones import TINY_CONVNEXT


@dataclass
class FinetuneConfig:
    backbone: str = "convnext_atto"
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
