"""Labelled images for fine-tuning: from a folder or a project store, decoded once into memory, served
as a Dataset with a per-epoch sampler that every rank shares; the split of a run (``split.json``) and the
splits saved in a project store, so that every run and ensemble member uses the same images."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, TrainTransform, load_rgb, normalize,
                                  resize_pil, to_float_tensor)
from core.atomic import write_json_atomic
from core.train.checkpoint import read_json
from core.train.config import FinetuneConfig

log = logging.getLogger(__name__)

__all__ = ["Sample", "LabeledData", "load_labeled_data", "ImageCache", "ClassifierDataset", "EpochSampler",
           "balanced_order", "write_split", "read_split", "stored_split", "project_parts", "project_folds"]


@dataclass
class Sample:
    path: Path
    rel_path: str
    label: str | None
    group: str | None = None       # case id; None = its own group
    image_id: int | None = None    # the project store's id, when the image came from a store


@dataclass
class LabeledData:
    root: Path | None
    samples: list[Sample]          # labelled only
    classes: list[str]

    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    def groups(self) -> list[str | None]:
        return [s.group for s in self.samples]

    def subset(self, idx: Sequence[int]) -> list[Sample]:
        return [self.samples[i] for i in idx]


def load_labeled_data(folder: str | Path | None = None, *, project: str | Path | None = None,
                      ctx=None) -> LabeledData:
    """Labelled images from a folder (``core.data.library.scan_folder``: class = sub-folder / manifest) or from
    a project store. Group = case id; images without one are grouped by content hash, so exact duplicate
    files (BUSI has one with two labels) never straddle a split. A project's images the user excluded (a
    near-duplicate's Exclude) take no part."""
    if project is not None:
        from core.project.store import ProjectStore

        store = ProjectStore(project, create=False)
        try:
            labels = store.labels()
            excluded = store.excluded_image_ids()
            rows = [r for r in store.images() if r.id not in excluded]
            classes = list(store.classes())
        finally:
            store.close()
        samples = [Sample(Path(r.abs_path), r.rel_path, labels.get(r.id), r.case_id or f"sha:{r.content_hash}",
                          r.id) for r in rows]
        root = None
        if rows:   # the image folder the rel paths are relative to
            first = Path(rows[0].abs_path)
            root = first.parents[len(Path(rows[0].rel_path).parts) - 1]
    else:
        if folder is None:
            raise ValueError("give an image folder or --project")
        from core.data.library import scan_folder

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder")
        res = scan_folder(folder, ctx=ctx)
        if ctx is not None:
            for err in res.errors:          # every one: a file left out must be named, not only counted
                ctx.log(f"skipped {err.path}: {err.reason}")
            for group in res.label_conflicts():
                ctx.log("identical files with different labels (both kept; they share a split part unless their "
                        "case ids differ): "
                        + " = ".join(f"{r.rel_path} ({r.label})" for r in group))
        samples = [Sample(Path(r.path), r.rel_path, r.label, r.case_id or f"sha:{r.content_hash}")
                   for r in res.images]
        classes = list(res.classes)
        root = Path(res.root)
    samples = [s for s in samples if s.label is not None]
    used = sorted({s.label for s in samples})
    classes = [c for c in classes if c in used] + [c for c in used if c not in classes]
    if len(classes) < 2:
        raise ValueError(f"need at least two labelled classes, found {classes or 'none'}")
    return LabeledData(root, samples, classes)


class ImageCache:
    """Decoded images kept in memory as uint8: a square ``train_size`` version for augmentation and the
    exact evaluation input (``size x size``, the eval transform's resize). Grey images keep one channel."""

    def __init__(self, samples: Sequence[Sample], size: int, interpolation: str = "bicubic", *,
                 keep: bool = True, ctx=None):
        self.size = size
        self.train_size = int(round(size * 1.15))
        self.interpolation = interpolation
        self.keep = keep
        self.train: dict[str, np.ndarray] = {}
        self.eval: dict[str, np.ndarray] = {}
        if keep:
            n = len(samples)
            for i, s in enumerate(samples):
                if ctx is not None:
                    ctx.check_cancelled()
                    if i % 25 == 0:
                        ctx.progress(i, n, message="decoding images", phase="decoding images")
                self._decode(s)

    @staticmethod
    def _squeeze(arr: np.ndarray) -> np.ndarray:
        if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return np.ascontiguousarray(arr[..., 0])
        return arr

    def _decode(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        key = str(s.path)
        if key in self.train:
            return self.train[key], self.eval[key]
        img = load_rgb(s.path)
        tr = self._squeeze(np.asarray(resize_pil(img, self.train_size, self.interpolation)))
        ev = self._squeeze(np.asarray(resize_pil(img, self.size, self.interpolation)))
        if self.keep:
            self.train[key], self.eval[key] = tr, ev
        return tr, ev

    def get(self, s: Sample, train: bool) -> np.ndarray:
        tr, ev = self._decode(s)
        return tr if train else ev


class ClassifierDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], class_index: dict[str, int], cache: ImageCache, *,
                 train: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD, aug: AugmentConfig | None = None):
        self.samples = list(samples)
        self.class_index = class_index
        self.cache = cache
        self.train = train
        self.mean, self.std = tuple(mean), tuple(std)
        self.tf = TrainTransform(cache.size, aug, mean, std) if train else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, str]):
        """``item``: an index, or (index, draw seed) from :class:`EpochSampler` for training draws."""
        i, draw_seed = item if isinstance(item, tuple) else (item, None)
        s = self.samples[i]
        x = to_float_tensor(self.cache.get(s, self.train))
        if self.train:
            if draw_seed is not None:   # the augmentation of a draw does not depend on rank or worker
                random.seed(draw_seed)
            x = self.tf(x)
        else:
            x = normalize(x, self.mean, self.std)
        return x, self.class_index[s.label], i


