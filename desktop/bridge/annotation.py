"""Annotation edits as undoable commands, each committed to the project store at once.

An edit is saved first and goes on the undo stack only once it is saved: a write the disk refuses (a full
disk: :class:`core.project.store.StoreWriteError`, or the mask PNG's ``OSError``) is reported by
:meth:`ProjectModel.write_failed`, the screen goes on showing what is stored, and the stack gets no entry.

* :class:`LabelCommand`: set / clear an image's class (``ProjectStore.set_label``; undo and redo go
  through ``undo_label`` / ``redo_label`` so the store's audit trail shows them).
* :class:`MaskCommand`: a brush stroke, fill or clear. It holds the mask state before and after (which
  PNGs are attached, and the pixels of the app's own mask file, bit-packed) and applies either state by
  writing the app's PNG and attaching / detaching files with ``add_mask`` / ``remove_mask``.

Where the app's mask file goes (:meth:`MaskFiles.app_mask_path`): beside the image as
``<name>_mask.png`` when the image has no dataset mask, the folder is writable and no such file exists;
otherwise under ``<project>/.medssl/masks/<rel path>_mask.png``. Dataset files are never written: editing
an image that has a dataset mask starts from it, saves the result as the app's file and detaches (never
deletes) the dataset mask; undo attaches it again.
"""

from __future__ import annotations


import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6 import QtGui

from core.atomic import atomic_path
from core.project.store import StoreWriteError
from desktop.bridge import mask_ops
from desktop.bridge.project import ProjectModel
from desktop.bridge.rows import Item


# -- labels -------------------------------------------------------------------------------------------
class LabelCommand(QtGui.QUndoCommand):
    """A label edit already saved (its first redo, the push, writes nothing)."""

    def __init__(self, project: ProjectModel, image_id: int, old: str | None, new: str | None, name: str):
        super().__init__(f"Label {name}: {new or 'none'}")
        self.project, self.image_id, self.old, self.new = project, image_id, old, new
        self._pushed = False

    def redo(self) -> None:
        if self._pushed:
            apply_or_drop(self, self.project, f"Redo of “{self.text()}”",
                          lambda: self.project.redo_label(self.image_id, self.new))
        self._pushed = True
        self.project.editApplied.emit(self.image_id)

    def undo(self) -> None:
        apply_or_drop(self, self.project, f"Undo of “{self.text()}”",
                      lambda: self.project.undo_label(self.image_id, self.old))
        self.project.editApplied.emit(self.image_id)

    def rename_label(self, old: str, new: str) -> None:
        self.old = new if self.old == old else self.old
        self.new = new if self.new == old else self.new


def apply_or_drop(command: QtGui.QUndoCommand, project: ProjectModel, what: str, write) -> bool:
    """An undo or redo step's write. When the disk refuses it the step is said and dropped (QUndoStack deletes
    a command made obsolete in its undo/redo), so the stack never claims a state the store does not hold."""
    try:
        write()
    except (StoreWriteError, OSError) as exc:
        project.write_failed(what, exc)
        command.setObsolete(True)
        return False
    return True


def set_label(project: ProjectModel, item: Item, label: str | None) -> bool:
    """Save a label edit and push it on the undo stack (no-op when unchanged). Returns True when something
    changed; False, with the label and the stack as they were, when the store refused the write."""
    if item is None or item.image_id is None or item.label == label:
        return False
    old = item.label
    try:
        project.write_label(item.image_id, label)
    except StoreWriteError as exc:
        project.write_failed(f"Label “{label or 'none'}” of {item.name}", exc)
        return False
    project.undo_stack.push(LabelCommand(project, item.image_id, old, label, item.name))
    return True


# -- masks --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskState:
    attached: tuple[tuple[str, str], ...]          # (path, source) currently attached
    app_pixels: tuple | None = None                # packed pixels of the app's mask file, if it is written


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a 0/255 8-bit PNG atomically (temp file + rename: a crash never leaves half a file)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")


