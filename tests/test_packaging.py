"""The desktop entry installer: menu entry, icons and the project MIME type, and --uninstall."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "packaging" / "install-desktop-entry.sh"


def _run(*args, data: Path):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(data.parent), "XDG_DATA_HOME": str(data)})


def test_install_and_uninstall(tmp_path):
    data = tmp_path / "share"
    fake = tmp_path / "medssl-studio"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    out = _run("--exec", str(fake), data=data)
    assert out.returncode == 0, out.stderr
    entry = (data / "applications" / "medssl-studio.desktop").read_text()
    assert f'Exec="{fake}" %f' in entry and "MimeType=application/x-medssl-project;" in entry
    assert (data / "icons" / "hicolor" / "scalable" / "apps" / "medssl-studio.svg").is_file()
    for size in (16, 32, 48, 128, 256):
        assert (data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "medssl-studio.png").is_file()
    mime = ET.parse(data / "mime" / "packages" / "medssl-studio.xml").getroot()
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    assert mime.find("m:mime-type", ns).get("type") == "application/x-medssl-project"
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(data / "applications" / "medssl-studio.desktop")],
                               capture_output=True, text=True)
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    out = _run("--uninstall", data=data)
    assert out.returncode == 0, out.stderr
    assert not (data / "applications" / "medssl-studio.desktop").exists()
    assert not list((data / "icons").rglob("medssl-studio.*"))
    assert not (data / "mime" / "packages" / "medssl-studio.xml").exists()


def test_missing_app_is_a_clear_error(tmp_path):
    out = _run("--exec", str(tmp_path / "nowhere"), data=tmp_path / "share")
    assert out.returncode == 1 and "not found" in out.stderr and "--exec PATH" in out.stderr


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="desktop-file-validate not installed "
                    "(apt-get install desktop-file-utils)")
def test_shipped_desktop_file_validates():
    out = subprocess.run(["desktop-file-validate", str(REPO / "packaging" / "medssl-studio.desktop")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout


def test_project_files_carry_the_application_id_the_mime_type_matches(tmp_path):
    from core.project.store import APPLICATION_ID, ProjectStore

    ProjectStore(tmp_path / "project.db").close()
    header = (tmp_path / "project.db").read_bytes()[:100]
    assert header[68:72] == b"MSSL" == APPLICATION_ID.to_bytes(4, "big")
    mime = (REPO / "packaging" / "medssl-studio-mime.xml").read_text()
    assert f'type="big32" offset="68" value="0x{APPLICATION_ID:08X}"' in mime


def test_the_bundle_starts_its_own_scan_child(monkeypatch):
    import sys

    from desktop.bridge import scan_process

    assert scan_process.child_command("{}")[1:3] == ["-m", "desktop.bridge.scan_process"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert scan_process.child_command("{}") == [sys.executable, "--scan-worker", "{}"]
