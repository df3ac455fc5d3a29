"""Augmentations of the contrastive methods: a registry of small ops on one image tensor.

Every op is a callable ``op(x, g, info) -> x``: ``x`` float [C, H, W] (C = 1 grey or 3 colour, values in
[0, 1] except after DAD), ``g`` a ``torch.Generator`` seeded per sample by the caller (so views do not
depend on batch composition, workers or DDP rank), ``info`` a :class:`ViewInfo` (is the image colour, its
modality). Ops are registered like timm models: ``@register_augment("name")``, ``get_augment(name, **kw)``,
``list_augments()``; :func:`simclr_ops` builds the SimCLR chain.

SimCLR ops (Chen et al. 2020, as used by Azizi et al. 2021 for MICLe): random resized crop, horizontal
flip, brightness/contrast, colour jitter + random grey (**colour images only**: a grey ultrasound never
becomes colour), Gaussian blur (sigma in pixels scaled by image size / 224, kernel ~10 % of the side).

Hierarchical jigsaw (FG-SSL, Park & Ryu 2024): the image is cut into ``n x n`` blocks (block side =
size // n, so the same ``n`` list works at any resolution; rows/columns left over when the size is not a
multiple of ``n`` stay in place) and the blocks are shuffled by a uniform random permutation.

Domain-adaptive denormalization (DAD; Wen et al. 2023, formula not public; ours is AdaIN-style)::

    x' = sigma_t * (x - mu_s) / sigma_s + mu_t

``(mu_s, sigma_s)`` are the view's own intensity statistics by default (``source="image"``: then x' has
exactly the target mean and std) or its modality's (``source="modality"``); ``(mu_t, sigma_t)`` belong to a
*different* modality drawn at random (the same one when the data set has a single modality: DAD then only
maps every image onto the data set's intensity distribution). With probability ``mix_p`` the target is a
random convex mix ``lam * target + (1 - lam) * source`` (lam ~ U(0, 1)) so intermediate "domains" are seen
too. Statistics are scalars over all pixels and channels of a modality, computed once per data set from the
training-size images (:func:`compute_modality_stats`) and cached in a JSON file keyed by the data set's
content fingerprint and image size (:func:`modality_stats_cached`). The result is not clipped to [0, 1]
(clipping would break the mean/std match); put DAD last in a chain.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torchvision.transforms.v2 import functional as TF

from core.atomic import write_json_atomic

__all__ = ["ViewInfo", "Compose", "register_augment", "get_augment", "list_augments", "simclr_ops",
           "jigsaw", "IntensityStats", "compute_modality_stats", "modality_stats_cached", "dad",
           "UNKNOWN_MODALITY"]

UNKNOWN_MODALITY = "_unknown"
_AUGMENTS: dict[str, Callable[..., Any]] = {}


@dataclass
class ViewInfo:
    is_color: bool = False
    modality: str | None = None
    extra: dict = field(default_factory=dict)


def register_augment(name: str):
    def deco(factory):
        if name in _AUGMENTS and _AUGMENTS[name] is not factory:
            raise ValueError(f"augmentation {name!r} is already registered")
        _AUGMENTS[name] = factory
        return factory
    return deco


def get_augment(name: str, **kwargs):
    """An op instance: ``get_augment("jigsaw", n=4)``."""
    if name not in _AUGMENTS:
        raise ValueError(f"unknown augmentation {name!r}; available: {', '.join(list_augments())}")
    return _AUGMENTS[name](**kwargs)


def list_augments() -> list[str]:
    return sorted(_AUGMENTS)


def _rand(g: torch.Generator | None) -> float:
    return float(torch.rand((), generator=g))


def _uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(g)


class Compose:
    """Apply ops in order."""

    def __init__(self, ops: Sequence[Callable]):
        self.ops = list(ops)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None, info: ViewInfo | None = None):
        info = info or ViewInfo()
        for op in self.ops:
            x = op(x, g, info)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(o).__name__ for o in self.ops)})"


# -- SimCLR ops -----------------------------------------------------------------------------------------
@register_augment("random_resized_crop")
class RandomResizedCrop:
    """torchvision's RandomResizedCrop sampling (10 tries, then a centre crop), bilinear + antialias."""

    def __init__(self, size: int | None = None, scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def params(self, h: int, w: int, g) -> tuple[int, int, int, int]:
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_r))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                return top, left, ch, cw
        ratio = w / h
        if ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, x, g, info):
        h, w = x.shape[-2:]
        size = self.size or h
        top, left, ch, cw = self.params(h, w, g)
        return TF.resized_crop(x, top, left, ch, cw, [size, size], antialias=True)


