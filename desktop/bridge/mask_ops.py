"""Pixel edits for the mask brush (numpy only, no Qt): stamp a brush line, bucket-fill, outline.

These are the editing primitives of the annotation tool (like napari's labels layer), not image
analysis: the viewer calls them while the user drags the brush.
"""

from __future__ import annotations

import numpy as np


def stamp_line(mask: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], radius: float,
               value: bool) -> tuple[int, int, int, int] | None:
    """Paint a round brush of ``radius`` px from ``p0`` to ``p1`` (x, y in pixels) into ``mask`` in place.

    Returns the touched box ``(y0, y1, x0, x1)`` (exclusive ends) or None when it misses the image.
    """
    h, w = mask.shape
    r = max(0.5, float(radius))
    (x0, y0), (x1, y1) = p0, p1
    bx0 = int(np.floor(min(x0, x1) - r))
    bx1 = int(np.ceil(max(x0, x1) + r)) + 1
    by0 = int(np.floor(min(y0, y1) - r))
    by1 = int(np.ceil(max(y0, y1) + r)) + 1
    bx0, by0 = max(bx0, 0), max(by0, 0)
    bx1, by1 = min(bx1, w), min(by1, h)
    if bx0 >= bx1 or by0 >= by1:
        return None
    yy, xx = np.mgrid[by0:by1, bx0:bx1]
    # pixel centres at +0.5: distance from each pixel centre to the segment p0-p1
    px, py = xx + 0.5, yy + 0.5
    dx, dy = x1 - x0, y1 - y0
    seg2 = dx * dx + dy * dy
    if seg2 > 0:
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / seg2, 0.0, 1.0)
    else:
        t = 0.0
    cx, cy = x0 + t * dx, y0 + t * dy
    inside = (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    mask[by0:by1, bx0:bx1][inside] = value
    return by0, by1, bx0, bx1


def flood_fill(mask: np.ndarray, x: int, y: int) -> np.ndarray | None:
    """Bucket fill: the 4-connected region of ``mask``'s value at (x, y), set to True.

    Clicking inside a closed outline fills it. Returns the new mask, or None when the click is outside
    the image, on the mask already, or in a region that touches the image border (not enclosed:
    filling it would paint the whole background).
    """
    from scipy import ndimage

    h, w = mask.shape
    if not (0 <= x < w and 0 <= y < h) or mask[y, x]:
        return None
    regions, _ = ndimage.label(~mask)
    rid = regions[y, x]
    border = np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])
    if rid in border:
        return None
    out = mask.copy()
    out[regions == rid] = True
    return out


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of ``mask`` (inside pixels with a 4-neighbour outside), ``width`` px thick."""
    m = mask.astype(bool)
    inner = m.copy()
    for _ in range(max(1, width)):
        e = inner.copy()
        e[1:, :] &= inner[:-1, :]
        e[:-1, :] &= inner[1:, :]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        inner = e
    return m & ~inner


def pack(mask: np.ndarray) -> tuple[tuple[int, int], bytes]:
    """Compact form of a bool mask for undo history (1 bit per pixel)."""
    return mask.shape, np.packbits(mask.astype(bool), axis=None).tobytes()


def unpack(packed: tuple[tuple[int, int], bytes]) -> np.ndarray:
    shape, data = packed
    n = int(shape[0]) * int(shape[1])
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n).astype(bool).reshape(shape)
