"""Near-duplicate images: the same lesion saved twice, re-scaled, re-encoded, re-cropped, brighter or darker.

Byte hashes (the library's content hash) find only identical files. Here every image gets a perceptual
hash (``imagehash.phash``: the signs of the low DCT frequencies of a 32x32 grey thumbnail, 64 bits); pairs
whose hashes differ in at most ``max_hamming`` bits are candidates, and a candidate counts only when a
second, independent measure agrees: the structural similarity (scikit-image's SSIM) of the two images'
32x32 grey thumbnails is at least ``min_ssim``. Confirmed pairs are joined into groups (union-find), so
A~B and B~C put A, B and C in one group. Groups whose labels disagree are data-quality findings of their
own (a lesion filed under two classes).

Splits use the groups so that no near-duplicate pair straddles train and test (:func:`merge_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_MAX_HAMMING = 10      # of 64 bits
DEFAULT_MIN_SSIM = 0.75
THUMB_PX = 32                 # small enough that a crop of a few pixels barely moves it
_CHUNK = 512                  # rows of the pairwise Hamming matrix computed at once


@dataclass
class ImageSignature:
    """What the finder keeps of one image: its 64-bit perceptual hash and a small grey thumbnail."""
    key: str                          # the caller's name for the image (a relative path)
    phash: int
    thumb: np.ndarray                 # float32 [THUMB_PX, THUMB_PX] in [0, 1]


@dataclass
class DuplicatePair:
    a: str
    b: str
    hamming: int
    ssim: float


@dataclass
class DuplicateGroup:
    members: list[str]
    labels: dict[str, str | None] = field(default_factory=dict)     # member -> its label
    pairs: list[DuplicatePair] = field(default_factory=list)

    @property
    def conflicting(self) -> bool:
        """The members carry different labels (None = unlabelled does not conflict)."""
        return len({v for v in self.labels.values() if v is not None}) > 1


@dataclass
class DuplicateReport:
    groups: list[DuplicateGroup]
    n_images: int
    candidates: int                   # pairs within max_hamming (before the SSIM check)
    max_hamming: int
    min_ssim: float
    errors: list[tuple[str, str]] = field(default_factory=list)   # (key, reason) of images not read

    @property
    def conflicting(self) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.conflicting]

    def group_of(self) -> dict[str, int]:
        """member -> index of its group."""
        return {m: i for i, g in enumerate(self.groups) for m in g.members}


class _Groups:
    """Union-find over 0..n-1: joined indices share a root."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.root(i)] = self.root(j)


def signature(key: str, grey: np.ndarray) -> ImageSignature:
    """Signature of a grey image (float [H, W] in [0, 1], as :func:`core.data.imageio.read_grey` gives)."""
    import imagehash
    from PIL import Image

    img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    bits = imagehash.phash(img, hash_size=8).hash.flatten()
    value = int("".join("1" if b else "0" for b in bits), 2)
    thumb = np.asarray(img.resize((THUMB_PX, THUMB_PX), Image.BOX), dtype=np.float32) / 255.0
    return ImageSignature(key, value, thumb)


def candidate_pairs(hashes: Sequence[int], max_hamming: int) -> list[tuple[int, int, int]]:
    """(i, j, hamming) for i < j whose hashes differ in at most ``max_hamming`` bits."""
    h = np.asarray(hashes, dtype=np.uint64)
    out = []
    for start in range(0, len(h), _CHUNK):
        block = h[start:start + _CHUNK]                                   # [C]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])              # [C, N] bits that differ
        ii, jj = np.nonzero(dist <= max_hamming)
        keep = jj > ii + start
        for i, j in zip(ii[keep], jj[keep]):
            out.append((int(i + start), int(j), int(dist[i, j])))
    return out


def find_near_duplicates(signatures: Sequence[ImageSignature], labels: dict[str, str | None] | None = None, *,
                         max_hamming: int = DEFAULT_MAX_HAMMING, min_ssim: float = DEFAULT_MIN_SSIM,
                         errors: list[tuple[str, str]] | None = None) -> DuplicateReport:
    from skimage.metrics import structural_similarity

    labels = labels or {}
    cands = candidate_pairs([s.phash for s in signatures], max_hamming)
    uf = _Groups(len(signatures))
    confirmed: list[tuple[int, int, DuplicatePair]] = []
    for i, j, d in cands:
        s = float(structural_similarity(signatures[i].thumb, signatures[j].thumb, data_range=1.0))
        if s >= min_ssim:
            confirmed.append((i, j, DuplicatePair(signatures[i].key, signatures[j].key, d, s)))
            uf.join(i, j)
    members: dict[int, list[int]] = {}
    for i in range(len(signatures)):
        members.setdefault(uf.root(i), []).append(i)
    groups = []
    by_root: dict[int, DuplicateGroup] = {}
    for r, idx in members.items():
        if len(idx) > 1:
            keys = sorted(signatures[i].key for i in idx)
            g = DuplicateGroup(keys, {k: labels.get(k) for k in keys})
            by_root[r] = g
            groups.append(g)
    for i, _j, pair in confirmed:
        by_root[uf.root(i)].pairs.append(pair)
    groups.sort(key=lambda g: (not g.conflicting, g.members))
    return DuplicateReport(groups, len(signatures), len(cands), max_hamming, min_ssim, list(errors or []))


def scan_near_duplicates(root: str | Path, rel_paths: Sequence[str], labels: dict[str, str | None] | None = None,
                         *, max_hamming: int = DEFAULT_MAX_HAMMING, min_ssim: float = DEFAULT_MIN_SSIM,
                         ctx=None, read: Callable[[Path], np.ndarray] | None = None) -> DuplicateReport:
    """Near-duplicate groups among ``rel_paths`` under ``root`` (unreadable files are listed, not fatal)."""
    from core.data.imageio import ImageReadError, read_grey

    read = read or read_grey
    root = Path(root)
    sigs, errors = [], []
    for n, rel in enumerate(rel_paths):
        if ctx is not None:
            ctx.check_cancelled()
            ctx.progress(n, len(rel_paths), rel, phase="hashing")
        try:
            sigs.append(signature(rel, read(root / rel)))
        except (ImageReadError, OSError, ValueError) as exc:
            errors.append((rel, getattr(exc, "reason", None) or str(exc)))
    if ctx is not None:
        ctx.progress(len(rel_paths), len(rel_paths), "comparing", phase="comparing")
    return find_near_duplicates(sigs, labels, max_hamming=max_hamming, min_ssim=min_ssim, errors=errors)


def merge_groups(keys: Sequence[str], groups: Sequence[str | None], report: DuplicateReport) -> list[str]:
    """One group id per key that joins the given groups (cases) and the near-duplicate groups, so a
    split grouped by it never puts two images of one case, nor two near-duplicates, on both sides."""
    index = {k: i for i, k in enumerate(keys)}
    uf = _Groups(len(keys))
    first_of_group: dict[str, int] = {}
    for i, g in enumerate(groups):
        if g is not None:
            uf.join(i, first_of_group.setdefault(g, i))
    for group in report.groups:
        present = [index[m] for m in group.members if m in index]
        for i in present[1:]:
            uf.join(i, present[0])
    return [f"grp:{keys[uf.root(i)]}" for i in range(len(keys))]