@register_augment("hflip")
class HorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x, g, info):
        return x.flip(-1) if _rand(g) < self.p else x


@register_augment("brightness_contrast")
class BrightnessContrast:
    """Brightness factor and contrast factor in [1 - s, 1 + s], applied with probability ``p``."""

    def __init__(self, p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4):
        self.p, self.brightness, self.contrast = p, brightness, contrast

    def __call__(self, x, g, info):
        if _rand(g) >= self.p:
            return x
        b = _uniform(g, max(0.0, 1 - self.brightness), 1 + self.brightness)
        c = _uniform(g, max(0.0, 1 - self.contrast), 1 + self.contrast)
        if _rand(g) < 0.5:
            return TF.adjust_contrast(TF.adjust_brightness(x, b), c)
        return TF.adjust_brightness(TF.adjust_contrast(x, c), b)


@register_augment("color_jitter")
class ColorJitter:
    """Saturation and hue jitter; a no-op on grey images (``info.is_color`` False or one channel)."""

    def __init__(self, p: float = 0.8, saturation: float = 0.4, hue: float = 0.1):
        self.p, self.saturation, self.hue = p, saturation, hue

    def __call__(self, x, g, info):
        if not info.is_color or x.shape[0] != 3 or _rand(g) >= self.p:
            return x
        x = TF.adjust_saturation(x, _uniform(g, max(0.0, 1 - self.saturation), 1 + self.saturation))
        return TF.adjust_hue(x, _uniform(g, -self.hue, self.hue))


@register_augment("random_grayscale")
class RandomGrayscale:
    """Colour image -> luminance in 3 channels with probability ``p``; no-op on grey images."""

    def __init__(self, p: float = 0.2):
        self.p = p

    def __call__(self, x, g, info):
        if not info.is_color or x.shape[0] != 3 or _rand(g) >= self.p:
            return x
        return TF.rgb_to_grayscale(x, num_output_channels=3)


