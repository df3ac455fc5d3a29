"""The one folder walk: which files under a folder are images, and which mask files belong to them.

Everything that lists a folder's images uses :func:`walk_folder` (the library scan, batch prediction's
``list_images``, the desktop's quick listing, ``medssl entropy``, pretraining data through the scan), so a
folder means the same images everywhere. The rules:

- Images are files whose suffix is in :data:`core.data.imageio.IMAGE_EXTENSIONS` (any case), plus files
  with another or no suffix that carry the DICOM ``DICM`` preamble. Nothing is decoded here.
- ``<name>_mask.png``, ``<name>_mask_1.png``... are lesion masks of ``<name>.<ext>`` in the same folder:
  they are attached to every image of that stem (``a.png`` and ``a.tif`` both get ``a_mask.png``), in
  the order ``_mask``, ``_mask_1``, ``_mask_2``, ..., ``_mask_10``, and never listed as images. A mask with
  no image is kept in :attr:`FolderWalk.orphan_masks`.
- Hidden files and folders (name starting with ``.``, so the app's own ``.medssl``) are skipped, and so is
  a ``DICOMDIR`` index file; pipes, sockets and devices are never opened.
- Symbolic links: a link to a file is an image like its target. A link to a folder is followed, but
  every real folder is listed once: a folder reached both directly and through a link is listed under
  its direct path, and a link back to a folder already listed (a loop) is not entered. A link that leads
  nowhere (missing target, or a link to itself) with an image suffix is a :class:`ScanError`.
- A name that is not valid UTF-8 (possible on Linux) cannot be stored or shown faithfully: such an
  image, or folder, is a :class:`ScanError` (its path written with ``\\xNN`` escapes) and is skipped;
  the walk goes on. So is a folder that
  cannot be listed (permissions).
- ``exclude`` folders (e.g. an output folder inside the input) are not entered.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from core.data.imageio import IMAGE_EXTENSIONS, is_dicom_file, is_mask_file, mask_image_stem

if TYPE_CHECKING:
    from core.jobs import JobContext

__all__ = ["FolderWalk", "ScanError", "walk_folder", "attach_masks", "is_image_name", "printable_path"]

SKIPPED_NAMES = frozenset({"DICOMDIR"})
_MASK_INDEX = re.compile(r"_mask(?:_(\d+))?\.png$", re.IGNORECASE)
_IMAGE_SUFFIXES = frozenset(e.lower() for e in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ScanError:
    """A file the walk or the scan could not use, and why (one human sentence)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class FolderWalk:
    """What :func:`walk_folder` found under ``root``; ``images`` are sorted by their relative path."""

    root: Path
    images: list[Path] = field(default_factory=list)
    masks: dict[Path, list[Path]] = field(default_factory=dict)      # image -> its mask files
    mask_files: list[Path] = field(default_factory=list)             # every mask file found
    orphan_masks: list[Path] = field(default_factory=list)           # mask files with no image
    problems: list[ScanError] = field(default_factory=list)

    def rel_path(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    @property
    def rel_paths(self) -> list[str]:
        return [self.rel_path(p) for p in self.images]


def is_image_name(name: str) -> bool:
    """True when the suffix alone makes a file an image candidate (no DICOM preamble check)."""
    return os.path.splitext(name)[1].lower() in _IMAGE_SUFFIXES


def walk_folder(root: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (),
                ctx: "JobContext | None" = None, pause_s: float = 0.0) -> FolderWalk:
    """Images and masks under ``root`` by the module's rules.

    With ``ctx``, cancellation is checked between folders (raises :class:`core.jobs.JobCancelled`).
    ``pause_s`` sleeps between folders, so a walk in a worker thread leaves the GIL to a UI thread.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise NotADirectoryError(f"{root_path}: not a folder")
    excluded = {os.path.realpath(p) for p in exclude}
    seen = {os.path.realpath(root_path)}
    images: list[Path] = []
    mask_files: list[Path] = []
    problems: list[ScanError] = []
    real_dirs: list[Path] = [root_path]   # folders to list now (reached without a link)
    linked_dirs: list[Path] = []          # folder links, entered once every direct folder is listed
    while real_dirs or linked_dirs:
        if ctx is not None:
            ctx.check_cancelled()
        if real_dirs:
            folder = real_dirs.pop()
        else:
            linked_dirs.sort()            # of two links to one folder, the first by name wins
            folder = linked_dirs.pop(0)
            real = os.path.realpath(folder)
            if real in seen or real in excluded:
                continue
            seen.add(real)
        subdirs, links = _list_folder(folder, images, mask_files, problems)
        for sub in subdirs:
            real = os.path.realpath(sub)
            if real not in excluded and real not in seen:
                seen.add(real)
                real_dirs.append(sub)
        linked_dirs.extend(links)
        if pause_s:
            time.sleep(pause_s)
    images.sort(key=lambda p: p.relative_to(root_path).as_posix())
    masks, orphans = attach_masks(images, mask_files)
    problems.sort(key=lambda p: str(p.path))
    return FolderWalk(root_path, images, masks, sorted(mask_files), orphans, problems)


def _list_folder(folder: Path, images: list[Path], masks: list[Path],
                 problems: list[ScanError]) -> tuple[list[Path], list[Path]]:
    """Sort one folder's entries: images and masks into the lists; (sub-folders, folder links) returned."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        problems.append(ScanError(printable_path(folder), f"cannot list the folder ({exc.strerror or exc})"))
        return [], []
    subdirs: list[Path] = []
    links: list[Path] = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name in SKIPPED_NAMES:
            continue
        path = folder / name
        try:
            is_dir = entry.is_dir()
        except OSError:        # a link loop (ELOOP): not a folder we can enter
            is_dir = False
        if is_dir:
            if not _valid_utf8(name):
                problems.append(ScanError(printable_path(path), "the folder name is not valid UTF-8, so its "
                                                              "images were skipped (rename it)"))
            elif entry.is_symlink():
                links.append(path)
            else:
                subdirs.append(path)
            continue
        by_name = is_image_name(name) or is_mask_file(name)
        if entry.is_symlink() and not os.path.exists(path):
            if by_name:
                problems.append(ScanError(printable_path(path), "symbolic link that leads nowhere (its target is "
                                                              "missing, or it points back to itself)"))
            continue
        if not _is_regular_file(entry):
            continue               # a pipe, socket or device: never opened (reading a pipe would block)
        if not (by_name or is_dicom_file(path)):
            continue
        if not _valid_utf8(name):
            problems.append(ScanError(printable_path(path), "the file name is not valid UTF-8, so it was skipped "
                                                          "(rename it)"))
        elif is_mask_file(name):
            masks.append(path)
        else:
            images.append(path)
    return subdirs, links


def _is_regular_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:   # undecodable bytes arrive as lone surrogates
        return False
    return True


def printable_path(path: Path) -> Path:
    """The path with its undecodable bytes written as ``\\xe9``, so messages, CSV files and the store take it."""
    return Path(os.fsencode(path).decode("utf-8", "backslashreplace"))


def _mask_order(path: Path) -> tuple[str, int]:
    """``a_mask.png`` < ``a_mask_1.png`` < ``a_mask_2.png`` < ``a_mask_10.png``."""
    match = _MASK_INDEX.search(path.name)
    index = int(match.group(1)) + 1 if match and match.group(1) else 0
    return mask_image_stem(path.name) or "", index


def attach_masks(images: Iterable[Path], masks: Iterable[Path]) -> tuple[dict[Path, list[Path]], list[Path]]:
    """``({image: its masks in order}, masks without an image)``: a mask belongs to every image in its
    folder whose stem is the mask's image stem."""
    images_by_stem: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for image in images:
        images_by_stem[(image.parent, image.stem)].append(image)
    attached: dict[Path, list[Path]] = defaultdict(list)
    orphans: list[Path] = []
    for mask in sorted(masks, key=lambda p: (p.parent, _mask_order(p))):
        owners = images_by_stem.get((mask.parent, mask_image_stem(mask.name) or ""))
        if not owners:
            orphans.append(mask)
            continue
        for owner in owners:
            attached[owner].append(mask)
    return dict(attached), sorted(orphans)
