"""Scanning an image folder into records the project store can import: labels, cases, masks, hashes.

Layout rules (the BUSI layout is the model):

- ``root/<class>/<image>``: the class folder name is the label. Files directly in ``root`` are unlabeled.
  Deeper nesting (``root/<class>/<patient>/<image>``) still takes the *first-level* folder as the label,
  so per-patient sub-folders inside class folders just work.
- Which files are images, and which masks belong to which image, is decided by the one folder walk,
  :func:`core.data.walk.walk_folder` (hidden entries, ``.medssl`` and ``DICOMDIR`` skipped, symlinked
  folders followed once, suffix-less DICOM detected, masks attached by name). Each entry the walk could
  not use is one :class:`ScanError`.
- Masks go into their image's ``mask_paths`` (read them with :func:`core.data.imageio.read_mask`, which
  takes the union). A mask with no image, an unreadable mask or a mask whose size differs from its image
  is one :class:`ScanError`; such a mask is not attached.
- ``root/manifest.csv`` (columns ``path`` plus any of ``label``, ``case_id``, ``modality``; ``path``
  relative to ``root``) overrides the folder label and the DICOM metadata with its non-empty values, and
  can add files the walk would skip (e.g. an unusual suffix). A row naming a missing file is a
  :class:`ScanError`. An empty cell never clears a value.
- Every image is fully decoded once (so truncated files are caught now, not during training) and hashed
  (sha256 of the bytes, so a moved folder keeps its identity). Each unreadable file is one
  :class:`ScanError` with a human reason; the scan goes on.
"""

from __future__ import annotations

import csv
import hashlib
import os
import threading
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from core.data.imageio import DEFAULT_MAX_PIXELS, ImageReadError, is_mask_file, mask_image_stem, probe_image, read_image
from core.data.walk import ScanError, attach_masks, walk_folder

if TYPE_CHECKING:
    from core.jobs import JobContext

__all__ = ["MANIFEST_NAME", "MANIFEST_COLUMNS", "ImageRecord", "ScanError", "ScanResult", "scan_folder",
           "file_sha256"]

MANIFEST_NAME = "manifest.csv"
SCAN_PIXEL_BUDGET = 64_000_000   # pixels decoded at once by all scan threads (about 1 GB of float32 grey)
MANIFEST_COLUMNS = ("path", "label", "case_id", "modality")
_HASH_CHUNK = 1 << 20


@dataclass
class ImageRecord:
    """One image found by a scan, with everything the store needs to import it."""

    path: Path
    rel_path: str
    label: str | None = None
    case_id: str | None = None
    modality: str | None = None
    mask_paths: list[Path] = field(default_factory=list)
    content_hash: str = ""
    width: int = 0
    height: int = 0
    is_color: bool = False


@dataclass
class ScanResult:
    """What :func:`scan_folder` found: readable images (sorted by ``rel_path``) and one error per bad file."""

    root: Path
    images: list[ImageRecord] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Sorted labels that at least one image carries."""
        return sorted({r.label for r in self.images if r.label is not None})

    def duplicates(self) -> list[list[ImageRecord]]:
        """Groups of files with identical bytes (the project store keeps one image per content, the first
        path); a group whose files carry different labels is a labelling conflict to resolve by hand."""
        groups: dict[str, list[ImageRecord]] = {}
        for r in self.images:
            groups.setdefault(r.content_hash, []).append(r)
        return [g for g in groups.values() if len(g) > 1]

    def label_conflicts(self) -> list[list[ImageRecord]]:
        return [g for g in self.duplicates() if len({r.label for r in g}) > 1]

    def identical_files(self) -> list[list[ImageRecord]]:
        """Groups of identical files with one label: the store merges each into one image (its first file),
        so the rest vanish from a project's list unless they are named."""
        return [g for g in self.duplicates() if len({r.label for r in g}) == 1]

    def summary(self) -> dict[str, Any]:
        class_counts = Counter(r.label for r in self.images if r.label is not None)
        modality_counts = Counter(r.modality for r in self.images if r.modality is not None)
        return {
            "n_images": len(self.images),
            "classes": {name: class_counts[name] for name in sorted(class_counts)},
            "n_unlabeled": sum(1 for r in self.images if r.label is None),
            "n_with_masks": sum(1 for r in self.images if r.mask_paths),
            "n_cases": len({r.case_id for r in self.images if r.case_id is not None}),
            "modalities": {name: modality_counts[name] for name in sorted(modality_counts)},
            "n_errors": len(self.errors),
            "n_duplicate_files": sum(len(g) - 1 for g in self.duplicates()),
            "label_conflicts": [[f"{r.rel_path} ({r.label})" for r in g] for g in self.label_conflicts()],
            "identical_files": [[r.rel_path for r in g] for g in self.identical_files()],
        }


