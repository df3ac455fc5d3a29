"""Where things live on disk: the project store beside the images, resources, per-user data."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

PROJECT_DIR_NAME = ".medssl"


def folder_accepts_writes(folder: str | Path) -> bool:
    """False for a folder someone made read-only (no write bit at all), even when we run as root and
    os.access would say yes: a shared data set must never gain files from us."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def fallback_project_dir(image_folder: str | Path) -> Path:
    """Where the project of a read-only image folder lives: per user, keyed by the folder's path."""
    folder = Path(image_folder).expanduser().absolute()
    digest = hashlib.sha1(str(folder).encode("utf-8")).hexdigest()[:10]
    return user_data_dir() / "projects" / f"{folder.name}-{digest}"


def project_dir(image_folder: str | Path) -> Path:
    """The app's own folder (store, thumbnails, app-written masks): inside the image folder when we
    may write there, else under the per-user data folder."""
    own = Path(image_folder) / PROJECT_DIR_NAME
    if own.is_dir() or folder_accepts_writes(image_folder):
        return own
    return fallback_project_dir(image_folder)


def default_store_path(image_folder: str | Path) -> Path:
    return project_dir(image_folder) / "project.db"


def resources_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "resources"


APP_NAME = "medssl-studio"


def _override() -> Path | None:
    """``MEDSSL_DATA_DIR`` puts everything per-user in one folder (tests, a portable install)."""
    value = os.environ.get("MEDSSL_DATA_DIR")
    return Path(value) if value else None


def user_data_dir() -> Path:
    """Per-user data (demo project, weights, projects of read-only folders): the platform's place
    (``~/.local/share/medssl-studio``, ``%LOCALAPPDATA%\\medssl-studio``, ``~/Library/Application Support/...``)."""
    import platformdirs

    return _override() or Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def user_cache_dir() -> Path:
    """Things that can be made again (ONNX exports, modality statistics): safe to delete."""
    import platformdirs

    base = _override()
    return base / "cache" if base else Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def user_config_dir() -> Path:
    """Settings (recent projects, window layout)."""
    import platformdirs

    return _override() or Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def demo_project_dir() -> Path:
    return user_data_dir() / "demo"


MAX_NAME_BYTES = 255     # one file name on ext4, APFS, NTFS (Errno 36 above it)


def output_file_name(stem: str, suffix: str) -> str:
    """``stem + suffix`` as one file name the file system takes: a stem too long (in UTF-8 bytes) is cut and
    given a short hash of the whole stem, so two long names that share a beginning stay apart."""
    name = stem + suffix
    if len(os.fsencode(name)) <= MAX_NAME_BYTES:
        return name
    tag = "~" + hashlib.sha1(os.fsencode(stem)).hexdigest()[:8]
    room = MAX_NAME_BYTES - len(os.fsencode(tag + suffix))
    cut = os.fsencode(stem)[:room].decode("utf-8", "ignore")
    return cut + tag + suffix
