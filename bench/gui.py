"""GUI responsiveness benchmark: open a generated 10 000-image folder in the real window.

Measures, with a timer probe in the UI thread (a 10 ms QTimer; any gap longer than its interval is time
the UI thread could not react):

* ``first_thumbnails_s``: open -> the first decoded thumbnail is painted in the grid (cold: no project
  store, no thumbnail cache);
* ``max_ui_block_ms``: the longest UI stall from opening through the whole scan + import, scrolling the
  grid from top to bottom, filtering, searching, opening and labelling an image in the viewer, closing
  the project and opening it again (``phase_block_ms`` splits it by phase);
* ``warm_first_thumbnails_s``: the same folder opened again (store and thumbnail cache present);
* phases ``predictions``, ``confusion_roc``, ``runs_browser``, ``heatmap``: the pages found slow in use
  (first show of the Predictions page with a 3-member prediction run over every image, its Confusion & ROC
  tab, the runs browser, the entropy heatmap of a 948×704 image);
* phases ``stop_job_open_folder`` and ``stop_job_quit``: a running (tiny) pretraining job stopped because a
  folder is opened, and because the window quits (the user answers Yes to "stop it?");
* ``page_block_ms``: the longest stall per page / action above (``open_project``: the cold open and scan,
  ``reopen_project``: the warm one); ``page_busy_ms``: the most CPU time the UI thread itself spent between
  two ticks there. On a shared CPU a stall can be mostly waiting (another process has the core, a worker
  has the GIL): a long stall with little busy time is the machine, a busy one is work to move off the UI
  thread.

The machine's own load shows up as stalls too: ``load_avg`` is reported alongside. The benchmark's own set-up
(the prediction run it writes, the large image it saves) is not measured: the probe pauses across it.

Usage: ``python bench/gui.py [--images 10000] [--folder DIR] [--stacks]`` (runs offscreen unless a display is
set). Each run works in its own temporary folder (removed at the end); ``--folder`` keeps the generated images
for reuse.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_folder(folder: Path, n: int, size: int = 96) -> Path:
    """n small grey PNGs in 4 class folders (+ a mask for every 10th); reused when already there."""
    import numpy as np
    from PIL import Image

    marker = folder / f".bench-{n}-{size}"
    if marker.exists():
        return folder
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    classes = ["alpha", "beta", "gamma", "delta"]
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cls = classes[i % 4]
        cx, cy, r = rng.integers(20, size - 20, 2).tolist() + [int(rng.integers(6, 16))]
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img = (rng.normal(120, 30, (size, size)) * (1 - 0.5 * disc)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / cls / f"img{i:05d}.png", compress_level=1)
        if i % 10 == 0:
            Image.fromarray((disc * 255).astype(np.uint8)).save(folder / cls / f"img{i:05d}_mask.png")
    marker.write_text("ok")
    return folder


class Probe:
    """UI-thread stall detector: a fast timer; gaps beyond its interval are stalls."""

    def __init__(self, interval_ms: int = 10):
        from PySide6 import QtCore

        self.interval = interval_ms / 1000.0
        self.timer = QtCore.QTimer()
        self.timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.last_cpu = None
        self.max_gap = 0.0
        self.phase_max: dict[str, float] = {}
        self.phase_busy: dict[str, float] = {}
        self.phase = "idle"

    def start(self) -> None:
        self.last = time.perf_counter()
        self.last_cpu = time.thread_time()
        self.timer.start()

    def set_phase(self, name: str) -> None:
        self.phase = name
        self.phase_max.setdefault(name, 0.0)

    @contextmanager
    def paused(self):
        """The benchmark's own set-up (writing a 2000-row prediction run, saving a test image) runs on the UI
        thread but is not the app's work: the probe stops across it and starts afresh after, so no phase is
        charged with it (it was ~240 ms of UI-thread CPU counted as the viewer's)."""
        self.timer.stop()
        try:
            yield
        finally:
            self.start()

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        gap = now - self.last - self.interval
        busy = cpu - self.last_cpu          # of the gap, what the UI thread itself computed (the rest: waiting
        self.last, self.last_cpu = now, cpu  # for the GIL or for a CPU other processes hold)
        if gap > self.max_gap:
            self.max_gap = gap
        if gap > self.phase_max.get(self.phase, 0.0):
            self.phase_max[self.phase] = gap
        if busy > self.phase_busy.get(self.phase, 0.0):
            self.phase_busy[self.phase] = busy

    def block_ms(self) -> float:
        return round(max(0.0, self.max_gap) * 1000, 1)


class StallSampler:
    """Where the UI thread is while it stalls: a thread that, whenever the probe has not ticked for 40 ms,
    samples the UI thread's Python stack every 5 ms (``--stacks``). A stack ending in a Qt or SQLite call that
    releases the GIL with little busy time is a wait (the GIL, the disk); one in Python code is work."""

    def __init__(self, probe: Probe, depth: int = 6):
        import collections
        import threading

        self.probe, self.depth = probe, depth
        self.ui_thread = threading.get_ident()
        self.samples: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import traceback

        while not self._stop.wait(0.005):
            last = self.probe.last
            if last is None or not self.probe.timer.isActive() or time.perf_counter() - last < 0.04:
                continue
            frame = sys._current_frames().get(self.ui_thread)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)[-self.depth:]
            key = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))
            self.samples[self.probe.phase][key] += 1

    def top(self, n: int = 5) -> dict:
        """Per phase, the n most sampled stacks with their share of 5 ms samples."""
        return {ph: [{"samples": c, "stack": k} for k, c in cnt.most_common(n)] for ph, cnt in self.samples.items()}


