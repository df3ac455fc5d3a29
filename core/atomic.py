"""Files written so that a kill or a full disk leaves the old file or the new one, never a torn one.

The one recipe for every file the app writes that a user or a resume depends on (run state, logits,
reports, masks, encoders, caches): a temp file beside the target, flushed and fsynced, renamed over it, the
folder fsynced. Checkpoint *folders* have their own two-rename protocol (``core.train.checkpoint``), built
on :func:`fsync_path`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator


def fsync_path(path: str | Path) -> None:
    """Flush a file or a folder (its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write (any writer: PIL, safetensors, csv); when the block ends
    without an error the file is fsynced and renamed over ``path``, else it is removed. The temp name is
    per process and thread, so concurrent writers of one cache file never share it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, **dump_kwargs) -> Path:
    return write_text_atomic(path, json.dumps(obj, **dump_kwargs))
