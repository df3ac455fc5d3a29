"""Screenshots of the real app for review: start page, library grid, viewer with entropy heatmap, viewer
with lesion mask, viewer with the MAE mask, MAE panel, shortcuts dialog; on the demo project and on
BUSI (``../shared/data/busi``) when present.

    python tests/gui_screenshots.py [--out /tmp/screens] [--mae-checkpoint RUN_DIR] [--data-dir DIR]

Without a display it re-runs itself under ``xvfb-run -a -s "-screen 0 1600x1000x24"`` (install with
``scripts/xvfb-deps.sh``). Not a pytest test (no ``test_`` prefix): it takes a minute and writes files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _reexec_under_xvfb() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("MEDSSL_SCREENSHOTS_CHILD"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no display and no xvfb-run: run scripts/xvfb-deps.sh first")
    env = dict(os.environ, MEDSSL_SCREENSHOTS_CHILD="1")
    env.pop("QT_QPA_PLATFORM", None)
    cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env=env))


def spin(ms: int) -> None:
    from PySide6 import QtCore

    loop = QtCore.QEventLoop()
    QtCore.QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait(cond, timeout: float = 120.0) -> bool:
    end = time.time() + timeout
    while not cond() and time.time() < end:
        spin(20)
    return cond()


def shoot(win, path: Path) -> None:
    from PySide6 import QtGui

    spin(400)
    screen = QtGui.QGuiApplication.primaryScreen()
    pm = screen.grabWindow(win.winId()) if os.environ.get("DISPLAY") else win.grab()
    if pm.isNull() or pm.width() < 100:
        pm = win.grab()
    pm.save(str(path))
    print(f"  saved {path} ({pm.width()}x{pm.height()})")


def pick_row(win, pred) -> int:
    for n, it in enumerate(win.library.model.rows):
        if pred(it):
            return n
    return 0


def tour(win, folder: Path, out: Path, prefix: str, checkpoint: str | None, image_pred) -> None:
    print(f"{prefix}: opening {folder}")
    win.show_page("library") if win.project.is_open else None
    assert win.open_path(folder)
    wait(lambda: win.project.scan_complete, 600)
    wait(lambda: win.thumbs.pending() == 0, 30)
    spin(800)
    shoot(win, out / f"{prefix}_1_library.png")

    row = pick_row(win, image_pred)
    win.open_item(win.library.model.rows[row])
    wait(lambda: win.viewer.loaded is not None and win.viewer.loaded.item is win.library.model.rows[row], 30)
    v = win.viewer
    v.ov_lesion.set_checked(True)
    spin(300)
    shoot(win, out / f"{prefix}_3_viewer_lesion.png")

    v.ov_lesion.set_checked(False)
    v.ov_heat.set_checked(True)
    wait(lambda: v.canvas.layer_visible("entropy"), 60)
    shoot(win, out / f"{prefix}_2_viewer_entropy.png")

    v.ov_heat.set_checked(False)
    v.ov_mae.set_checked(True)
    wait(lambda: v.canvas.layer_visible("mae"), 60)
    shoot(win, out / f"{prefix}_4_viewer_mae_mask.png")
    v.ov_mae.set_checked(False)
    v.ov_lesion.set_checked(True)

    if checkpoint:
        win.mae.set_checkpoint(checkpoint)
    win.show_page("mae")
    ok = bool(win.mae.checkpoint()) and wait(lambda: win.mae.last is not None and win.mae.last[0] is v.item, 180)
    if not ok:
        print(f"  MAE panel: {win.mae.empty.text()!r}")
    shoot(win, out / f"{prefix}_5_mae_panel.png")
    win.show_page("viewer")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/screens"))
    ap.add_argument("--mae-checkpoint", default=None, help="MAE run or checkpoint folder for the MAE panel")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="per-user data folder (demo project, settings); default: a fresh temporary one")
    ap.add_argument("--busi", type=Path, default=REPO.parent / "shared" / "data" / "busi")
    ap.add_argument("--no-busi", action="store_true", help="only the demo project")
    args = ap.parse_args()
    _reexec_under_xvfb()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="medssl-screens-"))
    os.environ["MEDSSL_DATA_DIR"] = str(data)

    from desktop.app import create_app, preload_engine

    app = create_app()
    preload_engine()
    from desktop.main_window import MainWindow
    from desktop.settings import Settings, demo_folder

    win = MainWindow(Settings(data / "desktop.ini"))
    win.resize(1440, 900)
    win.prewarm()
    win.show()
    spin(500)
    shoot(win, args.out / "0_start.png")

    # demo project (generated on first use, like "Open demo project")
    win.open_demo()
    wait(lambda: win.project.is_open, 300)
    tour(win, demo_folder(), args.out, "demo", args.mae_checkpoint, lambda it: it.label == "malignant")

    from desktop.shortcuts import ShortcutsDialog

    dlg = ShortcutsDialog(win)
    dlg.show()
    spin(300)
    shoot(dlg, args.out / "6_shortcuts.png")
    dlg.close()

    if args.no_busi:
        pass
    elif (args.busi / "benign").is_dir():
        tour(win, args.busi, args.out, "busi", args.mae_checkpoint,
             lambda it: it.label == "malignant" and it.n_masks > 0)
    else:
        print(f"BUSI not found at {args.busi}: skipped")
    win.close()
    app.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