def spin(ms: int) -> None:
    """Run the event loop for ``ms`` (QEventLoop.exec releases the GIL while idle; QTest.qWait does not,
    which would starve the worker threads and distort the measurement)."""
    from PySide6 import QtCore

    loop = QtCore.QEventLoop()
    QtCore.QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait(cond, timeout: float) -> bool:
    """Run the event loop until ``cond()`` is true (checked every 5 ms) or ``timeout`` seconds pass."""
    from PySide6 import QtCore

    if cond():
        return True
    loop = QtCore.QEventLoop()
    end = time.perf_counter() + timeout
    timer = QtCore.QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: (cond() or time.perf_counter() > end) and loop.quit())
    timer.start()
    loop.exec()
    timer.stop()
    return cond()


def run(folder: Path, out: dict, stacks: bool = False) -> None:
    from PySide6 import QtTest

    from desktop.app import create_app

    app = create_app()  # noqa: F841  (held: the QApplication lives as long as the run)
    from desktop.app import preload_engine

    preload_engine()            # as desktop.app.main() does behind its splash screen
    from desktop.main_window import MainWindow
    from desktop.settings import Settings

    data = Path(os.environ["MEDSSL_DATA_DIR"])
    win = MainWindow(Settings(data / "desktop.ini"))
    win.resize(1440, 900)
    win.prewarm()               # as desktop.app.main() does behind its splash screen
    win.show()
    QtTest.QTest.qWaitForWindowExposed(win)
    spin(300)

    first = {}
    orig_get = win.thumbs.get

    def get(path):
        pm = orig_get(path)
        if pm is not None and "t" not in first:
            first["t"] = time.perf_counter()
        return pm

    win.thumbs.get = get

    probe = Probe()
    probe.start()
    sampler = StallSampler(probe) if stacks else None
    if sampler:
        sampler.start()
    spin(100)
    probe.max_gap = 0.0

    # cold open
    probe.set_phase("open")
    t0 = time.perf_counter()
    win.open_path(folder)
    ok = wait(lambda: "t" in first, 30)
    out["first_thumbnails_s"] = round(first["t"] - t0, 3) if ok else None
    probe.set_phase("scan")
    wait(lambda: win.project.scan_complete, 600)
    out["scan_s"] = round(time.perf_counter() - t0, 2)
    out["n_images"] = len(win.project.items)
    spin(300)

    # scroll the grid top to bottom
    probe.set_phase("scroll")
    bar = win.library.grid.verticalScrollBar()
    steps = 60
    for k in range(steps + 1):
        bar.setValue(int(bar.maximum() * k / steps))
        spin(25)
    spin(200)

    # filters and search
    probe.set_phase("filter")
    for key in ("unlabeled", "class:beta", "all"):
        win.side.select_filter(key)
        spin(60)
    win.side.mask_combo.setCurrentIndex(win.side.mask_combo.findData("with"))
    spin(60)
    win.side.mask_combo.setCurrentIndex(win.side.mask_combo.findData("any"))
    win.library.search.setText("img0999")
    spin(300)
    win.library.search.setText("")
    spin(300)

    # open an image, label it, next
    probe.set_phase("viewer")
    win.open_item(win.library.model.rows[0])
    wait(lambda: win.viewer.loaded is not None, 20)
    win.label_key(1)
    win.navigate(+1)
    spin(300)

    measure_pages(win, probe, out)

    # a running job stopped by opening a folder (this one again), then the warm re-open it starts
    answer_yes_to_questions()
    start_tiny_job(win, folder, probe, out, "open_folder")
    probe.set_phase("stop_job_open_folder")
    first.clear()
    t0 = time.perf_counter()
    win.open_path(folder)
    out["stop_job_open_folder_s"] = round(time.perf_counter() - t0, 2)
    probe.set_phase("warm")           # store + thumbnail cache present
    ok = wait(lambda: "t" in first, 30)
    out["warm_first_thumbnails_s"] = round(first["t"] - t0, 3) if ok else None
    wait(lambda: win.project.scan_complete, 600)
    out["warm_scan_s"] = round(time.perf_counter() - t0, 2)
    spin(200)

    # a running job stopped by quitting
    start_tiny_job(win, folder, probe, out, "quit")
    probe.set_phase("stop_job_quit")
    t0 = time.perf_counter()
    win.close()
    out["stop_job_quit_s"] = round(time.perf_counter() - t0, 2)
    spin(300)
    probe.timer.stop()
    if sampler:
        sampler.stop()
        out["stall_stacks"] = sampler.top()
    out["max_ui_block_ms"] = probe.block_ms()          # over everything: cold open ... quit
    out["phase_block_ms"] = phases = {k: round(max(0.0, v) * 1000, 1) for k, v in probe.phase_max.items()}
    busy = {k: round(v * 1000, 1) for k, v in probe.phase_busy.items()}
    out["phase_busy_ms"] = busy
    out["page_busy_ms"] = {"open_project": max(busy.get("open", 0), busy.get("scan", 0)),
                           "reopen_project": busy.get("warm", 0),
                           **{k: busy.get(k, 0) for k in ("predictions", "confusion_roc", "runs_browser", "heatmap",
                                                          "stop_job_open_folder", "stop_job_quit")}}
    out["page_block_ms"] = {"open_project": max(phases["open"], phases["scan"]), "reopen_project": phases["warm"],
                            **{k: phases[k] for k in ("predictions", "confusion_roc", "runs_browser", "heatmap",
                                                      "stop_job_open_folder", "stop_job_quit")}}


