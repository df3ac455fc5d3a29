"""Checkpoint folders written atomically, and the one resolver per checkpoint kind.

A checkpoint is a folder (weights, config.json, resume state). It is written into ``<name>.tmp`` (files and
folder fsynced), then ``<name>`` -> ``<name>.old``, ``<name>.tmp`` -> ``<name>``, and ``.old`` removed. A kill
at any point leaves one complete checkpoint: ``<name>``, or, killed between the two renames, ``<name>.old``
and a complete ``<name>.tmp`` (the newer one). :func:`find_checkpoint_dir` finds it without changing
anything; :func:`repair_checkpoint_dir` (before resuming) puts it back under ``<name>``.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from core.atomic import fsync_path, write_text_atomic

REQUIRED = ("config.json", "model.safetensors")
CLASSIFIER_DIRS = ("checkpoint-best", "checkpoint-last")
PRETRAIN_DIR = "checkpoint-last"


def _siblings(final: Path) -> tuple[Path, Path]:
    return final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")


def _complete(folder: Path, required: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in required)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, most often); the previous one is kept."""


def _write_failure(final: Path, exc: BaseException) -> CheckpointWriteError | None:
    """A clear error for a write that failed for lack of space (PyTorch's zip writer reports a full disk
    as ``enforce fail at inline_container.cc``), or None for any other failure."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on the disk"
    elif isinstance(exc, RuntimeError) and "inline_container" in str(exc):
        cause = "the file could not be written (the disk is probably full)"
    else:
        return None
    try:
        free = f"; {shutil.disk_usage(final.parent).free / 2**20:.0f} MiB free now"
    except OSError:
        free = ""
    return CheckpointWriteError(f"{final}: checkpoint not saved: {cause}{free}. The previous checkpoint is "
                                f"kept; free some space, then resume")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a damaged file (truncated, not JSON, not UTF-8) is a ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: damaged (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: damaged or truncated JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg})") from None


def trim_epoch_log(path: str | Path, epochs_done: int) -> int:
    """Before resuming after ``epochs_done`` epochs: drop the JSON lines of later epochs from a per-epoch log
    (written after the checkpoint a kill cut short; the resumed run writes them again) and a cut last line.
    Returns the number of lines dropped; the file is rewritten atomically only when there are any."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue                    # cut by a kill mid-write
        if line.endswith("\n") and isinstance(row, dict) and int(row.get("epoch", 0)) <= epochs_done:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    write_text_atomic(path, "".join(kept))
    return len(lines) - len(kept)


def write_checkpoint_dir(final: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` fills a fresh folder; it replaces ``final`` only once it is complete on disk."""
    final = Path(final)
    tmp, old = _siblings(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    repair_checkpoint_dir(final)        # never delete the only complete copy left by an earlier kill
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)        # its space back; the complete checkpoint is untouched
        clear = _write_failure(final, exc)
        if clear is not None:
            raise clear from exc
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_path(final.parent)
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
