"""Entropy-guided mask sampling for the masked autoencoder.

Which cells to hide. Given per-cell entropies ``H`` (bits, ``[B, h, w]``, from
``core.analysis.entropy.cell_entropy``; one cell = one encoder token), a mask ratio ``r``, a temperature ``tau``,
a uniform mix ``eps`` and a mode:

    w = (1 - eps) * softmax(s * H / tau) + eps / L        L = h * w cells, s = +1 (mode "high"), -1 ("low")

and exactly ``round(r * L)`` cells per image are hidden, drawn without replacement with probability
proportional to ``w`` (successive sampling). Mode ``"random"`` ignores ``H`` (``w = 1/L``): plain uniform
MAE masking. ``eps = 1`` gives exactly the same masks as ``"random"`` for the same seed.

Why "high" is the default: the paper's exact entropy definition and masking rule are not public. MO-MAE,
by the same authors, masks high-complexity (high-entropy) regions preferentially, so the model has to
reconstruct texture and lesion borders rather than flat background or acoustic shadow; we follow that.
``tau`` and ``eps`` are our defaults, not the paper's (not tuned yet): with ``tau = 1`` a cell one bit
above another is e (~2.7) times as likely to be drawn first; ``eps = 0.1`` keeps every cell possible.

Sampling uses Efraimidis–Spirakis keys: ``k = log(u) / w`` with ``u ~ U(0, 1)``; the ``n`` largest keys
are the sample (equivalent to drawing one cell at a time with probability proportional to ``w`` among
those left). It is batched (one ``topk`` for the whole batch), seeded and deterministic: the uniform
numbers are drawn in float64 on the generator's device (CPU for an int seed), so the same seed gives
the same masks on CPU and GPU.
"""

from __future__ import annotations

import torch

__all__ = ["MODES", "num_masked", "mask_weights", "sample_mask"]

MODES = ("high", "low", "random")
DEFAULT_RATIO = 0.6
DEFAULT_TAU = 1.0
DEFAULT_EPS = 0.1


def num_masked(num_cells: int, ratio: float) -> int:
    """Cells hidden per image: ``round(ratio * num_cells)`` (Python rounding, half to even)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio!r}")
    return min(num_cells, max(0, int(round(ratio * num_cells))))


def _as_batch(entropy) -> tuple[torch.Tensor, bool]:
    e = torch.as_tensor(entropy)
    single = e.ndim == 2
    if single:
        e = e[None]
    if e.ndim != 3:
        raise ValueError(f"entropy must be [B, h, w] (or [h, w]), got shape {tuple(e.shape)}")
    return e, single


def mask_weights(entropy, tau: float = DEFAULT_TAU, eps: float = DEFAULT_EPS, mode: str = "high") -> torch.Tensor:
    """Sampling weights ``w`` (float64, each image sums to 1), same shape as ``entropy``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not tau > 0:
        raise ValueError(f"temperature tau must be > 0, got {tau!r}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"uniform mix eps must be in [0, 1], got {eps!r}")
    e, single = _as_batch(entropy)
    B, h, w = e.shape
    L = h * w
    flat = e.reshape(B, L).to(torch.float64)
    if mode == "random":
        weights = torch.full_like(flat, 1.0 / max(L, 1))
    else:
        if L and not bool(torch.isfinite(flat).all()):
            raise ValueError("entropy contains NaN or infinite values")
        sign = 1.0 if mode == "high" else -1.0
        weights = (1.0 - eps) * torch.softmax(sign * flat / tau, dim=1) + eps / max(L, 1)
    weights = weights.view(B, h, w)
    return weights[0] if single else weights


def _uniform(shape: tuple[int, int], generator) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, dtype=torch.float64)
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator)}")
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)


def sample_mask(entropy, ratio: float = DEFAULT_RATIO, tau: float = DEFAULT_TAU, eps: float = DEFAULT_EPS,
                mode: str = "high", generator: torch.Generator | int | None = None) -> torch.Tensor:
    """Choose the cells to hide: bool ``[B, h, w]``, True = hidden (removed), False = visible.

    Exactly ``num_masked(h * w, ratio)`` cells are True in every image. ``generator``: a
    ``torch.Generator`` (advanced by one draw of ``B * h * w`` numbers), an int seed, or None (torch's
    global generator). A 2-D ``[h, w]`` input gives a 2-D mask.
    """
    weights, single = _as_batch(mask_weights(entropy, tau, eps, mode))
    B, h, w = weights.shape
    L = h * w
    n = num_masked(L, ratio)
    device = weights.device
    u = _uniform((B, L), generator).to(device)
    # Efraimidis–Spirakis: the n largest log(u)/w. w > 0 unless eps = 0 and softmax underflows; those
    # cells get -inf keys and are drawn last, as they should.
    keys = torch.log(u) / weights.reshape(B, L)
    mask = torch.zeros(B, L, dtype=torch.bool, device=device)
    if n > 0:
        chosen = torch.topk(keys, n, dim=1, largest=True, sorted=False).indices
        mask.scatter_(1, chosen, True)
    mask = mask.view(B, h, w)
    return mask[0] if single else mask
