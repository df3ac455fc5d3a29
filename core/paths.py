"""Where things live on disk: the project store beside the images, resources, per-user data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_DIR_NAME = ".medssl"


def project_dir(image_folder: str | Path) -> Path:
    """The app's own folder inside an image folder: store, thumbnails, app-written masks."""
    return Path(image_folder) / PROJECT_DIR_NAME


def default_store_path(image_folder: str | Path) -> Path:
    return project_dir(image_folder) / "project.db"


def resources_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "resources"


def user_data_dir() -> Path:
    """Per-user data (demo project, recent projects), following the platform's convention."""
    override = os.environ.get("MEDSSL_DATA_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "medssl-studio"


def demo_project_dir() -> Path:
    return user_data_dir() / "demo"