def balanced_order(labels: np.ndarray, n_classes: int, n_draws: int, seed: int) -> np.ndarray:
    """Indices drawn with replacement so that every class is equally likely (class-balanced sampling)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = 1.0 / np.maximum(counts[labels], 1.0)
    g = torch.Generator().manual_seed(int(seed))
    return torch.multinomial(torch.as_tensor(w), n_draws, replacement=True, generator=g).numpy()


class EpochSampler(torch.utils.data.Sampler):
    """Per-epoch order (shuffled or class-balanced), identical on every rank; rank r takes r::world. Each
    draw carries a seed from (seed, epoch, position in the global order) for its augmentation, so that N
    processes train on exactly the images one process with the same global batch sees."""

    def __init__(self, labels: np.ndarray, n_classes: int, *, balanced: bool, seed: int, rank: int = 0,
                 world: int = 1):
        self.labels, self.n_classes, self.balanced = labels, n_classes, balanced
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n = len(self.labels)
        seed = self.seed * 1000003 + self.epoch
        if self.balanced:
            order = balanced_order(self.labels, self.n_classes, n, seed)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        return order[:(n // self.world) * self.world]

    def __iter__(self):
        order = self._order()
        return iter((int(order[pos]), f"{self.seed}:{self.epoch}:{pos}")
                    for pos in range(self.rank, len(order), self.world))

    def __len__(self) -> int:
        return len(self.labels) // self.world



def write_split(run_dir: Path, data: LabeledData, parts: dict[str, list[Sample]], extra: dict | None = None) -> None:
    d = {"root": str(data.root) if data.root else None, "classes": data.classes, **(extra or {})}
    for name, samples in parts.items():
        d[name] = [[s.rel_path, s.label] for s in samples]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "split.json", d, indent=0)


def read_split(run_dir: str | Path) -> dict:
    """``split.json`` of a run: root, classes and [rel_path, label] lists per part."""
    run_dir = Path(run_dir)
    for p in (run_dir / "split.json", run_dir.parent / "split.json"):
        if p.is_file():
            return read_json(p)
    raise FileNotFoundError(f"{run_dir}: no split.json (not a fine-tuning run folder?)")



def stored_split(project: str | Path, data: LabeledData, name: str, make: Callable[[], list[str | int]],
                 params: dict, ctx=None, new: bool = False) -> list[str | int | None]:
    """The part (``train``/``val``/``test`` or a fold number) of every sample, from the project store's split
    ``name``; made with ``make`` and saved when the store has none, so that every later run, and every
    member of an ensemble, trains and tests on the same images. Labelled images the saved split does not
    know (labelled after it was made) get None: left out, and said so. ``new``: make it again and replace
    the saved one (runs already made keep their own ``split.json``)."""
    from core.project.store import ProjectStore

    def say(msg: str) -> None:
        ctx.log(msg) if ctx is not None else log.info(msg)

    store = ProjectStore(project, create=False)
    try:
        if new or name not in store.list_splits():
            made = make()
            assignment = {s.image_id: p for s, p in zip(data.samples, made)}
            if new:
                store.save_split(name, assignment, params)
                saved_now = True
            else:   # two first runs at once: the first to save wins, the other takes its split
                saved_now = store.save_split_if_absent(name, assignment, params)
            if saved_now:
                say(f"split {name!r} made and saved in the project store ({len(made)} images, {params})")
                return list(made)
        saved = store.load_split(name)
        parts = [saved.get(s.image_id) for s in data.samples]
        missing = sum(p is None for p in parts)
        say(f"split {name!r} from the project store ({len(saved)} images, made with "
            f"{store.split_params(name)})" + (f"; {missing} labelled images are not in it (labelled after "
                                              f"it was made) and are left out" if missing else ""))
        return parts
    finally:
        store.close()


def project_parts(cfg: FinetuneConfig, data: LabeledData, project, name: str, ctx,
                   new: bool = False) -> dict[str, list[Sample]]:
    from core.data.splits import split_indices

    def make() -> list[str]:
        idx = split_indices(data.labels(), data.groups(), val_fraction=cfg.val_fraction,
                            test_fraction=cfg.test_fraction, seed=cfg.seed)
        part = [""] * len(data.samples)
        for k, v in idx.items():
            for i in v:
                part[i] = k
        return part

    params = {"kind": "holdout", "seed": cfg.seed, "val_fraction": cfg.val_fraction,
              "test_fraction": cfg.test_fraction}
    part = stored_split(project, data, name, make, params, ctx, new)
    return {k: [s for s, p in zip(data.samples, part) if p == k] for k in ("train", "val", "test")}


def project_folds(cfg: FinetuneConfig, data: LabeledData, k: int, project, name: str, ctx,
                   new: bool = False) -> list[int | None]:
    from core.data.splits import kfold_indices

    def make() -> list[int]:
        fold = [-1] * len(data.samples)
        for f, (_, test_idx) in enumerate(kfold_indices(data.labels(), data.groups(), k=k, seed=cfg.seed)):
            for i in test_idx:
                fold[i] = f
        return fold

    fold = stored_split(project, data, f"{name}-{k}fold", make, {"kind": "kfold", "k": k, "seed": cfg.seed}, ctx,
                        new)
    bad = {f for f in fold if f is not None and not (isinstance(f, int) and 0 <= f < k)}
    if bad:
        raise ValueError(f"split {name}-{k}fold in {project} holds parts {sorted(map(str, bad))}, not folds 0..{k - 1}")
    return fold


