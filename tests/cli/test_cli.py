"""The `medssl` command: version, help on every sub-command, and the foundation commands end to end."""

import json
import subprocess
import sys

import pytest

from core import __version__
from core.cli import build_parser, main


def subcommand_paths(parser, prefix=()):
    """Every sub-command path in the argparse tree, e.g. ('pretrain', 'mae')."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from subcommand_paths(sub, prefix + (name,))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_every_command_has_help(capsys):
    paths = list(subcommand_paths(build_parser()))
    names = {p[0] for p in paths}
    assert {"scan", "demo-data", "entropy", "pretrain", "reconstruct", "finetune", "ensemble",
            "predict"} <= names
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage:" in out and len(out) > 100, path


def test_demo_data_then_scan(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--cases", "2"]) == 0
    capsys.readouterr()
    assert main(["scan", str(out), "--json", "--store"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_errors"] == 0
    assert set(summary["classes"]) == {"normal", "benign", "malignant"}
    assert summary["n_cases"] == 6 and len(summary["modalities"]) == 2
    assert (out / ".medssl" / "project.db").exists()
    # A second scan must not list the store folder's files as images.
    assert main(["scan", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == summary["n_images"]


def test_scan_reports_bad_files_and_goes_on(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    from PIL import Image
    Image.new("L", (8, 8), 100).save(tmp_path / "a" / "good.png")
    assert main(["scan", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "broken.png" in out and "empty.png" in out
    assert "errors" in out and "images" in out


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "nope")]) == 1
    assert "nope" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "core.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_store_of_a_read_only_folder_goes_to_the_user_folder(tmp_path, monkeypatch, capsys):
    """A read-only data set (like the shared BUSI copy) never gains files, even for root."""
    from core.paths import project_dir

    data = tmp_path / "ro"
    assert main(["demo-data", str(data), "--cases", "1"]) == 0
    monkeypatch.setenv("MEDSSL_DATA_DIR", str(tmp_path / "user"))
    data.chmod(0o555)
    try:
        assert main(["scan", str(data), "--store"]) == 0
        assert not (data / ".medssl").exists()
        assert (project_dir(data) / "project.db").exists()
        assert str(project_dir(data)).startswith(str(tmp_path / "user"))
    finally:
        data.chmod(0o755)


def test_scan_store_names_a_file_whose_name_is_not_utf8_and_imports_the_rest(tmp_path, capsys):
    import os
    import shutil

    out = tmp_path / "d"
    assert main(["demo-data", str(out), "--cases", "1"]) == 0
    first = next(out.rglob("*.png"))
    shutil.copy(first, os.path.join(os.fsencode(first.parent), b"caf\xe9.png"))
    capsys.readouterr()
    assert main(["scan", str(out), "--json", "--store"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert any("caf\\xe9.png" in e["path"] and "UTF-8" in e["reason"] for e in summary["errors"])
    assert summary["store"]["new"] == summary["n_images"] > 0
    assert main(["scan", str(out), "--store"]) == 0       # a rerun as well


def test_scan_store_on_a_full_disk_is_one_line_naming_the_project_file_and_exit_1(tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    from core.project.store import ProjectStore
    from tests.full_disk import every_connection_full, fill_disk, write_until_full

    out = tmp_path / "d"
    assert main(["demo-data", str(out), "--cases", "1"]) == 0
    assert main(["scan", str(out), "--store"]) == 0
    db = out / ".medssl" / "project.db"
    with ProjectStore(db) as store:     # fill the file's last free room, so a new image needs a new page
        fill_disk(store._conn())
        write_until_full(lambda i: store.add_image(content_hash=f"filler{i}", rel_path=f"filler/{i}.png",
                                                   abs_path=f"/filler/{i}.png"))
        before = (store.images(), store.labels(), store.label_audit())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(
        next(out.rglob("*.png")).parent / "new.png")
    capsys.readouterr()

    with monkeypatch.context() as m:
        every_connection_full(m)
        assert main(["scan", str(out), "--store"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("medssl")]
    assert errors == [f"medssl: error: {db}: not saved, the disk is full (database or disk is full). Nothing of this "
                      f"change was written; everything saved before is intact. Free some space and try again"]
    with ProjectStore(db) as store:
        assert store.integrity_check() == "ok"
        assert (store.images(), store.labels(), store.label_audit()) == before
    assert main(["scan", str(out), "--store"]) == 0       # space is back: the rerun imports the new image


def test_version_does_not_import_torch():
    code = ("import sys\nfrom core.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["medssl", __version__, "False"]


@pytest.mark.parametrize("command", [["finetune"], ["pretrain", "mae", "FOLDER"]])
def test_a_mistyped_project_path_creates_no_store(tmp_path, capsys, command):
    typo = tmp_path / "projct" / "project.db"
    command = [str(tmp_path) if c == "FOLDER" else c for c in command]
    assert main([*command, "--project", str(typo), "--out", str(tmp_path / "run")]) == 1
    assert "no project file there" in capsys.readouterr().err
    assert not typo.exists() and not typo.parent.exists()


def _all_parsers(parser, name="medssl"):
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


def test_help_texts_show_percent_signs_once(capsys):
    from core.cli import build_parser

    with pytest.raises(SystemExit):
        main(["pretrain", "mae", "--help"])
    text = capsys.readouterr().out
    assert "60 %" in text and "%%" not in text
    parsers = dict(_all_parsers(build_parser()))
    assert len(parsers) > 15
    doubled = {name: [line for line in p.format_help().splitlines() if "%%" in line or "%(" in line]
               for name, p in parsers.items()}
    assert not {name: lines for name, lines in doubled.items() if lines}
