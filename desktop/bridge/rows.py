"""Library rows without Qt: one light :class:`Item` per image, read from the store or from a quick file
listing. Kept free of Qt so the scan process (:mod:`desktop.bridge.scan_process`) can build and pickle them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from core.data.walk import walk_folder

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """'img (2)' before 'img (10)': digit runs compare as numbers, letters without case. The one sort key
    of every list and table of names in the window."""
    return tuple(int(part) if k % 2 else part for k, part in enumerate(_DIGITS.split(text.lower())))


class Item:
    """One image row of the library. ``image_id`` is None until the scan has imported the file."""

    __slots__ = ("path", "rel_path", "name", "sort_name", "sort_key", "image_id", "label", "n_masks", "prediction", "uncertainty",
                 "case_id", "modality", "width", "height", "is_color", "order")

    def __init__(self, path: str, rel_path: str, image_id: int | None = None, label: str | None = None,
                 n_masks: int = 0, prediction: str | None = None, uncertainty: float | None = None,
                 case_id: str | None = None, modality: str | None = None, width: int | None = None,
                 height: int | None = None, is_color: bool = False, order: int = 0):
        self.path = path
        self.rel_path = rel_path
        self.name = rel_path.rsplit("/", 1)[-1]
        self.sort_name = rel_path.lower()      # search key
        self.sort_key = (natural_key(self.name), natural_key(rel_path))    # by file name, then folder
        self.image_id = image_id
        self.label = label
        self.n_masks = n_masks
        self.prediction = prediction
        self.uncertainty = uncertainty
        self.case_id = case_id
        self.modality = modality
        self.width = width
        self.height = height
        self.is_color = is_color
        self.order = order

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Item({self.rel_path!r}, id={self.image_id}, label={self.label!r})"


@dataclass
class OpenResult:
    items: list[Item]
    counts: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)    # core.data.library.ScanError
    complete: bool = True


# -- reading rows (worker thread) -------------------------------------------------------------------
def latest_predictions(store) -> dict[int, tuple[str | None, float | None]]:
    """{image_id: (predicted class, predictive entropy)} of the newest run that stored predictions."""
    for run in reversed(store.list_runs()):
        records = store.prediction_records(run.id)
        if records:
            return {r.image_id: (r.predicted, r.entropy) for r in records}
    return {}


def lesion_mask_count(store, image_id: int) -> int:
    """How many attached mask files mark a lesion: an all-black file (BUSI's "normal" images come with one)
    is no mask, so it gives no "has mask" dot, count or filter hit. A file that cannot be read counts (the
    viewer says why it is not shown)."""
    from core.data.imageio import ImageReadError, read_mask

    n = 0
    for m in store.masks(image_id):
        try:
            n += bool(read_mask(m.path).any())
        except (ImageReadError, OSError):
            n += 1
    return n


def run_choices(store, use: str) -> list[tuple[str, str]]:
    """(label, path) of the project's runs usable as ``use``, newest first, labelled by name so nobody has to
    find a path under the hidden ``.medssl`` folder: ``"mae"`` an MAE pretraining's run folder holding a
    checkpoint, ``"ensemble"`` an ensemble file an ensemble run wrote."""
    out = []
    for run in reversed(store.list_runs("pretrain" if use == "mae" else "ensemble")):
        if use == "mae":
            if str(run.config.get("method", "")).lower() != "mae" or not run.run_dir:
                continue
            path = Path(run.run_dir)
            if not any(path.glob("checkpoint-*")):
                continue
        else:
            path = Path(run.ensemble_file or "")
            if not run.ensemble_file or not path.is_file():
                continue
        state = "" if run.state == "finished" else f" ({run.state})"
        out.append((f"{run.name} · run #{run.id}{state}", str(path)))
    return out


def _mask_counts(store, ids: Iterable[int]) -> dict[int, int]:
    return {i: lesion_mask_count(store, i) for i in ids}


def read_items(store, ctx=None, *, masks: bool = True) -> list[Item]:
    """Every image of the store as library rows (runs off the UI thread; the store is thread-safe).

    ``masks=False`` skips the per-image mask count (it reads every mask file, :func:`lesion_mask_count`):
    for a first, fast look at a project whose full rows follow a moment later.
    """
    rows = store.images()
    labels = store.labels()
    masks = _mask_counts(store, [r.id for r in rows]) if masks else {}
    preds = latest_predictions(store)
    items = []
    for n, r in enumerate(rows):
        pred = preds.get(r.id, (None, None))
        items.append(Item(r.abs_path, r.rel_path, r.id, labels.get(r.id), masks.get(r.id, 0), pred[0], pred[1],
                          r.case_id, r.modality, r.width, r.height, r.is_color, n))
        if ctx is not None and n % 2000 == 0:
            ctx.check_cancelled()
    return items


def quick_listing(root: Path) -> list[Item]:
    """Image files under ``root`` before the scan has read them, so thumbnails can start at once.

    The same images as the scan that follows (:func:`core.data.walk.walk_folder`; nothing is decoded, so a
    broken file still gets a row until the scan reports it). Sleeps a moment between folders so the UI
    thread gets Python's GIL when it asks for it.
    """
    walk = walk_folder(root, pause_s=0.0005)
    return [Item(str(path), walk.rel_path(path), n_masks=len(walk.masks.get(path, ())), order=n)
            for n, path in enumerate(walk.images)]


def case_groups(items: Iterable[Item]) -> dict[str, list[Item]]:
    """The images of each case (``case_id`` from manifest.csv or DICOM PatientID), cases and images in
    natural order; images without a case id are in none."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        if it.case_id:
            groups.setdefault(it.case_id, []).append(it)
    return {c: sorted(groups[c], key=lambda it: it.sort_key) for c in sorted(groups, key=natural_key)}
