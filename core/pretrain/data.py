"""Unlabeled images for pretraining: folder scan -> resized grey images (+ per-cell entropy) -> batches.

* Images come from ``core.data.library.scan_folder`` (labels, masks and cases are ignored here), are read as
  grey float in [0, 1] (``core.data.imageio.read_grey``; colour is converted to luminance) and resized to
  ``size x size`` (bilinear with antialiasing, whole image, aspect ratio not kept: the same convention as
  fine-tuning). The collate replicates grey to 3 channels: ``image`` float [B, 3, S, S] in [0, 1].
* Per-cell entropy (``core.analysis.entropy.cell_entropy``, cell = encoder stride 32) does not change during
  training, so it is computed **once per image** in a start-up pass and kept ([N, h, w] floats, tiny).
  ``entropy="batch"`` computes it on every batch instead (bench/pretrain.py measures both).
* The start-up pass also keeps the resized images in memory (float16) when they fit in ``cache_mb``, so
  later epochs do no file I/O or resizing at all (on a CPU run this matters more than the model's cost).
* Augmentation is only a horizontal flip (p = 0.5). A flip maps cells onto cells and a cell's histogram
  does not change when it is mirrored, so the cached entropy is flipped with the image and stays exact.
  Crops or rescaling would change every cell's content and need ``entropy="batch"``. The flip is decided
  by (seed, epoch, index): batches do not depend on worker processes, ranks or interruptions.
* :class:`EpochBatchSampler` gives each rank its slice of a global batch drawn from a per-epoch seeded
  permutation, and can start in the middle of an epoch (resume).

The data fingerprint (``fingerprint``) is the sha256 of the sorted content hashes of the images, so it
does not depend on file names, order or the folder's location.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from core.pretrain import sample_seed
from core.train.rng import loader_generator

__all__ = ["UnlabeledImages", "EpochBatchSampler", "scan_images", "fingerprint", "build_dataset",
           "register_dataset", "DATASETS", "make_loader", "load_grey_resized"]

FLIP_SALT = 1
WORKER_SALT = 3     # with index -1: an epoch's loader worker seeds (index -1, salt 0: its batch order)


def fingerprint(content_hashes: Sequence[str]) -> str:
    """sha256 hex of the sorted content hashes (one per line)."""
    h = hashlib.sha256()
    for c in sorted(content_hashes):
        h.update(c.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def scan_images(folder: str | Path, ctx=None):
    """``core.data.library.scan_folder`` of ``folder``; unreadable files are reported through ``ctx.log``."""
    from core.data.library import scan_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    result = scan_folder(folder, ctx=ctx)
    if ctx is not None:
        for err in result.errors:
            ctx.log(f"skipped {err.path}: {err.reason}")
    if not result.images:
        raise ValueError(f"{folder}: no readable images found")
    return result


def select_files(records, files, folder):
    """The scanned ``records`` named in ``files`` (paths relative to ``folder``; empty = all), so that a
    pretraining can take part of a folder (a study's fold: its training images only)."""
    if not files:
        return records
    by_rel = {r.rel_path: r for r in records}
    missing = [f for f in files if f not in by_rel]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} of the listed images were not found or not readable, "
                                f"e.g. {missing[:3]}")
    return [by_rel[f] for f in dict.fromkeys(files)]


def load_grey_resized(path: str | Path, size: int) -> torch.Tensor:
    """One image as grey float32 [size, size] in [0, 1]."""
    from core.data.imageio import read_grey

    grey = torch.from_numpy(np.ascontiguousarray(read_grey(path), dtype=np.float32))
    return resize_grey(grey, size)


def resize_grey(grey: torch.Tensor, size: int) -> torch.Tensor:
    """[H, W] float -> [size, size] float32 in [0, 1] (bilinear, antialiased when shrinking)."""
    if tuple(grey.shape) == (size, size):
        return grey.float().clamp(0, 1)
    out = F.interpolate(grey[None, None].float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)[0, 0]
    return out.clamp_(0, 1)