class MaskFiles:
    """Reads and writes an image's lesion masks through the project store."""

    def __init__(self, project: ProjectModel):
        self.project = project

    @property
    def store(self):
        return self.project.store

    def state(self, image_id: int) -> MaskState:
        return MaskState(tuple((m.path, m.source) for m in self.store.masks(image_id)))

    def app_mask_path(self, item: Item) -> Path:
        for ev in reversed(self.store.mask_history(item.image_id)):
            if ev.source == "app":
                return Path(ev.path)
        image = Path(item.path)
        sidecar = image.with_name(f"{image.stem}_mask.png")
        has_dataset = any(m.source == "dataset" for m in self.store.mask_history(item.image_id))
        if (not has_dataset and not sidecar.exists() and self.project.paths.folder_writable
                and os.access(image.parent, os.W_OK)):
            return sidecar
        rel = Path(item.rel_path)
        return self.project.paths.masks_dir / rel.parent / f"{rel.stem}_mask.png"

    def read(self, image_id: int, shape: tuple[int, int]) -> np.ndarray:
        """Union of the attached masks (False where none), resized problems reported as empty."""
        paths = [Path(m.path) for m in self.store.masks(image_id)]
        paths = [p for p in paths if p.exists()]
        if not paths:
            return np.zeros(shape, dtype=bool)
        from core.data.imageio import read_mask

        mask = np.asarray(read_mask(paths), dtype=bool)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask is {mask.shape[1]}×{mask.shape[0]} px but the image is {shape[1]}×{shape[0]}")
        return mask

    def apply(self, image_id: int, state: MaskState, app_path: Path) -> None:
        """Make ``state`` current: write the app file (if the state has pixels), then fix attachments."""
        if state.app_pixels is not None:
            write_mask_png(app_path, mask_ops.unpack(state.app_pixels))
        wanted = dict(state.attached)
        with self.store.transaction():
            current = {m.path: m.source for m in self.store.masks(image_id)}
            for path in current:
                if path not in wanted:
                    self.store.remove_mask(image_id, path)
            for path, source in wanted.items():
                if path not in current:
                    self.store.add_mask(image_id, path, source)
        self.project.masks_changed(image_id)


class MaskCommand(QtGui.QUndoCommand):
    """A mask edit already saved (its first redo, the push, writes nothing)."""

    def __init__(self, files: MaskFiles, item: Item, before: MaskState, after: MaskState, app_path: Path,
                 text: str):
        super().__init__(f"{text}: {item.name}")
        self.files, self.image_id, self.before, self.after, self.app_path = (files, item.image_id, before,
                                                                            after, app_path)
        self._pushed = False

    def redo(self) -> None:
        if self._pushed:
            self._apply("Redo", self.after)
        self._pushed = True
        self.files.project.editApplied.emit(self.image_id)

    def undo(self) -> None:
        self._apply("Undo", self.before)
        self.files.project.editApplied.emit(self.image_id)

    def _apply(self, what: str, state: MaskState) -> None:
        project = self.files.project
        if not apply_or_drop(self, project, f"{what} of “{self.text()}”",
                             lambda: self.files.apply(self.image_id, state, self.app_path)):
            project.masks_changed(self.image_id)


def push_mask_edit(project: ProjectModel, files: MaskFiles, item: Item, before_pixels: np.ndarray,
                   after_pixels: np.ndarray | None, text: str) -> bool:
    """Save a mask edit of ``item`` and push it on the undo stack: ``after_pixels`` None means "no mask"
    (clear). Returns False when the disk refused it: the viewer is given the stored mask back."""
    app_path = files.app_mask_path(item)
    before = files.state(item.image_id)
    # pixels the app file holds now (so undo can restore them when it was the attached mask)
    if any(p == str(app_path) for p, _ in before.attached):
        before = MaskState(before.attached, mask_ops.pack(before_pixels))
    if after_pixels is None:
        after = MaskState(())
    else:
        after = MaskState(((str(app_path), "app"),), mask_ops.pack(after_pixels))
    try:
        files.apply(item.image_id, after, app_path)
    except (StoreWriteError, OSError) as exc:
        project.write_failed(f"{text} on {item.name}", exc)
        project.masks_changed(item.image_id)
        return False
    project.undo_stack.push(MaskCommand(files, item, before, after, app_path, text))
    return True
