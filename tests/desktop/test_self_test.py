"""`medssl-studio --self-test` from the virtual environment (the bundle's smoke test runs the same)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_self_test_passes_from_the_venv(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["HOME"] = str(tmp_path)             # nothing of the user's is read or written
    out = subprocess.run([sys.executable, "-m", "desktop.app", "--self-test"], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["window:", "demo", "library:", "viewer:", "prediction:"]
    assert all(line.startswith("ok ") for line in lines[:-1]) and lines[-1].startswith("passed: self-test")
    assert not (tmp_path / ".local").exists()


@pytest.mark.gui
def test_self_test_reports_a_failing_step_and_exits_1(qtbot, monkeypatch, tmp_path):
    import desktop.self_test as st

    def broken(work, folder):
        raise RuntimeError("no model could be built")

    monkeypatch.setattr(st, "_check_prediction", broken)
    monkeypatch.setenv("MEDSSL_DATA_DIR", str(tmp_path / "data"))
    lines: list[str] = []
    assert st.run_self_test(lines.append) == 1
    assert "FAIL prediction: RuntimeError: no model could be built" in lines
    assert any(line.startswith("ok   viewer:") for line in lines) and lines[-1].startswith("FAILED")


def test_no_display_gives_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    out = subprocess.run([sys.executable, "-m", "desktop.app"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=120)
    assert out.returncode == 2
    assert "no display available" in out.stderr and "xvfb-run" in out.stderr
