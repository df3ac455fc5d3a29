"""Positive-pair samplers: which image is the second view of an anchor image.

A sampler is built once per data set from per-image ``case_id`` and ``modality`` (``ImageRecord`` /
store ``ImageRow``: from ``manifest.csv`` or DICOM PatientID / Modality; None or "" = unknown). For an
anchor index it draws a partner index and says which rule produced it:

* ``same_image``: the anchor itself (two augmentations of one image: SimCLR).
* ``same_case``: another image of the anchor's case (MICLe). Falls back to ``same_image`` when the case
  has one image or the anchor has no case id.
* ``same_case_other_modality``: an image of the same case in a *different* modality (multimodal
  contrastive). Falls back to ``same_case`` (no other modality in the case, or the anchor's modality is
  unknown), then to ``same_image``.

Every view also gets a *positive group* (:meth:`PairSampler.group`) for the multi-positive NT-Xent: the
image index for ``same_image`` (plain SimCLR: other images of a case are negatives), the case for the
case-based samplers (all images of one case in a batch are positives of each other). Images without a
case id are their own group. Group ids are global (dataset-level) ints, so they agree across DDP ranks.

Samplers are registered like timm models (``@register_pair_sampler("name")``; ``list_pair_samplers()``;
``make_pair_sampler(name, records)``). Randomness comes from a ``torch.Generator`` the caller seeds per
sample (``StepContext.generator`` / ``sample_seed``), so pairs do not depend on batch composition.

:class:`PairedViews` is the pretraining data set of the contrastive methods (data set kind ``"pairs"``,
registered with ``core.pretrain.data.register_dataset``): item i = two augmented views, of image i and of
its partner, plus the positive group. Images are read with ``core.data.imageio.read_image`` (colour stays colour,
so colour-only augmentations can tell; grey is replicated to 3 channels in the batch) and resized to
``image_size`` x ``image_size`` (whole image, aspect not kept: the fine-tuning convention), kept in memory
(float16) when they fit in ``cache_mb``. Partner, views and jigsaw permutations are drawn from generators
seeded by (seed, epoch, index, salt), so resume and DDP reproduce the single-process run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["Pair", "PairSampler", "register_pair_sampler", "get_pair_sampler", "make_pair_sampler",
           "list_pair_samplers", "RULES", "PairedViews", "load_resized", "PAIR_SALT", "VIEW_SALTS"]

PAIR_SALT, VIEW_SALTS = 101, (102, 103)

RULES = ("same_case_other_modality", "same_case", "same_image")
_SAMPLERS: dict[str, type["PairSampler"]] = {}


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class Pair:
    anchor: int
    partner: int
    rule: str          # the rule that produced it (one of RULES)


class PairSampler:
    """Base: partners by rule with fallbacks; subclasses set ``rules`` (first applicable wins)."""

    name: str = ""
    rules: tuple[str, ...] = ("same_image",)
    group_by: str = "image"          # "image" or "case": what makes two views positives of each other

    def __init__(self, case_ids: Sequence[Any], modalities: Sequence[Any] | None = None):
        n = len(case_ids)
        if modalities is None:
            modalities = [None] * n
        if len(modalities) != n:
            raise ValueError(f"{n} case ids but {len(modalities)} modalities")
        self.case_ids = [_clean(c) for c in case_ids]
        self.modalities = [_clean(m) for m in modalities]
        by_case: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(self.case_ids):
            if c is not None:
                by_case[c].append(i)
        self._by_case = dict(by_case)
        case_index = {c: k for k, c in enumerate(sorted(by_case))}
        # group ids: cases first, then one id per image without a case
        self._case_group = [case_index[c] if c is not None else len(case_index) + i
                            for i, c in enumerate(self.case_ids)]

    @classmethod
    def from_records(cls, records: Sequence[Any]) -> "PairSampler":
        """From objects with ``case_id`` and ``modality`` attributes (ImageRecord, ImageRow)."""
        return cls([getattr(r, "case_id", None) for r in records],
                   [getattr(r, "modality", None) for r in records])

    def __len__(self) -> int:
        return len(self.case_ids)

    # -- candidates per rule -------------------------------------------------------------------------------
    def candidates(self, index: int, rule: str) -> list[int]:
        """Partner candidates of ``index`` under one rule (empty = rule not applicable)."""
        if rule == "same_image":
            return [index]
        case = self.case_ids[index]
        if case is None:
            return []
        others = [j for j in self._by_case[case] if j != index]
        if rule == "same_case":
            return others
        if rule == "same_case_other_modality":
            mod = self.modalities[index]
            if mod is None:
                return []
            return [j for j in others if self.modalities[j] is not None and self.modalities[j] != mod]
        raise ValueError(f"unknown pair rule {rule!r}; known: {', '.join(RULES)}")

    def rule_for(self, index: int) -> tuple[str, list[int]]:
        """The first applicable rule of this sampler (then its fallbacks) and its candidates."""
        for rule in self.rules:
            cands = self.candidates(index, rule)
            if cands:
                return rule, cands
        return "same_image", [index]

    def partner(self, index: int, generator: torch.Generator | None = None) -> Pair:
        """Draw the partner of ``index`` (uniform over the candidates of the first applicable rule)."""
        rule, cands = self.rule_for(index)
        if len(cands) == 1:
            return Pair(index, cands[0], rule)
        k = int(torch.randint(len(cands), (1,), generator=generator))
        return Pair(index, cands[k], rule)

    def group(self, index: int) -> int:
        """Positive-group id of image ``index`` (views with equal ids are positives in NT-Xent)."""
        return self._case_group[index] if self.group_by == "case" else index

    def rule_counts(self) -> dict[str, int]:
        """How many anchors use each rule (for the log: e.g. 'all 780 images fall back to same_image')."""
        counts = Counter(self.rule_for(i)[0] for i in range(len(self)))
        return {r: counts.get(r, 0) for r in RULES if r in self.rules or counts.get(r, 0)}

    def describe(self) -> str:
        counts = self.rule_counts()
        parts = [f"{n} {r}" for r, n in counts.items() if n]
        n_cases = len(self._by_case)
        n_mod = len({m for m in self.modalities if m is not None})
        return (f"pairs '{self.name}': {len(self)} images, {n_cases} cases, {n_mod} modalities; anchors by rule: "
                + (", ".join(parts) or "none"))


def register_pair_sampler(name: str) -> Callable[[type[PairSampler]], type[PairSampler]]:
    def deco(cls: type[PairSampler]) -> type[PairSampler]:
        if name in _SAMPLERS and _SAMPLERS[name] is not cls:
            raise ValueError(f"pair sampler {name!r} is already registered")
        cls.name = name
        _SAMPLERS[name] = cls
        return cls
    return deco


def get_pair_sampler(name: str) -> type[PairSampler]:
    if name not in _SAMPLERS:
        raise ValueError(f"unknown pair sampler {name!r}; available: {', '.join(list_pair_samplers())}")
    return _SAMPLERS[name]


def make_pair_sampler(name: str, records: Sequence[Any]) -> PairSampler:
    return get_pair_sampler(name).from_records(records)


def list_pair_samplers() -> list[str]:
    return sorted(_SAMPLERS)


@register_pair_sampler("same_image")
class SameImage(PairSampler):
    """Two augmented views of one image (SimCLR). Other images, even of the same case, are negatives."""
    rules = ("same_image",)
    group_by = "image"


@register_pair_sampler("same_case")
class SameCase(PairSampler):
    """Two different images of one case (MICLe); single-image cases fall back to same_image."""
    rules = ("same_case", "same_image")
    group_by = "case"


@register_pair_sampler("same_case_other_modality")
class SameCaseOtherModality(PairSampler):
    """Same case, different modality; falls back to same_case, then same_image."""
    rules = ("same_case_other_modality", "same_case", "same_image")
    group_by = "case"


# -- the paired-view data set ---------------------------------------------------------------------------
def load_resized(path: str | Path, size: int) -> tuple[torch.Tensor, bool]:
    """An image as float32 [C, size, size] in [0, 1] (C = 1 grey, 3 colour) and whether it is colour."""
    from core.data.imageio import read_image

    data = read_image(path)
    arr = np.ascontiguousarray(data.array, dtype=np.float32)
    x = torch.from_numpy(arr)
    x = x[None] if x.ndim == 2 else x[..., :3].permute(2, 0, 1)
    if not data.is_color and x.shape[0] == 3:
        x = x.mean(0, keepdim=True)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0, 1), bool(x.shape[0] == 3)


ViewFn = Callable[[torch.Tensor, torch.Generator, Any], torch.Tensor]


class PairedViews(Dataset):
    """Items ``{"image": clean [3, S, S], "view1", "view2": [C, S, S], "group", "index", "partner", "rule"}``.

    ``augment(x, generator, ViewInfo) -> x`` makes a view (set it after construction when it needs the
    data, e.g. DAD statistics: ``dataset.augment = ...``). ``view1`` is of image i, ``view2`` of its partner.
    """

    def __init__(self, records: Sequence[Any], image_size: int, sampler: PairSampler, *,
                 augment: ViewFn | None = None, seed: int = 0, cache_mb: float = 2048, ctx=None,
                 loader: Callable[[Path, int], tuple[torch.Tensor, bool]] | None = None):
        if len(sampler) != len(records):
            raise ValueError(f"pair sampler covers {len(sampler)} images, data set has {len(records)}")
        self.paths = [Path(r.path) for r in records]
        self.content_hashes = [str(getattr(r, "content_hash", "") or r.path) for r in records]
        self.modalities = [_clean(getattr(r, "modality", None)) for r in records]
        self.is_color = [bool(getattr(r, "is_color", False)) for r in records]
        self.size, self.sampler, self.augment, self.seed = image_size, sampler, augment, seed
        self.epoch = 0
        self._loader = loader or load_resized
        self.images: list[torch.Tensor] | None = None
        fits = sum(3 if c else 1 for c in self.is_color) * image_size * image_size * 2 <= cache_mb * 2**20
        if fits:
            self.images = []
            for i, path in enumerate(self.paths):
                if ctx is not None:
                    ctx.check_cancelled()
                    if i % 50 == 0:
                        ctx.progress(i, len(self.paths), message="reading images")
                x, colour = self._loader(path, image_size)
                self.images.append(x.to(torch.float16))
                self.is_color[i] = colour

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor:
        """Resized image [C, S, S] float32 (no augmentation)."""
        if self.images is not None:
            return self.images[index].float()
        x, colour = self._loader(self.paths[index], self.size)
        self.is_color[index] = colour
        return x

    def info(self, index: int):
        from core.pretrain.augment import ViewInfo

        return ViewInfo(is_color=self.is_color[index], modality=self.modalities[index])

    def generator(self, index: int, salt: int) -> torch.Generator:
        from core.pretrain import sample_seed

        g = torch.Generator()
        g.manual_seed(sample_seed(self.seed, self.epoch, int(index), salt))
        return g

    def __getitem__(self, index: int) -> dict:
        if self.augment is None:
            raise RuntimeError("PairedViews.augment is not set")
        pair = self.sampler.partner(index, self.generator(index, PAIR_SALT))
        x1 = self.load(index)
        x2 = x1 if pair.partner == index else self.load(pair.partner)
        v1 = self.augment(x1, self.generator(index, VIEW_SALTS[0]), self.info(index))
        v2 = self.augment(x2, self.generator(index, VIEW_SALTS[1]), self.info(pair.partner))
        return {"image": x1.expand(3, -1, -1), "view1": v1, "view2": v2, "group": self.sampler.group(index),
                "index": index, "partner": pair.partner, "rule": RULES.index(pair.rule)}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        """-> ``view1``, ``view2`` [B, 3, S, S] (grey replicated), ``group``, ``index``, ``partner``, ``rule`` [B]."""
        def rgb(key: str) -> torch.Tensor:
            return torch.stack([it[key].expand(3, -1, -1) for it in items])
        batch = {"view1": rgb("view1"), "view2": rgb("view2")}
        for key in ("group", "index", "partner", "rule"):
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
        return batch

    def modality_items(self):
        """(image [C, S, S], modality) for every image: the input of augment.compute_modality_stats."""
        for i in range(len(self)):
            yield self.load(i), self.modalities[i]


def _pairs_dataset(records, config, ctx=None) -> PairedViews:
    """Data set kind ``"pairs"``: sampler ``config.options["pairs"]``; views from the method's ``make_augment``."""
    from core.pretrain import get_method

    method = get_method(config.method)
    sampler = make_pair_sampler(config.options.get("pairs", "same_image"), records)
    if ctx is not None:
        ctx.log(sampler.describe())
    dataset = PairedViews(records, config.image_size, sampler, seed=config.seed, cache_mb=config.cache_mb, ctx=ctx)
    dataset.augment = method.make_augment(config, dataset, ctx)
    return dataset


def _register_dataset() -> None:
    from core.pretrain.data import DATASETS, register_dataset

    if "pairs" not in DATASETS:
        register_dataset("pairs", _pairs_dataset)


_register_dataset()