@dataclass
class _ManifestRow:
    line: int
    label: str | None
    case_id: str | None
    modality: str | None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks (large DICOMs do not fill memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_folder(root: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                ctx: "JobContext | None" = None, workers: int | None = None) -> ScanResult:
    """Scan ``root`` (see the module docstring for the layout rules).

    ``max_pixels`` is the decompression-bomb guard passed to :func:`core.data.imageio.read_image`. ``workers``
    threads decode and hash in parallel (default: up to 4, by CPU count); Pillow, numpy and hashlib
    release the GIL, so threads do scale. With ``ctx``, progress is reported per file and cancellation is
    checked between files (raises :class:`core.jobs.JobCancelled`).
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise NotADirectoryError(f"{root_path}: not a folder")
    walk = walk_folder(root_path, ctx=ctx)
    errors = list(walk.problems)
    image_paths = set(walk.images)
    mask_paths = walk.mask_files
    manifest = _read_manifest(root_path, errors)
    _add_manifest_files(root_path, manifest, image_paths, errors)
    masks_by_image = _attach_masks(image_paths, mask_paths, errors)

    ordered = sorted(image_paths, key=lambda p: _rel_posix(root_path, p))
    total = len(ordered)
    if ctx is not None:
        ctx.progress(0, total, f"found {total} images, {len(mask_paths)} masks")
    workers = workers or min(4, os.cpu_count() or 1)

    budget = PixelBudget(SCAN_PIXEL_BUDGET)

    def inspect(path: Path) -> tuple[ImageRecord | None, list[ScanError]]:
        return _inspect_image(root_path, path, masks_by_image.get(path, []), manifest, max_pixels, budget)

    images: list[ImageRecord] = []
    for step, (record, file_errors) in enumerate(_map_in_order(inspect, ordered, workers, ctx), start=1):
        if record is not None:
            images.append(record)
        errors.extend(file_errors)
        if ctx is not None:
            ctx.progress(step, total, ordered[step - 1].name, errors=len(errors))
    errors.sort(key=lambda e: str(e.path))
    return ScanResult(root=root_path, images=images, errors=errors)


# -- paths ------------------------------------------------------------------------------------------------
def _rel_posix(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _label_for(rel_path: str) -> str | None:
    """First-level folder name; None for files directly in the root."""
    parts = PurePosixPath(rel_path).parts
    return parts[0] if len(parts) > 1 else None


# -- manifest ---------------------------------------------------------------------------------------------
def _clean_cell(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _read_manifest(root: Path, errors: list[ScanError]) -> dict[str, _ManifestRow]:
    """``rel_path -> row`` from root/manifest.csv (empty when absent). Bad rows become ScanErrors."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return {}
    try:
        with open(manifest_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = {(c or "").strip().lower() for c in (reader.fieldnames or [])}
            if "path" not in columns:
                errors.append(ScanError(manifest_path, "manifest.csv has no 'path' column, so it was ignored "
                                                       f"(expected columns: {', '.join(MANIFEST_COLUMNS)})"))
                return {}
            raw_rows = [({(k or "").strip().lower(): v for k, v in row.items()}, reader.line_num)
                        for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        errors.append(ScanError(manifest_path, f"manifest.csv could not be read ({exc}), so it was ignored"))
        return {}

    rows: dict[str, _ManifestRow] = {}
    for row, line in raw_rows:
        raw_path = _clean_cell(row.get("path"))
        if raw_path is None:
            continue  # blank line or a row without a path: nothing to attach it to
        rel_path = _manifest_rel_path(root, raw_path)
        if rel_path is None:
            errors.append(ScanError(Path(raw_path), f"listed in manifest.csv (line {line}) but outside the "
                                                    f"scanned folder {root}"))
            continue
        rows[rel_path] = _ManifestRow(line, _clean_cell(row.get("label")), _clean_cell(row.get("case_id")),
                                      _clean_cell(row.get("modality")))  # a later row for a path wins
    return rows


def _manifest_rel_path(root: Path, raw_path: str) -> str | None:
    """Normalise a manifest path (posix or Windows separators, ./, absolute inside root) to rel posix."""
    candidate = Path(raw_path.replace("\\", "/"))
    absolute = candidate if candidate.is_absolute() else root / candidate
    absolute = Path(os.path.normpath(absolute))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return None


def _add_manifest_files(root: Path, manifest: dict[str, _ManifestRow], images: set[Path],
                        errors: list[ScanError]) -> None:
    """Manifest rows extend the walk; a row naming a missing file (or a mask) is an error."""
    known = {_rel_posix(root, p) for p in images}
    for rel_path, row in manifest.items():
        if rel_path in known:
            continue
        path = root / rel_path
        if not path.is_file():
            errors.append(ScanError(path, f"listed in manifest.csv (line {row.line}) but the file does not exist"))
        elif is_mask_file(path.name):
            errors.append(ScanError(path, f"listed in manifest.csv (line {row.line}) but it is a mask file; "
                                          "masks are attached to their image, not listed"))
        else:
            images.add(path)


# -- masks ------------------------------------------------------------------------------------------------
def _attach_masks(images: set[Path], masks: list[Path], errors: list[ScanError]) -> dict[Path, list[Path]]:
    """The walk's mask attachment, over the walk's images plus the manifest's; an orphan is a ScanError."""
    attached, orphans = attach_masks(images, masks)
    for mask in orphans:
        errors.append(ScanError(mask, f"mask without image: no '{mask_image_stem(mask.name)}.<ext>' image "
                                      "in the same folder"))
    return attached


# -- per-image work (runs in worker threads) --------------------------------------------------------------
class PixelBudget:
    """Bounds the pixels the scan's threads decode at once: an image waits until its pixels fit beside
    the ones being decoded (one larger than the whole budget waits to be decoded alone), so a folder of
    huge images costs the memory of one, not of one per thread."""

    def __init__(self, pixels: int):
        self.pixels, self.in_use = pixels, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.pixels)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


def _inspect_image(root: Path, path: Path, masks: list[Path], manifest: dict[str, _ManifestRow],
                   max_pixels: int | None, budget: PixelBudget | None = None
                   ) -> tuple[ImageRecord | None, list[ScanError]]:
    """Decode once (size, colour, DICOM meta), hash, and check the masks' sizes against the image."""
    try:
        header = probe_image(path, max_pixels=max_pixels)     # header only: the size before decoding
        with budget.hold(header.width * header.height) if budget is not None else nullcontext():
            data = read_image(path, max_pixels=max_pixels)
        content_hash = file_sha256(path)
    except ImageReadError as exc:
        return None, [ScanError(path, exc.reason)]
    except OSError as exc:  # the hash read failed after a good decode (file removed, permissions)
        return None, [ScanError(path, f"cannot read the file ({exc.strerror or exc})")]
    except Exception as exc:  # a decoder bug must cost one file, not the scan
        return None, [ScanError(path, f"unexpected error while reading ({type(exc).__name__}: {exc})")]

    errors: list[ScanError] = []
    good_masks: list[Path] = []
    for mask in masks:
        try:
            header = probe_image(mask, max_pixels=max_pixels)
        except ImageReadError as exc:
            errors.append(ScanError(mask, f"unreadable mask ({exc.reason})"))
            continue
        if (header.width, header.height) != (data.width, data.height):
            errors.append(ScanError(mask, f"mask is {header.width}x{header.height} pixels but its image "
                                          f"{path.name} is {data.width}x{data.height}"))
            continue
        good_masks.append(mask)

    rel_path = _rel_posix(root, path)
    row = manifest.get(rel_path)
    record = ImageRecord(
        path=path, rel_path=rel_path,
        label=(row.label if row and row.label else None) or _label_for(rel_path),
        case_id=(row.case_id if row and row.case_id else None) or data.meta.get("case_id"),
        modality=(row.modality if row and row.modality else None) or data.meta.get("modality"),
        mask_paths=good_masks, content_hash=content_hash, width=data.width, height=data.height,
        is_color=data.is_color)
    return record, errors


def _map_in_order(fn, items: list[Path], workers: int, ctx: "JobContext | None"):
    """``fn`` over ``items`` in a thread pool, yielding results in input order.

    Only a small window of work is queued ahead, so a cancel stops the scan within a few files; the
    cancellation check runs between files, in the caller's thread.
    """
    if workers <= 1:
        for item in items:
            if ctx is not None:
                ctx.check_cancelled()
            yield fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan")
    pending: deque[Future] = deque()
    upcoming = iter(items)
    try:
        for item in upcoming:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                break
        while pending:
            if ctx is not None:
                ctx.check_cancelled()
            result = pending.popleft().result()
            next_item = next(upcoming, None)
            if next_item is not None:
                pending.append(pool.submit(fn, next_item))
            yield result
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
