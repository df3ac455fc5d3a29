"""Checkpoint folders written atomically, and the one resolver per checkpoint kind.

A checkpoint is a folder (weights, config.json, resume state). It is written into ``<name>.tmp`` (files and
folder fsynced), then ``<name>`` -> ``<name>.old``, ``<name>.tmp`` -> ``<name>``, and ``.old`` removed. A kill
at any point leaves one complete checkpoint: ``<name>``, or, killed between the two renames, ``<name>.old``
and a complete ``<name>.tmp`` (the newer one). :func:`find_checkpoint_dir` finds it without changing
anything; :func:`repair_checkpoint_dir` (before resuming) puts it back under ``<name>``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

REQUIRED = ("config.json", "model.safetensors")
CLASSIFIER_DIRS = ("checkpoint-best", "checkpoint-last")
PRETRAIN_DIR = "checkpoint-last"


def _siblings(final: Path) -> tuple[Path, Path]:
    return final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")


def _complete(folder: Path, required: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in required)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint_dir(final: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` fills a fresh folder; it replaces ``final`` only once it is complete on disk."""
    final = Path(final)
    tmp, old = _siblings(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    repair_checkpoint_dir(final)        # never delete the only complete copy left by an earlier kill
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint_dir(final: str | Path, required: tuple[str, ...] = REQUIRED) -> Path | None:
    """The complete checkpoint meant by ``final`` (itself, or what a kill between the renames left), or None."""
    final = Path(final)
    tmp, old = _siblings(final)
    if _complete(final, required):
        return final
    if old.is_dir():                    # killed between the two renames: .tmp was complete before .old existed
        if _complete(tmp, required):
            return tmp
        if _complete(old, required):
            return old
    return None


def repair_checkpoint_dir(final: str | Path, required: tuple[str, ...] = REQUIRED) -> Path | None:
    """Finish a write a kill interrupted between the renames; returns ``final`` when a checkpoint is there."""
    final = Path(final)
    found = find_checkpoint_dir(final, required)
    if found is None or found == final:
        return found
    tmp, old = _siblings(final)
    if found == tmp:
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.rename(final)
    return final


def resolve_classifier_checkpoint(path: str | Path) -> Path:
    """A fine-tuned classifier: a checkpoint folder, or a run folder -> its checkpoint-best (else -last)."""
    p = Path(path)
    for final in (p, *(p / d for d in CLASSIFIER_DIRS)):
        found = find_checkpoint_dir(final)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no classifier checkpoint (config.json + model.safetensors) here "
                            f"or in checkpoint-best/")


def resolve_pretrain_checkpoint(path: str | Path) -> Path:
    """A pretraining checkpoint: a checkpoint folder, or a run folder -> its checkpoint-last."""
    p = Path(path)
    for final in (p, p / PRETRAIN_DIR):
        found = find_checkpoint_dir(final)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no checkpoint here (expected config.json and model.safetensors, "
                            f"or a run folder with {PRETRAIN_DIR}/)")