class UnlabeledImages(Dataset):
    """Items: ``{"image": [1, S, S] float in [0, 1], "entropy": [h, w] (or absent), "index": int}``."""

    def __init__(self, paths: Sequence[str | Path], image_size: int, *, cell: int = 32, bins: int = 64,
                 entropy: str = "cached", hflip: bool = True, seed: int = 0, cache_mb: float = 2048,
                 ctx=None, loader: Callable[[Path, int], torch.Tensor] | None = None):
        if image_size % cell:
            raise ValueError(f"image size {image_size} must be a multiple of the mask cell {cell}")
        if entropy not in ("cached", "batch", "none"):
            raise ValueError(f"entropy must be 'cached', 'batch' or 'none', got {entropy!r}")
        self.paths = [Path(p) for p in paths]
        self.size, self.cell, self.bins = image_size, cell, bins
        self.entropy_mode, self.hflip, self.seed = entropy, hflip, seed
        self.epoch = 0
        self._loader = loader or load_grey_resized
        self.images: torch.Tensor | None = None        # [N, S, S] float16 when cached
        self.entropy: torch.Tensor | None = None       # [N, h, w] float32 when cached
        fits = len(self.paths) * image_size * image_size * 2 <= cache_mb * 2**20
        if fits or entropy == "cached":
            self._startup_pass(keep_images=fits, ctx=ctx)

    # -- start-up pass: read every image once ----------------------------------------------------------
    def _startup_pass(self, *, keep_images: bool, ctx) -> None:
        from core.analysis.entropy import cell_entropy

        n, s = len(self.paths), self.size
        images = torch.empty(n, s, s, dtype=torch.float16) if keep_images else None
        ent = torch.empty(n, s // self.cell, s // self.cell) if self.entropy_mode == "cached" else None
        chunk: list[torch.Tensor] = []
        start = 0
        for i, path in enumerate(self.paths):
            if ctx is not None:
                ctx.check_cancelled()
                if i % 50 == 0:
                    ctx.progress(i, n, message="reading images")
            img = self._loader(path, s)
            if images is not None:
                images[i] = img.to(torch.float16)
            if ent is not None:
                chunk.append(img)
                if len(chunk) == 64 or i == n - 1:
                    ent[start:i + 1] = cell_entropy(torch.stack(chunk), cell=self.cell, bins=self.bins)
                    start, chunk = i + 1, []
        self.images, self.entropy = images, ent

    # -- items ------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def grey(self, index: int) -> torch.Tensor:
        """Resized grey image [S, S] float32 (no augmentation)."""
        if self.images is not None:
            return self.images[index].float()
        return self._loader(self.paths[index], self.size)

    def __getitem__(self, index: int) -> dict:
        img = self.grey(index)
        ent = self.entropy[index] if self.entropy is not None else None
        if self.hflip and sample_seed(self.seed, self.epoch, index, FLIP_SALT) & 1:
            img = img.flip(-1)
            ent = ent.flip(-1) if ent is not None else None
        item = {"image": img[None], "index": index}
        if ent is not None:
            item["entropy"] = ent
        return item

    def collate(self, items: list[dict]) -> dict:
        """-> ``image`` [B, 3, S, S] (grey replicated; an expanded view), ``entropy`` [B, h, w], ``index`` [B]."""
        grey = torch.stack([it["image"] for it in items])                     # [B, 1, S, S]
        batch = {"image": grey.expand(-1, 3, -1, -1),
                 "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
        if "entropy" in items[0]:
            batch["entropy"] = torch.stack([it["entropy"] for it in items])  # [B, h, w]
        elif self.entropy_mode == "batch":
            from core.analysis.entropy import cell_entropy
            batch["entropy"] = cell_entropy(grey, cell=self.cell, bins=self.bins)
        return batch


class EpochBatchSampler(Sampler[list[int]]):
    """Micro-batches of a seeded per-epoch permutation; rank r gets its contiguous slice of each global batch.

    ``global_batch`` = images per micro-step summed over ranks; each rank yields ``global_batch //
    world_size`` indices. The last incomplete global batch is dropped. ``start`` skips micro-batches
    already done (resume in the middle of an epoch).
    """

    def __init__(self, n: int, global_batch: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 epoch: int = 0, start: int = 0, shuffle: bool = True):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} must be divisible by the number of processes {world_size}")
        if n < global_batch:
            raise ValueError(f"{n} images are fewer than one batch of {global_batch}; lower --batch-size")
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed, self.epoch, self.start, self.shuffle = seed, epoch, start, shuffle

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, self.epoch, -1, 0))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        per_rank = self.global_batch // self.world_size
        for b in range(self.start, self.batches_per_epoch):
            chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
            yield chunk[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()


def make_loader(dataset, sampler: EpochBatchSampler, *, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """One epoch's loader; its worker seeds come from (seed, epoch) (:func:`core.train.rng.loader_generator`),
    never from the global RNG, so a resumed epoch's workers are seeded as the uninterrupted epoch's were."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(sampler.epoch)   # before the iterator exists: workers get a copy with it
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=getattr(dataset, "collate", None),
                      generator=loader_generator(sample_seed(sampler.seed, sampler.epoch, -1, WORKER_SALT)))


# -- dataset kinds named by methods (PretrainMethod.dataset) ---------------------------------------------
def _images_dataset(records, config, ctx=None) -> UnlabeledImages:
    opts = config.options
    mode = opts.get("entropy_source", "none")     # methods that mask by entropy set "cached" or "batch"
    return UnlabeledImages([r.path for r in records], config.image_size, cell=config.cell,
                           bins=int(opts.get("entropy_bins", 64)), entropy=mode,
                           hflip=config.hflip, seed=config.seed, cache_mb=config.cache_mb, ctx=ctx)


DATASETS: dict[str, Callable] = {"images": _images_dataset}


def register_dataset(kind: str, factory: Callable) -> None:
    """``factory(records, config, ctx) -> Dataset`` (optionally with ``set_epoch`` and ``collate``)."""
    DATASETS[kind] = factory


def build_dataset(kind: str, records, config, ctx=None):
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[kind](records, config, ctx)
