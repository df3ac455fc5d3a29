"""Self-supervised pretraining methods: a registry plus one shared trainer.

A *method* is an object registered under a name (``@register_method("mae")``); the shared trainer
(``core.pretrain.trainer``) does everything else: data loading, AdamW with a per-iteration cosine
schedule, gradient accumulation and clipping, autocast, NaN guard, checkpoints, resume, DDP, progress.
Add a method by dropping ``core/pretrain/<name>.py`` that defines and registers it; ``get_method`` and
``list_methods`` find it by module name, and ``medssl pretrain <name>`` appears on the command line.

The method interface (keep it this small)::

    class MyMethod(PretrainMethod):
        name = "simclr"
        dataset = "images"          # which dataset/pair sampler feeds it (core.pretrain.data.DATASETS)
        def add_arguments(self, parser): ...          # its own CLI options (argparse)
        def default_options(self) -> dict: ...        # those options with defaults (JSON-able)
        def build(self, config) -> nn.Module: ...     # the trainable module; encoder at `.encoder`
        def loss(self, model, batch, step) -> (loss, metrics): ...

* ``config`` is the trainer's ``TrainConfig``: ``config.backbone``, ``config.timm_kwargs``,
  ``config.image_size``, ``config.options`` (the method's own options), ...
* ``model.encoder`` must be a timm ConvNeXt whose ``state_dict()`` loads into
  ``timm.create_model(config.backbone, **config.timm_kwargs)`` with strict keys except ``head.*`` (and
  ``norm_pre.*``): that is what ``encoder.safetensors`` holds and what fine-tuning loads.
* ``batch`` is what the dataset's collate gives (for ``"images"``: ``image`` float [B, 3, S, S] in [0, 1],
  ``entropy`` [B, h, w], ``index`` [B]), still on the CPU; ``step`` is a :class:`StepContext`.
* ``loss`` returns a scalar tensor (the trainer divides by the accumulation count and calls backward)
  and a dict of float metrics for the log. The loss must be a mean over samples so that DDP (which
  averages gradients over ranks) equals one process with the same global batch.
* Randomness that belongs to a sample (masks, views) should come from ``step.generator(index)``: it is
  seeded by (seed, epoch, dataset index, salt), so results do not depend on batch composition, rank or
  interruption (bit-exact resume, DDP == single process).

Functions for fine-tuning (``load_encoder_weights``, ``export_encoder``) live in ``core.pretrain.trainer``
and are re-exported here lazily (importing this module does not import torch).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["PretrainMethod", "StepContext", "register_method", "get_method", "list_methods",
           "load_encoder_weights", "export_encoder"]

# Modules of this package that are infrastructure, not methods.
_NOT_METHODS = {"data", "trainer", "cli"}
_METHODS: dict[str, "PretrainMethod"] = {}


class PretrainMethod:
    """Base class of a pretraining method (see the module docstring for the contract)."""

    name: str = ""
    dataset: str = "images"
    help: str = ""          # one line for `medssl pretrain --help`
    description: str = ""   # longer text for `medssl pretrain NAME --help`

    def add_arguments(self, parser) -> None:
        """Add this method's own options to its argparse sub-command (dest = key in default_options)."""

    def default_options(self) -> dict[str, Any]:
        return {}

    def check_options(self, options: dict[str, Any], config) -> None:
        """Raise ValueError for bad options; may fill in derived defaults (called before any work, and
        the filled-in ``options`` are what the checkpoint records)."""

    def build(self, config) -> "torch.nn.Module":
        raise NotImplementedError

    def build_optimizer(self, param_groups: list[dict], config) -> "torch.optim.Optimizer":
        """The optimiser over the trainer's decay / no-decay groups; AdamW unless a method needs another
        (SimCLR's LARS)."""
        import torch

        return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas))

    def loss(self, model, batch: dict, step: "StepContext") -> tuple["torch.Tensor", dict[str, float]]:
        raise NotImplementedError


@dataclass
class StepContext:
    """What a method's ``loss`` sees about the current micro-step."""

    epoch: int
    global_step: int          # optimizer steps done before this one
    total_steps: int
    seed: int
    device: "torch.device"
    autocast_dtype: "torch.dtype | None" = None
    rank: int = 0
    world_size: int = 1
    options: dict = field(default_factory=dict)   # the method's options (config.options)

    def generator(self, index: int, salt: int = 0) -> "torch.Generator":
        """CPU generator seeded by (seed, epoch, dataset index, salt): per-sample, batch-independent."""
        import torch

        g = torch.Generator()
        g.manual_seed(sample_seed(self.seed, self.epoch, int(index), salt))
        return g


def sample_seed(seed: int, epoch: int, index: int, salt: int = 0) -> int:
    """A 63-bit seed mixing (seed, epoch, index, salt) (splitmix64 steps; stable across runs/platforms)."""
    x = 0
    for part in (seed, epoch, index, salt):
        x = (x ^ (part & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x = z ^ (z >> 31)
    return x >> 1


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_method("mae") class MAE(PretrainMethod): ...`` registers an instance."""
    def deco(cls: type) -> type:
        if name in _METHODS and type(_METHODS[name]) is not cls:
            raise ValueError(f"pretraining method {name!r} is already registered "
                             f"by {type(_METHODS[name]).__module__}")
        instance = cls()
        instance.name = name
        _METHODS[name] = instance
        return cls
    return deco


def _method_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if m.name not in _NOT_METHODS and not m.name.startswith("_"))


def get_method(name: str) -> PretrainMethod:
    """The registered method ``name``; imports ``core.pretrain.<name>`` on first use, and every method
    module when no module has that name (one file may register several methods: simclr.py has micle)."""
    if name not in _METHODS and name in _method_modules():
        importlib.import_module(f"{__name__}.{name}")
    if name not in _METHODS:
        list_methods()
    if name not in _METHODS:
        raise ValueError(f"unknown pretraining method {name!r}; available: {', '.join(list_methods()) or 'none'}")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Names of all methods (imports every method module of this package once)."""
    for module in _method_modules():
        importlib.import_module(f"{__name__}.{module}")
    return sorted(_METHODS)
