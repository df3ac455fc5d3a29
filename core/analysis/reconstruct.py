"""What a masked autoencoder sees and predicts: per image, a panel of five views.

    original | entropy heatmap | hidden cells | reconstruction | reconstruction pasted into the hidden cells

Used by ``medssl reconstruct CKPT IMAGE...`` and by the desktop viewer (``reconstruct`` gives the arrays,
``Reconstruction.views()`` the five RGB images, ``panel_image`` the labelled strip). No Qt here.

The model predicts per-cell-normalised pixels (its loss is scale-free per 32 x 32 cell), so a predicted
cell is shown at the original cell's mean and contrast, as in MAE's own visualisation: the panel shows
the predicted *structure*; brightness and contrast of a hidden cell come from the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["Reconstruction", "reconstruct", "panel_image", "save_panel", "load_mae", "VIEW_TITLES"]

VIEW_TITLES = ("original", "cell entropy", "hidden cells", "reconstruction", "visible + reconstruction")
HIDDEN_RGB = (0.30, 0.32, 0.42)


@dataclass
class Reconstruction:
    """One image. Arrays are float in [0, 1], ``[S, S]``; ``entropy`` and ``mask`` are ``[h, w]``."""

    name: str
    original: np.ndarray
    entropy: np.ndarray          # bits per cell
    mask: np.ndarray             # bool, True = hidden
    reconstruction: np.ndarray   # whole predicted image (hidden cells are what the model was trained on)
    pasted: np.ndarray           # original in visible cells, prediction in hidden cells
    masked_loss: float           # the training loss of this image (MSE, normalised pixels, hidden cells)
    max_entropy: float = 6.0     # colour-scale top (log2 of the histogram bins)

    def cell_mask(self) -> np.ndarray:
        """mask upsampled to pixels: bool [S, S]."""
        f = self.original.shape[0] // self.mask.shape[0]
        return np.kron(self.mask, np.ones((f, f), dtype=bool)).astype(bool)

    def entropy_range(self, scale: str = "image") -> tuple[float, float]:
        """Colour range of the entropy view: this image's min..max cell entropy (``"image"``: what the
        sampler compares) or 0..log2(bins) (``"fixed"``: comparable across images)."""
        lo, hi = float(self.entropy.min()), float(self.entropy.max())
        return (lo, hi) if scale == "image" and hi - lo > 1e-6 else (0.0, self.max_entropy)

    def views(self, entropy_scale: str = "image") -> list[np.ndarray]:
        """The five views as uint8 RGB [S, S, 3], in ``VIEW_TITLES`` order."""
        from core.analysis.entropy import apply_colormap

        grey = np.repeat(self.original[..., None], 3, axis=2)
        f = self.original.shape[0] // self.entropy.shape[0]
        heat = apply_colormap(np.kron(self.entropy, np.ones((f, f))), *self.entropy_range(entropy_scale)) / 255.0
        heat = 0.65 * heat + 0.35 * grey
        hidden = grey.copy()
        hidden[self.cell_mask()] = HIDDEN_RGB
        recon = np.repeat(self.reconstruction[..., None], 3, axis=2)
        pasted = np.repeat(self.pasted[..., None], 3, axis=2)
        return [np.clip(np.round(v * 255), 0, 255).astype(np.uint8) for v in (grey, heat, hidden, recon, pasted)]


def load_mae(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """(model, TrainConfig) of an MAE checkpoint or run folder."""
    from core.pretrain.trainer import load_checkpoint_model

    model, config, _ = load_checkpoint_model(checkpoint, device)
    if not hasattr(model, "predict"):
        raise ValueError(f"{checkpoint}: a {config.method!r} checkpoint has no pixel decoder to reconstruct with")
    return model, config


@torch.no_grad()
def reconstruct(model, config, images: Sequence, *, names: Sequence[str] | None = None,
                mask_ratio: float | None = None, seed: int = 0, masks: torch.Tensor | None = None) -> list[Reconstruction]:
    """Mask, encode and decode ``images`` (paths, or grey arrays [H, W] in [0, 1]) with an MAE ``model``.

    Masks come from the checkpoint's entropy sampler settings (``mask_ratio`` overrides the ratio),
    seeded by ``seed`` + image position, unless ``masks`` (bool [B, h, w]) are given.
    """
    from core.analysis.entropy import cell_entropy, max_entropy
    from core.analysis.masking import sample_mask
    from core.pretrain.data import load_grey_resized, resize_grey
    from core.pretrain.mae import masked_mean, patchify, unpatchify

    size, cell, opts = config.image_size, config.cell, config.options
    greys = []
    for img in images:
        if isinstance(img, (str, Path)):
            greys.append(load_grey_resized(img, size))
        else:
            greys.append(resize_grey(torch.as_tensor(np.asarray(img, dtype=np.float32)), size))
    grey = torch.stack(greys)                                          # [B, S, S]
    names = list(names) if names is not None else [Path(i).stem if isinstance(i, (str, Path)) else f"image{k}"
                                                   for k, i in enumerate(images)]
    bins = int(opts.get("entropy_bins", 64))
    ent = cell_entropy(grey, cell=cell, bins=bins)                     # [B, h, w]
    if masks is None:
        ratio = float(mask_ratio if mask_ratio is not None else opts["mask_ratio"])
        masks = torch.cat([sample_mask(ent[i:i + 1], ratio=ratio, tau=float(opts["tau"]), eps=float(opts["eps"]),
                                       mode=opts["entropy_mode"], generator=seed + i) for i in range(len(greys))])
    device = next(model.parameters()).device
    x = grey[:, None].expand(-1, 3, -1, -1).to(device)                # [B, 3, S, S]
    m = masks.to(device)
    model.eval()
    err, pred = model(x, m)                                            # [B, L], [B, 3, S, S]
    loss = masked_mean(err.float(), m.flatten(1).float())              # [B]
    # un-normalise each cell with the original cell's mean and std (see module docstring)
    t = patchify(x.float(), cell)                                      # [B, L, c*c*3]
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True, unbiased=False)
    p = patchify(pred.float(), cell) * (var + model.norm_pix_eps).sqrt() + mean
    h = w = size // cell
    recon = unpatchify(p, cell, h, w).mean(1).clamp(0, 1).cpu()        # [B, S, S]
    keep_px = (~masks)[:, None].repeat_interleave(cell, 2).repeat_interleave(cell, 3)[:, 0]
    pasted = torch.where(keep_px, grey, recon)
    return [Reconstruction(names[i], grey[i].numpy(), ent[i].numpy(), masks[i].numpy(), recon[i].numpy(),
                           pasted[i].numpy(), float(loss[i]), max_entropy(bins)) for i in range(len(greys))]


def panel_image(rec: Reconstruction, *, min_side: int = 256, titles: bool = True,
                entropy_scale: str = "image") -> np.ndarray:
    """The five views side by side (each upscaled to at least ``min_side`` px), with titles: uint8 RGB."""
    from PIL import Image, ImageDraw

    views = rec.views(entropy_scale)
    lo, hi = rec.entropy_range(entropy_scale)
    S = views[0].shape[0]
    scale = max(1, -(-min_side // S))
    side, gap, head = S * scale, 4, 18 if titles else 0
    canvas = Image.new("RGB", (5 * side + 4 * gap, side + head + (16 if titles else 0)), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for i, (v, title) in enumerate(zip(views, VIEW_TITLES)):
        im = Image.fromarray(v).resize((side, side), Image.NEAREST)
        x = i * (side + gap)
        canvas.paste(im, (x, head))
        if titles:
            if i == 1:
                title = f"{title} ({lo:.1f}-{hi:.1f} bits)"
            draw.text((x + 4, 3), title, fill=(230, 230, 230))
    if titles:
        hidden = int(rec.mask.sum())
        draw.text((4, head + side + 2), f"{rec.name}: {hidden}/{rec.mask.size} cells hidden, "
                  f"masked loss {rec.masked_loss:.3f} (cell brightness/contrast from the original)",
                  fill=(200, 200, 200))
    return np.asarray(canvas)


def save_panel(rec: Reconstruction, path: str | Path, **kw) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel_image(rec, **kw)).save(path)
    return path
