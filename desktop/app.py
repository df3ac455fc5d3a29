"""``medssl-studio [PROJECT_OR_FOLDER]``: the desktop app.

With no argument it opens on the start page (recent projects, "Open folder…", "Open demo project").
"""

from __future__ import annotations


import argparse
import logging
import os
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medssl-studio",
        description="MedSSL Studio desktop: label images, draw lesion masks, view entropy maps and MAE "
                    "reconstructions. Every change is saved at once.")
    p.add_argument("path", nargs="?", help="an image folder, or a project.db, to open")
    p.add_argument("--demo", action="store_true", help="open the demo project (made on first use)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("--self-test", action="store_true",
                   help="check this installation offscreen (demo project, library, viewer with the entropy "
                        "overlay, a tiny prediction); exit 0 when it works, 1 otherwise")
    return p


def no_display_message() -> str | None:
    """Why the window cannot open here (Linux without X11/Wayland), or None. Qt itself would abort."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("medssl-studio: no display available (neither DISPLAY nor WAYLAND_DISPLAY is set), so the window "
            "cannot open. Run it from a desktop session, over `ssh -X`, or under a virtual screen "
            "(`xvfb-run medssl-studio`). The command line works without a display: `medssl --help`. "
            "To check the installation: `medssl-studio --self-test`.")


#: how long a thread may hold Python's GIL while another asks for it (CPython's default: 5 ms). The UI thread
#: goes in and out of Qt's C++ hundreds of times per event-loop turn, and each time a busy worker thread (the
#: scan's file listing, the thumbnail decoders) had the GIL it waited up to the whole interval: opening a
#: 2000-image folder stalled the window 93-119 ms with 5 ms, 59-66 ms with 1 ms (the worst of three opens,
#: three runs each, bench/gui.py's open on a quiet 2-core VM); the UI thread's own work was 20-45 ms either way.
UI_SWITCH_INTERVAL_S = 0.001


def create_app(argv: Sequence[str] | None = None):
    """The QApplication with the app's name, icon and theme (reuses a running one, e.g. in tests)."""
    from PySide6 import QtCore, QtWidgets

    from desktop import theme

    sys.setswitchinterval(UI_SWITCH_INTERVAL_S)

    app = QtWidgets.QApplication.instance()
    if app is None:
        QtCore.QCoreApplication.setApplicationName("MedSSL Studio")
        QtCore.QCoreApplication.setOrganizationName("MedSSL")
        app = QtWidgets.QApplication(list(argv) if argv is not None else sys.argv[:1])
    if not app.property("medssl_themed"):   # once: re-styling re-polishes every live widget (and crashed
        app.setApplicationDisplayName("MedSSL Studio")   # Qt when half-deleted test windows were around)
        app.setWindowIcon(theme.app_icon())
        theme.apply_theme(app)
        app.setProperty("medssl_themed", True)
    return app


def preload_engine() -> None:
    """Import the torch-backed engine modules now, in the UI thread, before the window exists.

    Importing torch (or scikit-learn, for the predictions page's confusion matrix and ROC; or timm, whose
    pretrained configs say where ImageNet weights are, asked by the start page as soon as it shows) takes
    seconds and holds Python's GIL most of that time; done later, even from a worker thread, it would freeze
    the window for that long. Done here, behind the splash screen, the window never stalls on it, and
    ``MainWindow.prewarm`` moves the ~200 000 objects these imports leave out of the garbage collector's
    way (imported later, every full collection walked them: 40-110 ms stalls while a folder was scanned).
    """
    import importlib

    for name in ("core.analysis.entropy", "core.analysis.masking", "core.data.library", "core.project.store",
                 "core.data.demo", "sklearn.metrics", "timm", "core.models.weights", "core.models.weights_folder",
                 "core.models.download"):
        importlib.import_module(name)


def _splash():
    from PySide6 import QtCore, QtGui, QtWidgets

    from desktop import theme

    pm = QtGui.QPixmap(460, 240)
    pm.fill(QtGui.QColor(theme.PANEL))
    p = QtGui.QPainter(pm)
    p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    p.setPen(QtGui.QPen(QtGui.QColor(theme.BORDER), 2))
    p.drawRect(pm.rect().adjusted(1, 1, -1, -1))
    p.drawPixmap(36, 64, theme.app_icon().pixmap(96, 96))
    f = p.font()
    f.setPointSizeF(20)
    f.setBold(True)
    p.setFont(f)
    p.setPen(QtGui.QColor(theme.TEXT))
    p.drawText(QtCore.QRect(152, 78, 290, 40), QtCore.Qt.AlignmentFlag.AlignVCenter, "MedSSL Studio")
    f.setPointSizeF(10)
    f.setBold(False)
    p.setFont(f)
    p.setPen(QtGui.QColor(theme.TEXT_DIM))
    p.drawText(QtCore.QRect(152, 116, 290, 24), QtCore.Qt.AlignmentFlag.AlignVCenter,
               "Offline annotation and self-supervised pretraining")
    p.end()
    splash = QtWidgets.QSplashScreen(pm)
    splash.showMessage("Loading…", QtCore.Qt.AlignmentFlag.AlignBottom | QtCore.Qt.AlignmentFlag.AlignHCenter,
                       QtGui.QColor(theme.TEXT_DIM))
    return splash


def worker_start_method(platform: str) -> str | None:
    """How the window's process starts DataLoader workers (None: the platform's default). Its jobs run in
    threads beside Qt's, with CUDA initialised once a job used a GPU; forking such a process copies locks
    other threads hold and can hang the worker. Linux forks by default, so forkserver there (workers are
    forked from a clean single-threaded server); macOS and Windows already spawn."""
    return "forkserver" if platform.startswith("linux") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from desktop.bridge.scan_process import SCAN_WORKER_FLAG

    if argv[:1] == [SCAN_WORKER_FLAG]:         # the bundled app started as its own scan child process
        from desktop.bridge.scan_process import _child_main

        return _child_main()
    args = build_parser().parse_args(argv)
    if args.version:
        from core import __version__

        print(f"medssl-studio {__version__}")
        return 0
    if args.self_test:
        from desktop.self_test import run_self_test

        return run_self_test()
    why = no_display_message()
    if why:
        print(why, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start_method = worker_start_method(sys.platform)
    if start_method:
        import multiprocessing

        multiprocessing.set_start_method(start_method, force=True)
    app = create_app()
    splash = _splash()
    splash.show()
    app.processEvents()
    preload_engine()
    from desktop.main_window import MainWindow

    win = MainWindow()
    win.prewarm()
    win.show()
    splash.finish(win)
    if args.demo:
        win.open_demo()
    elif args.path:
        win.open_path(args.path)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