def answer_yes_to_questions() -> None:
    """"A job is running: stop it?" is answered Yes, as a user who opens another folder or quits would."""
    from PySide6 import QtWidgets

    QtWidgets.QMessageBox.question = staticmethod(lambda *_a, **_k: QtWidgets.QMessageBox.StandardButton.Yes)


def start_tiny_job(win, folder: Path, probe, out: dict, name: str) -> None:
    """Queue a tiny MAE pretraining on 64 of the images and wait until it is training (its first progress)."""
    from core.models.backbones import TINY_CONVNEXT
    from core.pretrain.config import TrainConfig

    probe.set_phase(f"job_start_{name}")
    files = sorted(it.rel_path for it in win.project.items)[:64]
    cfg = TrainConfig(method="mae", data=str(folder), files=files, backbone="convnext_atto",
                      timm_kwargs={k: list(v) for k, v in TINY_CONVNEXT.items()}, image_size=64, epochs=500,
                      batch_size=8, device="cpu")
    rid = win.jobs.submit("pretrain", f"bench stop on {name}", cfg.to_dict())
    entry = win.jobs.entries[rid]
    t0 = time.perf_counter()
    wait(lambda: entry.state == "running" and entry.step > 0, 300)
    out[f"job_started_{name}_s"] = round(time.perf_counter() - t0, 1)
    out[f"job_running_{name}"] = entry.state == "running" and entry.step > 0


