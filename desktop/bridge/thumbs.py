"""Thumbnails: decoded in worker threads by ``core.data.imageio``, cached on disk and in memory.

The grid asks :meth:`ThumbnailService.get` while painting; a miss queues the file and returns None (the
delegate draws a placeholder). Requests are served newest first (LIFO), so the rows on screen now win
over rows scrolled past; the queue is bounded and stale requests are dropped (they are asked again if
their rows come back into view). Workers hand back ``QImage`` (thread-safe); the UI thread turns them
into pixmaps and announce them (``thumbnailReady``); the grid repaints just those tiles.

Disk cache: ``<project>/.medssl/thumbs/<sha1(path|mtime|size|px)>.png``, so a changed file gets a new
thumbnail and opening a project again shows its grid without decoding anything.
"""

from __future__ import annotations


import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtGui

log = logging.getLogger(__name__)

THUMB_PX = 160
MAX_QUEUE = 400
MEMORY_ITEMS = 3000


def array_to_qimage(arr: np.ndarray) -> QtGui.QImage:
    """float [0,1] grey [H,W] or colour [H,W,3] (or uint8) -> a QImage that owns its pixels."""
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    if arr.ndim == 2:
        img = QtGui.QImage(arr.data, w, h, arr.strides[0], QtGui.QImage.Format.Format_Grayscale8)
    elif arr.shape[2] == 3:
        img = QtGui.QImage(arr.data, w, h, arr.strides[0], QtGui.QImage.Format.Format_RGB888)
    else:
        img = QtGui.QImage(arr.data, w, h, arr.strides[0], QtGui.QImage.Format.Format_RGBA8888)
    return img.copy()


def _lower_thread_priority() -> None:
    """Linux: a thread has its own nice value; background decoding yields the CPU to the UI thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)
    except (AttributeError, OSError):
        pass


class _Signals(QtCore.QObject):
    done = QtCore.Signal(str, QtGui.QImage)
    failed = QtCore.Signal(str, str)


class ThumbnailService(QtCore.QObject):
    """Memory + disk thumbnail cache with a LIFO worker pool."""

    thumbnailReady = QtCore.Signal(str)       # path: its thumbnail (or its failure) arrived

    def __init__(self, cache_dir: Path | None = None, *, size: int = THUMB_PX, workers: int | None = None,
                 parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.size = size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._mem: OrderedDict[str, QtGui.QPixmap] = OrderedDict()
        self._failed: dict[str, str] = {}
        self._stack: list[str] = []
        self._queued: set[str] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._epoch = 0
        self._signals = _Signals()
        self._signals.done.connect(self._on_done, QtCore.Qt.ConnectionType.QueuedConnection)
        self._signals.failed.connect(self._on_failed, QtCore.Qt.ConnectionType.QueuedConnection)
        n = workers or max(1, min(1, (os.cpu_count() or 2) - 1))
        self._threads = [threading.Thread(target=self._work, name=f"thumbs-{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    # -- UI thread --------------------------------------------------------------------------------------
    def set_cache_dir(self, cache_dir: Path | None) -> None:
        with self._cond:
            self.cache_dir = Path(cache_dir) if cache_dir else None
            self._stack.clear()
            self._queued.clear()
            self._epoch += 1
        self._mem.clear()
        self._failed.clear()

    def get(self, path: str) -> QtGui.QPixmap | None:
        pm = self._mem.get(path)
        if pm is not None:
            self._mem.move_to_end(path)
            return pm
        if path in self._failed:
            return None
        with self._cond:
            if path in self._queued:
                # move to the top: it is on screen now
                try:
                    self._stack.remove(path)
                except ValueError:
                    pass
            self._stack.append(path)
            self._queued.add(path)
            if len(self._stack) > MAX_QUEUE:
                drop = self._stack[: len(self._stack) - MAX_QUEUE]
                del self._stack[: len(drop)]
                self._queued.difference_update(drop)
            self._cond.notify()
        return None

    def error_for(self, path: str) -> str | None:
        return self._failed.get(path)

    def pending(self) -> int:
        with self._cond:
            return len(self._stack)

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._stack.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=2)

    @QtCore.Slot(str, QtGui.QImage)
    def _on_done(self, path: str, image: QtGui.QImage) -> None:
        self._mem[path] = QtGui.QPixmap.fromImage(image)
        while len(self._mem) > MEMORY_ITEMS:
            self._mem.popitem(last=False)
        self.thumbnailReady.emit(path)

    @QtCore.Slot(str, str)
    def _on_failed(self, path: str, reason: str) -> None:
        self._failed[path] = reason
        self.thumbnailReady.emit(path)

    # -- workers ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        _lower_thread_priority()
        while True:
            with self._cond:
                while not self._stack and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                path = self._stack.pop()
                epoch, cache_dir = self._epoch, self.cache_dir
            try:
                image = self._load(path, cache_dir)
            except Exception as exc:  # unreadable file: the delegate shows a warning tile
                reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                with self._cond:
                    self._queued.discard(path)
                    stale = epoch != self._epoch
                if not stale:
                    self._signals.failed.emit(path, reason)
                continue
            with self._cond:
                self._queued.discard(path)
                stale = epoch != self._epoch
            if not stale:
                self._signals.done.emit(path, image)

    def _cache_file(self, path: str, cache_dir: Path) -> Path:
        st = os.stat(path)
        key = f"{path}|{st.st_mtime_ns}|{st.st_size}|{self.size}"
        return cache_dir / f"{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()}.png"

    def _load(self, path: str, cache_dir: Path | None) -> QtGui.QImage:
        cache_file = self._cache_file(path, cache_dir) if cache_dir is not None else None
        if cache_file is not None and cache_file.exists():
            img = QtGui.QImage(str(cache_file))
            if not img.isNull():
                return img
        from core.data.imageio import read_image

        data = read_image(path)
        img = array_to_qimage(data.array)
        if max(img.width(), img.height()) > self.size:
            img = img.scaled(self.size, self.size, QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                             QtCore.Qt.TransformationMode.SmoothTransformation)
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_name(f"{cache_file.stem}.{threading.get_ident()}.tmp.png")
                if img.save(str(tmp), "PNG"):
                    os.replace(tmp, cache_file)
            except OSError as exc:
                log.debug("thumbnail cache write failed: %s", exc)
        return img
