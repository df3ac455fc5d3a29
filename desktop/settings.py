"""Per-user desktop settings (recent projects, window state) and where a project keeps its files.

A *project* is an image folder the user opened plus its store. The store lives in
``<folder>/.medssl/project.db`` (``core.paths``), thumbnails in ``<folder>/.medssl/thumbs/`` and masks
drawn in the app either beside the image (``<name>_mask.png``) or under ``<folder>/.medssl/masks/``.
A folder we may not write to (a read-only data set, a CD) keeps its project folder in the per-user
data folder instead, so opening it never fails and never writes into it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PySide6 import QtCore

from core.paths import (PROJECT_DIR_NAME, demo_project_dir, fallback_project_dir, folder_accepts_writes,
                        project_dir, user_data_dir)
from core.project.store import ProjectStore

MAX_RECENT = 10


@dataclass(frozen=True)
class ProjectPaths:
    folder: Path          # the image folder (scan root)
    project_dir: Path     # .medssl folder (store, thumbnails, app masks)
    folder_writable: bool

    @property
    def store_path(self) -> Path:
        return self.project_dir / "project.db"

    @property
    def thumbs_dir(self) -> Path:
        return self.project_dir / "thumbs"

    @property
    def masks_dir(self) -> Path:
        return self.project_dir / "masks"


def _writable(folder: Path) -> bool:
    if not folder_accepts_writes(folder):
        return False
    pdir = folder / PROJECT_DIR_NAME
    return not pdir.exists() or os.access(pdir, os.W_OK | os.X_OK)


def locate_project(path: str | Path) -> ProjectPaths:
    """Project paths for an image folder, or for a ``project.db`` / ``.medssl`` folder inside one."""
    path = Path(path).expanduser().absolute()
    if path.is_file() and path.suffix == ".db":
        root = ProjectStore.peek_meta(path, "root")
        if root is not None:
            folder = Path(root)
            return ProjectPaths(folder, path.parent, _writable(folder))
        path = path.parent
    if path.name == PROJECT_DIR_NAME and path.is_dir():
        path = path.parent
    folder = path
    if _writable(folder):
        return ProjectPaths(folder, project_dir(folder), True)
    return ProjectPaths(folder, fallback_project_dir(folder), False)


def demo_folder() -> Path:
    return demo_project_dir()


def demo_ready(folder: Path | None = None) -> bool:
    """True when the demo set in ``folder`` was generated completely (its marker says so)."""
    folder = folder or demo_folder()
    marker = folder / ".medssl-demo.json"
    try:
        return bool(json.loads(marker.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


class Settings:
    """Desktop preferences in an INI file under the per-user data folder (``$MEDSSL_DATA_DIR`` in tests)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else user_data_dir() / "desktop.ini"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._q = QtCore.QSettings(str(self.path), QtCore.QSettings.Format.IniFormat)

    # recent projects ---------------------------------------------------------------------------------
    def recent_projects(self) -> list[Path]:
        raw = self._q.value("recent/projects", [])
        if isinstance(raw, str):
            raw = [raw] if raw else []
        out = []
        for item in raw or []:
            p = Path(str(item))
            if p.is_dir() and p not in out:
                out.append(p)
        return out[:MAX_RECENT]

    def add_recent(self, folder: Path) -> None:
        items = [str(Path(folder).absolute())]
        items += [str(p) for p in self.recent_projects() if str(p) != items[0]]
        self._q.setValue("recent/projects", items[:MAX_RECENT])   # written to disk by Qt soon after

    def remove_recent(self, folder: Path) -> None:
        self._q.setValue("recent/projects", [str(p) for p in self.recent_projects() if p != Path(folder)])
        self._q.sync()

    # generic -----------------------------------------------------------------------------------------
    def value(self, key: str, default=None):
        return self._q.value(key, default)

    def set_value(self, key: str, value) -> None:
        self._q.setValue(key, value)

    def sync(self) -> None:
        self._q.sync()