def add_prediction_run(store, n_members: int = 3) -> int:
    """A finished prediction run over every image (random probabilities), as a predict job leaves it."""
    import numpy as np

    images = [im.id for im in store.images()]
    classes = store.classes()
    rng = np.random.default_rng(0)
    mp = rng.dirichlet(np.ones(len(classes)), size=(n_members, len(images)))
    p = mp.mean(0)
    ent = -(p * np.log(p)).sum(1)
    rid = store.add_run("predict", "bench predictions", {}, state="finished")
    store.add_prediction_arrays(rid, images, classes, [f"m{k}" for k in range(n_members)], p, mp, ent,
                                np.zeros(len(images)))
    from core.project import runs

    for k in range(2):                      # two fine-tuning runs with curves for the runs browser
        run = runs.create_run(store, "finetune", f"bench fine-tune {k}", {"epochs": 20})
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run.run_dir) / "history.jsonl").write_text("".join(
            json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 0.5 + 0.015 * e + 0.01 * k,
                        "val_balanced_accuracy": 0.45 + 0.015 * e}) + "\n" for e in range(1, 21)))
        store.update_run(run.id, state="finished", metrics={"val_accuracy": 0.8})
    return rid


def measure_pages(win, probe, out: dict) -> None:
    """The pages the issue found slow, each its own phase: Predictions (first show), Confusion & ROC,
    the runs browser, and the entropy heatmap of a large (948×704) image."""
    import numpy as np
    from PIL import Image

    with probe.paused():
        add_prediction_run(win.project.store)
    spin(100)
    probe.set_phase("predictions")
    win.predictions.refresh()
    win.show_page("predictions")
    wait(lambda: win.predictions.model.rows and win.predictions.model.filled, 60)   # read in a worker, shown in batches
    spin(400)
    probe.set_phase("confusion_roc")
    win.predictions.tabs.setCurrentWidget(win.predictions.charts)
    spin(400)
    win.predictions.tabs.setCurrentIndex(0)         # back on the table (repainted): a click of its own
    spin(300)
    probe.set_phase("runs_browser")
    dlg = win.show_runs()
    spin(500)
    if dlg is not None:
        dlg.close()
    spin(100)
    big = Path(os.environ["MEDSSL_DATA_DIR"]) / "bench-large.png"     # not in the project folder
    with probe.paused():
        rng = np.random.default_rng(1)
        Image.fromarray((rng.random((704, 948)) * 255).astype(np.uint8)).save(big)
    probe.set_phase("heatmap")
    from desktop.bridge.rows import Item

    win.open_item(Item(str(big), big.name))
    wait(lambda: win.viewer.loaded is not None and win.viewer.loaded.item.path == str(big), 20)
    win.viewer.ov_heat.set_checked(True)
    wait(lambda: win.viewer.canvas.layer_visible("entropy"), 30)
    spin(300)
    win.viewer.ov_heat.set_checked(False)
    win.show_page("library")
    spin(200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--folder", type=Path, default=None,
                    help="reuse generated images there (made when absent; its .medssl is removed each run)")
    ap.add_argument("--stacks", action="store_true",
                    help="sample the UI thread's stack during stalls (adds a sampling thread; for finding causes)")
    args = ap.parse_args()
    import tempfile

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    # a private folder per run: two runs at once never share images, store or settings; removed at the end
    with tempfile.TemporaryDirectory(prefix="medssl-bench-gui-", ignore_cleanup_errors=True) as base:
        folder = args.folder or Path(base) / f"images-{args.images}"
        if folder.exists() and any(folder.iterdir()) and not (folder / f".bench-{args.images}-96").exists():
            sys.exit(f"{folder}: not a folder of generated benchmark images (no .bench-{args.images}-96 marker); "
                     "it is left alone")
        os.environ.setdefault("MEDSSL_DATA_DIR", str(Path(base) / "userdata"))
        t = time.perf_counter()
        make_folder(folder, args.images)
        shutil.rmtree(folder / ".medssl", ignore_errors=True)          # cold open every run
        out: dict = {"bench": "gui", "images_generated_s": round(time.perf_counter() - t, 1),
                     "qpa": os.environ.get("QT_QPA_PLATFORM", "xcb"), "cpus": os.cpu_count()}
        run(folder, out, stacks=args.stacks)
    out["load_avg"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    out["ok"] = bool(out.get("first_thumbnails_s") is not None and out["first_thumbnails_s"] < 1.0
                     and out["max_ui_block_ms"] <= 100)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
