"""Grey-level entropy maps: per-cell entropy for entropy-guided masking, dense local entropy for display.

Definitions (the paper's exact entropy definition is not public; these are our choices):

* **Intensity range.** Images are float in [0, 1] (``core.data.imageio`` scales every file by its bit depth),
  and the histogram bins span that *fixed* range [0, 1]: bin index = ``clamp(floor(x * bins), 0, bins-1)``
  computed in float32. The same grey level therefore always falls into the same bin, and entropies of
  different images are comparable. ``normalize="minmax"`` first stretches each image to its own
  [min, max] (useful for low-contrast images; entropies are then no longer comparable across images).
  Inputs are converted to float32 before binning; NaN is not allowed.
* **Entropy.** ``p_k = n_k / N`` over the pixels of a cell (or window); Shannon entropy
  ``-sum p_k log2 p_k`` in bits (``alpha=1``), or Rényi entropy of order ``alpha``:
  ``log2(sum p_k^alpha) / (1 - alpha)`` (``alpha=0``: log2 of the number of occupied bins;
  ``alpha=inf``: ``-log2 max p_k``). A constant region has 0 bits; the maximum is ``log2(bins)``
  (reached only when N >= bins).
* **Cell grid** (:func:`cell_entropy`). Cells are ``cell x cell`` pixels, ``cell`` = the encoder's total
  stride (32 for ConvNeXt), so one cell = one token of the encoder's output grid. When H or W is not a
  multiple of ``cell``:

  - ``edge="crop"`` (default): the grid is ``H // cell x W // cell`` and the remainder rows/columns at the
    bottom/right are ignored. This matches ConvNeXt, whose strided stem and downsampling layers floor
    the size (a 500 x 600 image gives a 15 x 18 feature map).
  - ``edge="pad"``: the grid is ``ceil(H / cell) x ceil(W / cell)``; the partial cells at the bottom/right
    use only their real pixels (padding is not counted, so it adds no fake "flat" grey level).

* **Dense map** (:func:`local_entropy_map`): the entropy of the square window of side ``2*radius + 1``
  centred on each pixel; near the border the window is clipped to the image (only real pixels count),
  like ``skimage.filters.rank.entropy`` with a square footprint. Defaults (radius 5, 32 bins) differ
  from the cell defaults (64 bins) on purpose: they were tuned for display on BUSI ultrasound.

Implementation: everything is vectorised in torch and runs batched on CPU or GPU. Cell histograms are one
``torch.bincount`` over keys ``(image, cell, bin)``; the dense map box-filters one-hot bin planes (a chunk
of bins at a time) with exact small-integer window sums built from shifted adds, O(log radius) work per
pixel and bin. Python loops run only over chunks of images or bins, never over pixels or cells.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "DEFAULT_CELL", "DEFAULT_BINS", "DEFAULT_HEATMAP_BINS", "DEFAULT_RADIUS", "cell_entropy", "cell_grid_shape",
    "bin_indices", "entropy_from_counts", "local_entropy", "local_entropy_map", "max_entropy",
    "colormap_lut", "apply_colormap", "COLORMAPS",
]

DEFAULT_CELL = 32          # ConvNeXt total stride
DEFAULT_BINS = 64          # per-cell entropy (masking): 1024 pixels per cell fill 64 bins well
# Dense heatmap defaults, tuned by looking at BUSI heatmaps: an 11 x 11 window (121 pixels) with 32 bins
# shows speckle and lesion borders bright and acoustic shadow / anechoic cysts dark. With 64 bins the
# low-level noise inside shadows already spreads over several bins and looks nearly as "busy" as
# tissue (less contrast); radius 3 is noisy, radius 8 blurs thin borders.
DEFAULT_HEATMAP_BINS = 32
DEFAULT_RADIUS = 5

_INT32_MAX = 2**31 - 1


# -- inputs ------------------------------------------------------------------------------------------
def _as_batch(images) -> tuple[torch.Tensor, bool]:
    """[B,1,H,W] | [B,H,W] | [H,W] (tensor or array) -> float32 [B,H,W]; flag = input was a single 2-D image."""
    x = torch.as_tensor(images)
    if not (x.is_floating_point()):
        raise TypeError(f"images must be a float tensor/array in [0, 1], got dtype {x.dtype}")
    single = x.ndim == 2
    if single:
        x = x[None]
    elif x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel (grey) images [B, 1, H, W], got shape {tuple(x.shape)}")
        x = x[:, 0]
    elif x.ndim != 3:
        raise ValueError(f"expected images [B, 1, H, W], [B, H, W] or [H, W], got shape {tuple(x.shape)}")
    return x.to(torch.float32), single


def _check(bins: int, alpha: float) -> None:
    if not isinstance(bins, (int, np.integer)) or not 2 <= bins <= 65536:
        raise ValueError(f"bins must be an integer in [2, 65536], got {bins!r}")
    if not (alpha >= 0):  # also rejects NaN
        raise ValueError(f"alpha (Renyi order) must be >= 0, got {alpha!r}")


def _normalized(x: torch.Tensor, normalize: str) -> torch.Tensor:
    if normalize == "none":
        return x
    if normalize == "minmax":
        lo = x.amin(dim=(1, 2), keepdim=True)
        hi = x.amax(dim=(1, 2), keepdim=True)
        return (x - lo) / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    raise ValueError(f"normalize must be 'none' or 'minmax', got {normalize!r}")


def bin_indices(images, bins: int = DEFAULT_BINS, *, normalize: str = "none") -> torch.Tensor:
    """Histogram bin of every pixel: int32 ``clamp(floor(x * bins), 0, bins - 1)``, shape ``[B, H, W]``.

    ``normalize="minmax"`` first maps each image's [min, max] to [0, 1] (a constant image maps to 0).
    """
    x, _ = _as_batch(images)
    x = _normalized(x, normalize)
    # For x >= 0, truncation == floor; clamping in float first also catches x < 0 and x >= 1.
    return (x * bins).clamp_(0, bins - 1).to(torch.int32)


def max_entropy(bins: int = DEFAULT_BINS) -> float:
    """Largest possible entropy in bits for ``bins`` bins (any order alpha): log2(bins)."""
    return math.log2(bins)


# -- entropy of histograms ---------------------------------------------------------------------------
def entropy_from_counts(counts: torch.Tensor, total: torch.Tensor | float | None = None,
                        alpha: float = 1.0, dim: int = -1) -> torch.Tensor:
    """Entropy in bits (float64) of histograms ``counts`` along ``dim``.

    ``total`` = number of samples per histogram (defaults to the sum of counts); a histogram with no
    samples has entropy 0.
    """
    counts = counts.to(torch.float64)
    if total is None:
        total = counts.sum(dim=dim, keepdim=True)
    elif torch.is_tensor(total):
        total = total.to(torch.float64).unsqueeze(dim)
    if torch.is_tensor(total):
        total = total.clamp_min(1.0)
    else:
        total = max(float(total), 1.0)
    p = counts / total
    if alpha == 1.0:
        h = -torch.special.xlogy(p, p).sum(dim=dim) / math.log(2.0)
    elif alpha == 0.0:
        h = torch.log2((counts > 0).sum(dim=dim).to(torch.float64).clamp_min(1.0))
    elif math.isinf(alpha):
        h = -torch.log2(p.amax(dim=dim).clamp_min(1e-300))
    else:
        s = (p ** alpha).sum(dim=dim)
        h = torch.log2(s.clamp_min(1e-300)) / (1.0 - alpha)
    return h.clamp_min(0.0)  # rounding can give -1e-16 for a pure histogram


# -- per-cell entropy ----------------------------------------------------------------------------------
def cell_grid_shape(height: int, width: int, cell: int = DEFAULT_CELL, edge: str = "crop") -> tuple[int, int]:
    """Grid (h, w) that :func:`cell_entropy` returns for an ``height x width`` image."""
    if edge == "crop":
        return height // cell, width // cell
    if edge == "pad":
        return -(-height // cell), -(-width // cell)
    raise ValueError(f"edge must be 'crop' or 'pad', got {edge!r}")


@functools.lru_cache(maxsize=4)
def _cell_keys(n: int, h: int, w: int, cell: int, nb: int, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """Contiguous ``[n, h*cell, w*cell]`` offsets ``((image * h + row // cell) * w + col // cell) * nb``.

    Cached (read-only): adding one contiguous tensor is several times faster than broadcasting adds,
    and training calls this with the same shapes every step.
    """
    rows = torch.arange(h * cell, device=device, dtype=dtype) // cell
    cols = torch.arange(w * cell, device=device, dtype=dtype) // cell
    images = torch.arange(n, device=device, dtype=dtype) * h
    return (((images[:, None, None] + rows[None, :, None]) * w + cols[None, None, :]) * nb).contiguous()


def cell_entropy(images, cell: int = DEFAULT_CELL, bins: int = DEFAULT_BINS, alpha: float = 1.0, *,
                 edge: str = "crop", normalize: str = "none", max_chunk_pixels: int = 1 << 21) -> torch.Tensor:
    """Entropy (bits) of the grey-level histogram of each ``cell x cell`` cell.

    ``images``: float in [0, 1], ``[B, 1, H, W]`` or ``[B, H, W]`` (a single ``[H, W]`` image gives
    ``[h, w]``), tensor on any device or numpy array. Returns float32 ``[B, h, w]`` on the input's device,
    ``(h, w) = cell_grid_shape(H, W, cell, edge)``. See the module docstring for bins, edges and alpha.
    Images are processed in chunks of at most ``max_chunk_pixels`` pixels (memory bound only; results
    do not depend on it).
    """
    _check(bins, alpha)
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    x, single = _as_batch(images)
    B, H, W = x.shape
    h, w = cell_grid_shape(H, W, cell, edge)
    device = x.device
    if B == 0 or h == 0 or w == 0:
        out = torch.zeros(B, h, w, dtype=torch.float32, device=device)
        return out[0] if single else out

    x = _normalized(x, normalize)
    nb = bins + 1 if edge == "pad" else bins                    # pad: extra bin `bins` = not a pixel
    Hc, Wc = h * cell, w * cell
    if edge == "crop":
        x = x[:, :Hc, :Wc]
    per_image = h * w * nb
    key_dtype = torch.int32 if per_image <= _INT32_MAX else torch.int64
    chunk = max(1, min(B, max_chunk_pixels // max(1, Hc * Wc), _INT32_MAX // per_image))
    out = torch.empty(B, h, w, dtype=torch.float32, device=device)
    for start in range(0, B, chunk):                            # loop over image chunks, not pixels
        part = x[start:start + chunk]
        n = part.shape[0]
        # key = ((image * h + cell_row) * w + cell_col) * nb + bin; one bincount counts every cell.
        key = (part * bins).clamp_(0, bins - 1).to(key_dtype)   # bin index = floor, x >= 0 after clamp
        if key.shape[1:] != (Hc, Wc):
            key = torch.nn.functional.pad(key, (0, Wc - W, 0, Hc - H), value=bins)
        key.add_(_cell_keys(n, h, w, cell, nb, key_dtype, device))
        counts = torch.bincount(key.view(-1), minlength=n * per_image).view(n * h * w, nb)
        if edge == "pad":
            total = (cell * cell) - counts[:, bins]
            counts = counts[:, :bins]
        else:
            total = float(cell * cell)
        out[start:start + n] = entropy_from_counts(counts, total, alpha).view(n, h, w).to(torch.float32)
    return out[0] if single else out


# -- dense local entropy -------------------------------------------------------------------------------
def _box_sum(t: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over the window [i - radius, i + radius] along ``dim``, zero outside the tensor (exact integers).

    Zero-pad by ``radius`` on both sides, then add shifted slices by binary doubling: the window width
    2r+1 is split into powers of two, so a pass costs O(log r) adds of the whole tensor (no cumsum,
    no per-pixel loop). Integer dtypes must hold (2r+1) times the largest input value.
    """
    n = t.shape[dim]
    pad: list[int] = []
    for d in range(t.ndim - 1, dim - 1, -1):   # F.pad lists the last dimension first
        pad += [radius, radius] if d == dim else [0, 0]
    p = torch.nn.functional.pad(t, pad)
    width, size, offset = 2 * radius + 1, 1, 0
    out = None
    while True:                                 # p[i] = sum of `size` consecutive values from i
        if width & size:
            piece = p.narrow(dim, offset, n)
            out = piece.clone() if out is None else out.add_(piece)
            offset += size
        if 2 * size > width:
            return out
        length = p.shape[dim] - size
        p = p.narrow(dim, 0, length) + p.narrow(dim, size, length)
        size *= 2


def local_entropy(images, radius: int = DEFAULT_RADIUS, bins: int = DEFAULT_HEATMAP_BINS, alpha: float = 1.0, *,
                  normalize: str = "none", chunk_elements: int = 1 << 22) -> torch.Tensor:
    """Batched dense local entropy: float32 ``[B, H, W]`` (bits) of the ``(2r+1)^2`` window at each pixel.

    Windows are clipped at the image border (only real pixels count), so a radius beyond the image is the
    same as the image's size and is clamped to it. Integral-histogram style: for a
    chunk of bins the one-hot planes ``[B, K, H, W]`` are box-summed along H then W (small integers,
    exact), and ``sum_k f(n_k)`` is accumulated over chunks; ``K`` is chosen so that a chunk has about
    ``chunk_elements`` elements. With ``N`` = pixels in the window: Shannon ``H = log2 N - sum n log2 n / N``.
    """
    _check(bins, alpha)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    x, single = _as_batch(images)
    B, H, W = x.shape
    device = x.device
    if x.numel() == 0:
        out = torch.zeros(B, H, W, dtype=torch.float32, device=device)
        return out[0] if single else out
    idx = bin_indices(x, bins, normalize=normalize)
    idx = idx.to(torch.uint8) if bins <= 256 else idx
    # A window wider than the image covers all of it at every pixel: clamping the radius per axis gives the
    # same map, and keeps the padded box sums the size of the image (radius 100000 once took minutes).
    radius_y, radius_x = min(radius, H - 1), min(radius, W - 1)
    window = (2 * radius_y + 1) * (2 * radius_x + 1)
    count_dtype = torch.uint8 if window <= 255 else torch.int16 if window <= 32767 else torch.int32
    # Pixels in each clipped window; separable: N = ny[y] * nx[x].
    iy, ix = torch.arange(H, device=device), torch.arange(W, device=device)
    ny = (iy + radius + 1).clamp(max=H) - (iy - radius).clamp(min=0)
    nx = (ix + radius + 1).clamp(max=W) - (ix - radius).clamp(min=0)
    n_win = (ny[:, None] * nx[None, :]).to(torch.float32)                      # [H, W]
    log_n = torch.log2(n_win)
    # Only bins that occur in the batch need a plane.
    present = torch.nonzero(torch.bincount(idx.reshape(-1).to(torch.int32), minlength=bins)).flatten()
    present = present.to(idx.dtype)
    per_bin = max(1, chunk_elements // (B * H * W))
    acc = torch.zeros(B, H, W, dtype=torch.float32, device=device)
    for start in range(0, len(present), per_bin):       # loop over chunks of bins, not pixels
        ks = present[start:start + per_bin]
        planes = idx[:, None] == ks[None, :, None, None]                       # [B, K, H, W] bool
        planes = planes.view(torch.uint8) if count_dtype is torch.uint8 else planes.to(count_dtype)
        counts = _box_sum(_box_sum(planes, radius_y, dim=2), radius_x, dim=3).to(torch.float32)
        if alpha == 1.0:
            acc += (counts * torch.log2(counts.clamp_min(1.0))).sum(dim=1)
        elif alpha == 0.0:
            acc += (counts > 0).sum(dim=1)
        elif math.isinf(alpha):
            acc = torch.maximum(acc, counts.amax(dim=1))
        else:
            acc += (counts ** alpha).sum(dim=1)
    if alpha == 1.0:
        h = log_n - acc / n_win
    elif alpha == 0.0:
        h = torch.log2(acc.clamp_min(1.0))
    elif math.isinf(alpha):
        h = log_n - torch.log2(acc.clamp_min(1.0))
    else:
        h = (torch.log2(acc.clamp_min(1e-30)) - alpha * log_n) / (1.0 - alpha)
    out = h.clamp_min(0.0)
    return out[0] if single else out


def local_entropy_map(image, radius: int = DEFAULT_RADIUS, bins: int = DEFAULT_HEATMAP_BINS, alpha: float = 1.0, *,
                      normalize: str = "none", device: str | torch.device | None = None) -> np.ndarray:
    """Dense local-entropy heatmap of one grey image ``[H, W]`` in [0, 1], for display: float32 ``[H, W]`` bits."""
    x = torch.as_tensor(image)
    if device is not None:
        x = x.to(device)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"local_entropy_map takes one grey image [H, W], got shape {tuple(x.shape)}")
    return local_entropy(x, radius, bins, alpha, normalize=normalize).cpu().numpy()


# -- colour maps (numpy only; no matplotlib, no Qt) ----------------------------------------------------------
# Anchors: every 16th entry (0, 16, ..., 240) plus entry 255 of the 256-entry tables of the perceptually
# uniform maps by S. van der Walt and N. Smith (matplotlib's inferno/magma/viridis, released CC0).
# Linear interpolation between them stays within ~1/255 of the original tables.
_ANCHOR_POS = np.array(list(range(0, 256, 16)) + [255], dtype=np.float64) / 255.0
_ANCHORS = {
    "inferno": [
        (0.001462, 0.000466, 0.013866), (0.042253, 0.028139, 0.141141), (0.129285, 0.047293, 0.290788),
        (0.238273, 0.036621, 0.396353), (0.341500, 0.062325, 0.429425), (0.441207, 0.099338, 0.431594),
        (0.540920, 0.134729, 0.415123), (0.640135, 0.171438, 0.381065), (0.735683, 0.215906, 0.330245),
        (0.822386, 0.275197, 0.266085), (0.894305, 0.353399, 0.193584), (0.946965, 0.449191, 0.115272),
        (0.978422, 0.557937, 0.034931), (0.987874, 0.675267, 0.065257), (0.974638, 0.797692, 0.206332),
        (0.947594, 0.917399, 0.410665), (0.988362, 0.998364, 0.644924)],
    "magma": [
        (0.001462, 0.000466, 0.013866), (0.039608, 0.031090, 0.133515), (0.113094, 0.065492, 0.276784),
        (0.211718, 0.061992, 0.418647), (0.316654, 0.071690, 0.485380), (0.414709, 0.110431, 0.504662),
        (0.512831, 0.148179, 0.507648), (0.613617, 0.181811, 0.498536), (0.716387, 0.214982, 0.475290),
        (0.816914, 0.255895, 0.436461), (0.904281, 0.319610, 0.388137), (0.960949, 0.418323, 0.359630),
        (0.986700, 0.535582, 0.382210), (0.996096, 0.653659, 0.446213), (0.996898, 0.769591, 0.534892),
        (0.992440, 0.884330, 0.640099), (0.987053, 0.991438, 0.749504)],
    "viridis": [
        (0.267004, 0.004874, 0.329415), (0.282327, 0.094955, 0.417331), (0.278826, 0.175490, 0.483397),
        (0.258965, 0.251537, 0.524736), (0.229739, 0.322361, 0.545706), (0.199430, 0.387607, 0.554642),
        (0.172719, 0.448791, 0.557885), (0.149039, 0.508051, 0.557250), (0.127568, 0.566949, 0.550556),
        (0.120638, 0.625828, 0.533488), (0.157851, 0.683765, 0.501686), (0.246070, 0.738910, 0.452024),
        (0.369214, 0.788888, 0.382914), (0.515992, 0.831158, 0.294279), (0.678489, 0.863742, 0.189503),
        (0.845561, 0.887322, 0.099702), (0.993248, 0.906157, 0.143936)],
    "grey": [(v, v, v) for v in _ANCHOR_POS],
}
COLORMAPS = tuple(_ANCHORS)


def colormap_lut(name: str = "inferno") -> np.ndarray:
    """256 x 3 uint8 lookup table for colour map ``name`` (one of ``COLORMAPS``)."""
    if name not in _ANCHORS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    t = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(t, _ANCHOR_POS, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut * 255.0).astype(np.uint8)


def apply_colormap(values: np.ndarray, vmin: float, vmax: float, name: str = "inferno") -> np.ndarray:
    """Map ``values`` [H, W] linearly from [vmin, vmax] onto colour map ``name``: uint8 RGB [H, W, 3]."""
    values = np.asarray(values, dtype=np.float64)
    scale = 255.0 / max(vmax - vmin, 1e-12)
    index = np.clip(np.nan_to_num((values - vmin) * scale, nan=0.0), 0, 255).round().astype(np.uint8)
    return colormap_lut(name)[index]
