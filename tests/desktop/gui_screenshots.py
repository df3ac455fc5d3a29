"""Screenshots of the real app for review: start page, library grid, viewer with entropy heatmap, viewer
with lesion mask, viewer with the MAE mask, MAE panel, shortcuts dialog; on the demo project and on
BUSI (``../shared/data/busi``) when present. ``--pages`` instead shoots every page and dialog once, the
whole screen each time (so a dialog off-screen or clipped shows): start page, library, unreadable-files
list, viewer with the lesion overlay, MAE panel, predictions, Confusion & ROC, runs browser, jobs panel
with a running job and with a failed one (a long error), weights page, study dialog, per-case view,
review mode, near-duplicates; on a small phantom project (no training: prediction and runs are recorded
as a job leaves them).

    python tests/desktop/gui_screenshots.py [--out /tmp/screens] [--mae-checkpoint RUN_DIR] [--data-dir DIR]
    python tests/desktop/gui_screenshots.py --pages --screen 1280x720 [--out /tmp/screens]

Without a display it re-runs itself under ``xvfb-run -a -s "-screen 0 WxHx24"`` (``--screen``, default
1600x1000) with the openbox window manager when installed (install with ``scripts/xvfb-deps.sh``). Not a
pytest test (no ``test_`` prefix): it takes a minute and writes files.
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

from PySide6 import QtCore  # noqa: E402  (for the jobs tour)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _reexec_under_xvfb(screen: str) -> None:
    if os.environ.get("DISPLAY") or os.environ.get("MEDSSL_SCREENSHOTS_CHILD"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no display and no xvfb-run: run scripts/xvfb-deps.sh first")
    env = dict(os.environ, MEDSSL_SCREENSHOTS_CHILD="1")
    env.pop("QT_QPA_PLATFORM", None)
    cmd = [xvfb, "-a", "-s", f"-screen 0 {screen}x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env=env))


def start_window_manager():
    """openbox on the Xvfb display (decorations, placement and maximising as on a desktop); None without."""
    wm = shutil.which("openbox")
    if wm is None or not os.environ.get("MEDSSL_SCREENSHOTS_CHILD"):
        return None
    proc = subprocess.Popen([wm], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


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


def shoot_screen(path: Path) -> None:
    """The whole screen: what is off-screen or under another window shows as such."""
    from PySide6 import QtGui

    spin(500)
    pm = QtGui.QGuiApplication.primaryScreen().grabWindow(0)
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


def jobs_tour(win, folder: Path, out: Path, prefix: str, epochs: int = 3, tiny: bool = False) -> None:
    """Real (small) runs from the dialogs: tiny MAE pretraining (jobs panel with live curves, then the
    MAE panel from its checkpoint), two fine-tuned members, an ensemble, a prediction run (predictions
    table, confusion/ROC). Tiny ConvNeXt, 64 px, CPU."""
    from desktop.widgets.job_dialogs import EnsembleDialog, FinetuneDialog, PredictDialog, PretrainDialog

    win.open_path(folder)
    wait(lambda: win.project.ready and win.project.scan_complete, 600)
    jobs = win.jobs

    def run(dlg, kind, shot_running: Path | None = None):
        dlg._accept()
        rid = win.launch_job(kind, dlg)
        if shot_running is not None:
            wait(lambda: len(jobs.entries[rid].losses) >= 25 and len(jobs.entries[rid].history) >= 1
                 or jobs.entries[rid].state != "running", 600)
            shoot(win, shot_running)
        wait(lambda: jobs.entries[rid].state not in ("queued", "running"), 900)
        e = jobs.entries[rid]
        print(f"  {kind} #{rid}: {e.state} {e.error}")
        return rid

    win.jobs_dock.show()
    win.resizeDocks([win.jobs_dock], [430], QtCore.Qt.Orientation.Vertical)
    d = PretrainDialog(win.project, win.settings, win)
    d.method.setCurrentIndex(d.method.findText("MAE, entropy-guided masks"))
    d.backbone.setCurrentText("convnext_atto")
    d.tiny.setChecked(tiny)
    d.image_size.setValue(64)
    d.epochs.setValue(epochs)
    d.batch.setValue(32)
    d.lr.setValue(1.5e-3)
    d.set_device("cpu")
    d.name.setText("mae-atto-64")
    d.show()
    spin(300)
    shoot(d, out / f"{prefix}_jobs_0_pretrain_dialog.png")
    d.hide()
    pre = run(d, "pretrain", out / f"{prefix}_jobs_1_panel_live.png")
    shoot(win, out / f"{prefix}_jobs_2_panel_finished.png")
    win.mae.set_checkpoint(jobs.entries[pre].run_dir)
    it = win.library.model.item_at(0)
    for row in win.library.model.rows:
        if row.label == "malignant":
            it = row
            break
    win.open_item(it, switch=False)
    win.show_page("mae")
    wait(lambda: win.mae.last is not None and win.mae.last[0] is win.viewer.item, 180)
    shoot(win, out / f"{prefix}_jobs_3_mae_panel.png")
    for init in ("pretrained", "random"):
        f = FinetuneDialog(win.project, win.settings, win)
        {"pretrained": f.init_pretrained, "random": f.init_random}[init].setChecked(True)
        f.backbone.setCurrentText("convnext_atto")
        f.tiny.setChecked(tiny)
        f.image_size.setValue(64)
        f.epochs.setValue(epochs)
        f.batch.setValue(32)
        f.set_device("cpu")
        f.name.setText(f"atto-{init}")
        if init == "pretrained":
            f.show()
            spin(300)
            shoot(f, out / f"{prefix}_jobs_4_finetune_dialog.png")
            f.hide()
        run(f, "finetune")
    shoot(win, out / f"{prefix}_jobs_5_panel_finetune.png")
    run(EnsembleDialog(win.project, win.settings, win), "ensemble")
    p = PredictDialog(win.project, win.settings, win)
    run(p, "predict")
    wait(lambda: win.project.scan_complete, 300)
    win.jobs_dock.hide()
    win.predictions.refresh()
    win.show_page("predictions")
    wait(lambda: win.predictions.model.rows and win.predictions.model.filled)   # read in a worker, shown in batches
    shoot(win, out / f"{prefix}_jobs_6_predictions.png")
    win.predictions.suggest()
    win.show_page("predictions")
    shoot(win, out / f"{prefix}_jobs_7_suggested.png")
    win.predictions.show_combo.setCurrentIndex(0)
    win.predictions.tabs.setCurrentIndex(1)
    shoot(win, out / f"{prefix}_jobs_8_confusion_roc.png")
    win.predictions.tabs.setCurrentIndex(0)
    browser = win.show_runs()           # the two fine-tuned members side by side, validation overlaid
    ft = [r.id for r in win.project.store.list_runs("finetune")]
    browser.left.combo.setCurrentIndex(browser.left.combo.findData(ft[-1]))
    browser.right.combo.setCurrentIndex(browser.right.combo.findData(ft[0]))
    browser.resize(1440, 900)
    wait(lambda: browser.settled, 30)
    shoot(browser, out / f"{prefix}_jobs_9_runs_browser.png")
    browser.close()


def pages_project(root: Path) -> Path:
    """A small phantom project (24 images in cases, with masks) plus one unreadable file and one identical
    copy filed under another class (a label conflict and a near-duplicate group)."""
    from core.data.demo import generate_demo

    folder = generate_demo(root / "phantoms", n_cases=2, images_per_case=2, seed=3)
    (folder / "benign" / "broken_export_from_the_scanner.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    first = sorted((folder / "malignant").rglob("*.png"))
    first = next(p for p in first if "_mask" not in p.name)
    shutil.copy(first, folder / "benign" / f"copy_of_{first.name}")
    return folder


def record_runs(store) -> None:
    """Two finished fine-tuning runs with per-epoch logs, and a finished prediction run over every image
    (random probabilities, two members), as the jobs leave them."""
    import json

    import numpy as np

    from core.project import runs

    rng = np.random.default_rng(0)
    for name, lr in (("atto-imagenet", 1e-3), ("atto-mae", 5e-4)):
        run = runs.create_run(store, "finetune", name, {"lr": lr, "epochs": 6, "backbone": "convnext_atto"})
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(run.run_dir) / "history.jsonl", "w") as fh:
            for epoch in range(1, 7):
                fh.write(json.dumps({"epoch": epoch, "train_loss": 1.1 / epoch + rng.random() * 0.05,
                                     "val_balanced_accuracy": 0.4 + 0.08 * epoch * rng.random(),
                                     "val_accuracy": 0.45 + 0.07 * epoch * rng.random(), "lr": lr / epoch}) + "\n")
        store.update_run(run.id, state="finished", metrics={"test_accuracy": 0.71, "test_balanced_accuracy": 0.68})
    images = [im.id for im in store.images()]
    classes = store.classes()
    mp = rng.dirichlet(np.ones(len(classes)), size=(2, len(images)))
    p = mp.mean(0)
    ent = -(p * np.log(p)).sum(1)
    rid = store.add_run("predict", "ensemble of both", {}, state="finished")
    store.add_prediction_arrays(rid, images, classes, ["atto-imagenet", "atto-mae"], p, mp, ent,
                                np.abs(mp[0] - mp[1]).sum(1) / 2)


def pages_tour(win, root: Path, out: Path, prefix: str) -> None:
    """Every page and dialog once, the whole screen each time."""
    from core.models.backbones import TINY_CONVNEXT
    from core.pretrain.config import TrainConfig
    from core.project import runs
    from PySide6 import QtWidgets
    from desktop.widgets.study_dialog import StudyDialog

    folder = pages_project(root)
    shoot_screen(out / f"{prefix}_00_start.png")
    assert win.open_path(folder)
    wait(lambda: win.project.scan_complete, 300)
    wait(lambda: win.thumbs.pending() == 0, 30)
    shoot_screen(out / f"{prefix}_01_library.png")

    dlg = win.scan_problems.open_list()
    shoot_screen(out / f"{prefix}_02_unreadable_files.png")
    dlg.close()

    row = pick_row(win, lambda it: it.n_masks > 0 and it.label == "malignant")
    win.open_item(win.library.model.rows[row])
    wait(lambda: win.viewer.loaded is not None and win.viewer.loaded.item is win.library.model.rows[row], 30)
    win.viewer.ov_lesion.set_checked(True)
    shoot_screen(out / f"{prefix}_03_viewer_mask.png")
    win.show_page("mae")
    shoot_screen(out / f"{prefix}_04_mae_panel.png")

    record_runs(win.project.store)
    win.predictions.refresh()
    win.show_page("predictions")
    wait(lambda: win.predictions.model.rows and win.predictions.model.filled, 60)
    shoot_screen(out / f"{prefix}_05_predictions.png")
    win.predictions.tabs.setCurrentWidget(win.predictions.charts)
    wait(lambda: win.predictions.charts.matrix is not None, 60)
    shoot_screen(out / f"{prefix}_06_confusion_roc.png")
    win.predictions.tabs.setCurrentIndex(0)

    browser = win.show_runs()
    wait(lambda: browser.settled, 30)
    shoot_screen(out / f"{prefix}_07_runs_browser.png")
    browser.close()

    store = win.project.store
    failed = runs.create_run(store, "finetune", "atto-fails-on-a-long-error", {"lr": 1e-3})
    store.update_run(failed.id, state="failed", error=(
        "RuntimeError: CUDA out of memory while building the batch of 64 images at 512 px from "
        "/data/clinic/exports/2024-11-03/ultrasound/left-breast/very/long/path/to/a/scanner/export.png "
        "(tried to allocate 2.00 GiB; 1.20 GiB free): lower the batch size or the image size and Resume"))
    win.jobs.load()
    win.jobs_dock.show()
    win.jobs_panel.select_run(failed.id)
    shoot_screen(out / f"{prefix}_08_jobs_failed.png")
    files = sorted(it.rel_path for it in win.project.items if it.image_id is not None)[:16]
    cfg = TrainConfig(method="mae", data=str(folder), files=files, backbone="convnext_atto",
                      timm_kwargs={k: list(v) for k, v in TINY_CONVNEXT.items()}, image_size=64, epochs=200,
                      batch_size=8, device="cpu")
    rid = win.jobs.submit("pretrain", "mae-running", cfg.to_dict())
    entry = win.jobs.entries[rid]
    wait(lambda: entry.state == "running" and len(entry.losses) >= 6, 300)
    win.jobs_panel.select_run(rid)
    shoot_screen(out / f"{prefix}_09_jobs_running.png")
    entry.runner.cancel()
    wait(lambda: entry.state != "running", 120)
    win.jobs_dock.hide()

    weights = win.show_weights()
    wait(lambda: weights.page.table.rowCount() > 0 or weights.page.caller.pending == 0, 60)
    shoot_screen(out / f"{prefix}_10_weights.png")
    weights.close()
    study = StudyDialog(win.project, win.settings, win)
    study.show()
    shoot_screen(out / f"{prefix}_11_study_dialog.png")
    study.close()
    case = win.show_case()
    shoot_screen(out / f"{prefix}_12_case_view.png")
    case.close()
    review = win.show_review()
    shoot_screen(out / f"{prefix}_13_review.png")
    review.close()
    dup = win.show_duplicates()
    dup.find()
    wait(lambda: dup.groups.count() > 0 or dup.find_button.isEnabled(), 120)
    if dup.groups.count():
        dup.groups.setCurrentRow(0)
    shoot_screen(out / f"{prefix}_14_duplicates.png")
    dup.close()
    QtWidgets.QApplication.processEvents()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/screens"))
    ap.add_argument("--mae-checkpoint", default=None, help="MAE run or checkpoint folder for the MAE panel")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="per-user data folder (demo project, settings); default: a fresh temporary one")
    ap.add_argument("--busi", type=Path, default=REPO.parent / "shared" / "data" / "busi")
    ap.add_argument("--no-busi", action="store_true", help="only the demo project")
    ap.add_argument("--jobs", action="store_true",
                    help="only the training screens: real tiny runs from the dialogs (BUSI when present, else "
                         "the demo project)")
    ap.add_argument("--jobs-epochs", type=int, default=3)
    ap.add_argument("--jobs-tiny", action="store_true", help="test-size backbone (fast on a busy CPU)")
    ap.add_argument("--pages", action="store_true", help="every page and dialog once, on a small phantom project")
    ap.add_argument("--screen", default="1600x1000", help="the Xvfb screen, WxH (e.g. 1280x720)")
    args = ap.parse_args()
    _reexec_under_xvfb(args.screen)
    wm = start_window_manager()
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
    if args.pages:
        win.showMaximized()
        spin(800)
        try:
            pages_tour(win, data, args.out, args.screen)
        finally:
            win.close()
            app.quit()
            if wm is not None:
                wm.terminate()
        return 0
    win.show()
    spin(500)
    shoot(win, args.out / "0_start.png")

    if args.jobs:
        if (args.busi / "benign").is_dir() and not args.no_busi:
            jobs_tour(win, args.busi, args.out, "busi", args.jobs_epochs, args.jobs_tiny)
        else:
            win.open_demo()
            wait(lambda: win.project.is_open, 300)
            jobs_tour(win, demo_folder(), args.out, "demo", args.jobs_epochs, args.jobs_tiny)
        win.close()
        app.quit()
        return 0

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
