"""Per-user folders: the platform's places (platformdirs), or one folder for everything with MEDSSL_DATA_DIR."""

from __future__ import annotations

import platformdirs

from core import paths


def test_platform_places(monkeypatch):
    monkeypatch.delenv("MEDSSL_DATA_DIR", raising=False)
    assert str(paths.user_data_dir()) == platformdirs.user_data_dir("medssl-studio", appauthor=False)
    assert str(paths.user_cache_dir()) == platformdirs.user_cache_dir("medssl-studio", appauthor=False)
    assert str(paths.user_config_dir()) == platformdirs.user_config_dir("medssl-studio", appauthor=False)
    assert paths.demo_project_dir().parent == paths.user_data_dir()


def test_one_folder_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSSL_DATA_DIR", str(tmp_path))
    assert paths.user_data_dir() == tmp_path and paths.user_config_dir() == tmp_path
    assert paths.user_cache_dir() == tmp_path / "cache"
