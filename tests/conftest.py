"""Shared fixtures. Qt runs offscreen in tests; BUSI tests skip cleanly when the data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parents[1]


def busi_path() -> Path | None:
    """../shared/data/busi beside the checkout, or $MEDSSL_BUSI_DIR."""
    candidates = [os.environ.get("MEDSSL_BUSI_DIR"), REPO_ROOT.parent / "shared" / "data" / "busi"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "benign").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def busi_dir() -> Path:
    path = busi_path()
    if path is None:
        pytest.skip("BUSI data not found (expected ../shared/data/busi or $MEDSSL_BUSI_DIR)")
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """One small phantom data set per test session (read-only for tests: copy before changing it)."""
    from core.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "demo", seed=0)