@register_augment("gaussian_blur")
class GaussianBlur:
    """Blur with probability ``p``; sigma ~ U(sigma) * side / 224 px, odd kernel ~ 10 % of the side."""

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0), ref_size: int = 224):
        self.p, self.sigma, self.ref_size = p, tuple(sigma), ref_size

    def __call__(self, x, g, info):
        if _rand(g) >= self.p:
            return x
        side = min(x.shape[-2:])
        sigma = _uniform(g, *self.sigma) * side / self.ref_size
        k = max(3, int(0.1 * side) // 2 * 2 + 1)
        return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def simclr_ops(size: int | None = None, *, crop_scale: tuple[float, float] = (0.2, 1.0),
               blur_p: float = 0.5, strength: float = 0.4, hflip_p: float = 0.5) -> Compose:
    """The SimCLR chain (crop, flip, brightness/contrast, colour jitter + grey for colour images, blur)."""
    return Compose([RandomResizedCrop(size, crop_scale), HorizontalFlip(hflip_p),
                    BrightnessContrast(0.8, strength, strength), ColorJitter(0.8, strength, strength / 4),
                    RandomGrayscale(0.2), GaussianBlur(blur_p)])


register_augment("simclr")(simclr_ops)


# -- hierarchical jigsaw --------------------------------------------------------------------------------
def jigsaw(x: torch.Tensor, n: int, g: torch.Generator | None = None,
           perm: torch.Tensor | None = None) -> torch.Tensor:
    """Shuffle the ``n x n`` blocks of ``x`` [..., H, W] (block = H // n x W // n; leftovers stay put)."""
    h, w = x.shape[-2:]
    if n < 1 or n > min(h, w):
        raise ValueError(f"jigsaw needs 1 <= n <= image side, got n={n} for {h}x{w}")
    if n == 1:
        return x
    bh, bw = h // n, w // n
    if perm is None:
        perm = torch.randperm(n * n, generator=g)
    lead = x.shape[:-2]
    core = x[..., :n * bh, :n * bw].reshape(*lead, n, bh, n, bw)
    blocks = core.movedim(-2, -3).reshape(*lead, n * n, bh, bw)              # [..., n*n, bh, bw]
    blocks = blocks[..., perm, :, :]
    core = blocks.reshape(*lead, n, n, bh, bw).movedim(-3, -2).reshape(*lead, n * bh, n * bw)
    out = x.clone()
    out[..., :n * bh, :n * bw] = core
    return out


@register_augment("jigsaw")
class Jigsaw:
    def __init__(self, n: int = 4):
        self.n = int(n)

    def __call__(self, x, g, info):
        return jigsaw(x, self.n, g)


@register_augment("hierarchical_jigsaw")
class HierarchicalJigsaw:
    """One jigsaw view per granularity ``ns`` (blocks per side) of the same image -> list of tensors."""

    def __init__(self, ns: Sequence[int] = (8, 4, 2)):
        self.ns = [int(n) for n in ns]

    def __call__(self, x, g, info) -> list[torch.Tensor]:
        return [jigsaw(x, n, g) for n in self.ns]


# -- domain-adaptive denormalization -------------------------------------------------------------------
@dataclass(frozen=True)
class IntensityStats:
    mean: float
    std: float
    pixels: int = 0


def _key(modality: str | None) -> str:
    return modality if modality else UNKNOWN_MODALITY


def compute_modality_stats(items: Iterable[tuple[torch.Tensor, str | None]]) -> dict[str, IntensityStats]:
    """Pooled mean/std over all pixels (and channels) of each modality's images (float64 sums)."""
    acc: dict[str, list[float]] = {}
    for x, modality in items:
        x = x.detach().double()
        s = acc.setdefault(_key(modality), [0.0, 0.0, 0])
        s[0] += float(x.sum())
        s[1] += float((x * x).sum())
        s[2] += x.numel()
    out = {}
    for k, (s1, s2, n) in acc.items():
        mean = s1 / n
        out[k] = IntensityStats(mean, math.sqrt(max(s2 / n - mean * mean, 0.0)), int(n))
    return out


def modality_stats_cached(cache_file: str | Path | None, key: str,
                          compute: Callable[[], dict[str, IntensityStats]]) -> dict[str, IntensityStats]:
    """Stats from ``cache_file`` when its ``key`` matches, else ``compute()`` and write the file atomically."""
    if cache_file is not None:
        path = Path(cache_file)
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return {k: IntensityStats(**v) for k, v in data["stats"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    stats = compute()
    if cache_file is not None:
        try:
            write_json_atomic(path, {"key": key, "stats": {k: vars(v) for k, v in stats.items()}}, indent=1)
        except OSError:
            pass  # a read-only data folder: the stats are just recomputed next time
    return stats


def dad(x: torch.Tensor, src_mean: float, src_std: float, tgt_mean: float, tgt_std: float,
        eps: float = 1e-6) -> torch.Tensor:
    """x' = tgt_std * (x - src_mean) / src_std + tgt_mean (a constant image is only shifted)."""
    if src_std < eps:
        return x - src_mean + tgt_mean
    return (x - src_mean) * (tgt_std / src_std) + tgt_mean


@register_augment("dad")
class DomainAdaptiveDenorm:
    """DAD towards a random other modality's statistics (see the module docstring)."""

    def __init__(self, stats: dict[str, IntensityStats], p: float = 0.8, source: str = "image",
                 mix_p: float = 0.5):
        if source not in ("image", "modality"):
            raise ValueError(f"DAD source must be 'image' or 'modality', got {source!r}")
        if not stats:
            raise ValueError("DAD needs statistics of at least one modality")
        self.stats, self.p, self.source, self.mix_p = dict(stats), p, source, mix_p
        self.names = sorted(self.stats)

    def target(self, modality: str | None, g) -> str:
        src = _key(modality)
        others = [m for m in self.names if m != src] or self.names
        return others[int(torch.randint(len(others), (1,), generator=g))] if len(others) > 1 else others[0]

    def __call__(self, x, g, info):
        if _rand(g) >= self.p:
            return x
        src_key = _key(info.modality)
        if self.source == "modality" and src_key in self.stats:
            mu_s, sd_s = self.stats[src_key].mean, self.stats[src_key].std
        else:
            mu_s, sd_s = float(x.mean()), float(x.std(unbiased=False))
        t = self.stats[self.target(info.modality, g)]
        mu_t, sd_t = t.mean, t.std
        if _rand(g) < self.mix_p:
            lam = _rand(g)
            mu_t, sd_t = lam * mu_t + (1 - lam) * mu_s, lam * sd_t + (1 - lam) * sd_s
        return dad(x, mu_s, sd_s, mu_t, sd_t)
