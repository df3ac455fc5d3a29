"""Image loading and transforms for classification: medical augmentations and the evaluation transform.

Loading (:func:`load_rgb`): every image becomes an 8-bit RGB ``PIL.Image``; grey images are replicated to
three channels (what ImageNet and MAE encoders expect). 8-bit PNG/JPEG/TIFF/BMP open with PIL; DICOM and
16-bit/float images go through ``core.data.imageio.read_image`` (which scales them to [0, 1]) and are then
quantised to 8 bits, which is ample for a classifier's input.

Evaluation (:func:`eval_transform`): exactly timm's ``create_transform`` with ``crop_mode="squash"`` and
``crop_pct=1``: the whole image is resized (bicubic, antialiased) to ``size x size`` (no crop, so a lesion
at the edge of an ultrasound frame is never cut away), to tensor, normalised. Fine-tuning, ensemble
evaluation, batch prediction and the benchmark's "plain timm" path all use this one transform, so
probabilities agree across them.

Training (:class:`TrainTransform`): on a float tensor ``[3, H, W]`` in [0, 1]: random resized crop, flips
(horizontal by default; vertical off by default because in ultrasound the skin line is at the top; turn it
on for dermoscopy or histology), small rotations, and intensity changes (brightness, contrast, gamma)
applied identically to the three channels, so grey images stay grey: no colour jitter.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.data.imageio import DEFAULT_MAX_PIXELS, ImageReadError, open_plain_8bit, read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AugmentConfig", "load_rgb", "load_8bit", "eval_transform", "TrainTransform",
           "to_float_tensor", "normalize"]


def load_rgb(path: str | Path) -> Image.Image:
    """Any supported image file as an 8-bit RGB PIL image (grey replicated to 3 channels)."""
    img = load_8bit(path)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_8bit(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any supported image file as an 8-bit PIL image, mode ``L`` (grey) or ``RGB``: the pixels
    ``core.data.imageio.read_image`` gives scan, entropy, MAE and the viewer (EXIF rotation applied, alpha
    composited on black, the pixel guard), so fine-tuning, ensembles and prediction see the same image.
    Resizing a grey image before replicating it to RGB gives exactly the same pixels at a third of the cost."""
    path = Path(path)
    plain = open_plain_8bit(path, max_pixels=max_pixels)
    if plain is not None:
        return plain
    try:
        data = read_image(path, max_pixels=max_pixels)
    except (ImageReadError, MemoryError):   # running out of memory is not the file's fault
        raise
    except Exception as exc:  # anything else a broken file throws
        raise ImageReadError(path, getattr(exc, "reason", None) or str(exc) or type(exc).__name__) from None
    arr = np.clip(np.asarray(data.array, dtype=np.float32), 0.0, 1.0)
    arr = (arr * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB")


def eval_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   interpolation: str = "bicubic") -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised float tensor [3, size, size] (timm's squash eval transform)."""
    from timm.data import create_transform

    return create_transform(input_size=(3, size, size), is_training=False, interpolation=interpolation,
                            crop_pct=1.0, crop_mode="squash", mean=tuple(mean), std=tuple(std))


def resize_pil(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """The resize step of :func:`eval_transform` alone (for caching 8-bit, already-resized images)."""
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[interpolation]
    return img.resize((size, size), resample)


def to_float_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 HWC (PIL or array) -> float [3, H, W] in [0, 1]."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


@dataclass
class AugmentConfig:
    """Training augmentations. Defaults are conservative for ultrasound/radiology."""

    scale: tuple[float, float] = (0.6, 1.0)   # random resized crop: area fraction kept
    ratio: tuple[float, float] = (0.8, 1.25)  # and aspect ratio range
    hflip: float = 0.5
    vflip: float = 0.0                        # on for dermoscopy / histology / endoscopy
    rotate_deg: float = 10.0                  # uniform in [-deg, deg]
    brightness: float = 0.15                  # additive, fraction of the range
    contrast: float = 0.15                    # multiplicative around the mean, 1 +- contrast
    gamma: tuple[float, float] = (0.8, 1.25)  # log-uniform
    p_intensity: float = 0.8                  # probability of applying the intensity changes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        d = dict(d or {})
        for k in ("scale", "ratio", "gamma"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class TrainTransform:
    """float [3, H, W] in [0, 1] (or uint8 PIL) -> augmented, normalised float [3, size, size].

    Random draws come from ``random`` (seeded per DataLoader worker by PyTorch), so runs repeat with a
    fixed seed.
    """

    def __init__(self, size: int, aug: AugmentConfig | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.size = int(size)
        self.aug = aug or AugmentConfig()
        self.mean = tuple(mean)
        self.std = tuple(std)

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        a = self.aug
        area = h * w
        for _ in range(10):
            target = area * random.uniform(*a.scale)
            log_r = (math.log(a.ratio[0]), math.log(a.ratio[1]))
            ar = math.exp(random.uniform(*log_r))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
        return 0, 0, h, w

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        x = img if isinstance(img, torch.Tensor) else to_float_tensor(img)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        a = self.aug
        _, h, w = x.shape
        top, left, ch, cw = self._crop_box(h, w)
        x = x[:, top:top + ch, left:left + cw]
        x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        if a.hflip and random.random() < a.hflip:
            x = x.flip(-1)
        if a.vflip and random.random() < a.vflip:
            x = x.flip(-2)
        if a.rotate_deg:
            angle = random.uniform(-a.rotate_deg, a.rotate_deg)
            if abs(angle) > 0.1:
                x = _rotate(x, angle)
        if a.p_intensity and random.random() < a.p_intensity:
            mean = x.mean()
            c = 1.0 + random.uniform(-a.contrast, a.contrast)
            b = random.uniform(-a.brightness, a.brightness)
            x = ((x - mean) * c + mean + b).clamp_(0.0, 1.0)
            g = math.exp(random.uniform(math.log(a.gamma[0]), math.log(a.gamma[1])))
            x = x.pow_(g)
        return normalize(x, self.mean, self.std)


def _rotate(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate [C, H, W] about its centre, zero (black) fill: the background of most medical images."""
    t = math.radians(angle_deg)
    cos, sin = math.cos(t), math.sin(t)
    _, h, w = x.shape
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype)[None]
    grid = F.affine_grid(theta, [1, x.shape[0], h, w], align_corners=False)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
