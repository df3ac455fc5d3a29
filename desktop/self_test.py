"""``medssl-studio --self-test``: does this installation work end to end? Exit 0 or 1 with a short report.

Offscreen (no display needed) it makes a small demo project in a temporary folder, opens it in the real
main window, renders the library and the viewer with the entropy overlay, and classifies a few images
through the engine with a tiny untrained ensemble (the prediction path, not its accuracy, is tested).
The packaged app's smoke test and CI run it; a user can run it to tell a broken install from a bad image.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

STEP_TIMEOUT_S = 120.0


class SelfTestFailed(RuntimeError):
    pass


def _wait(app, condition: Callable[[], bool], what: str, timeout_s: float = STEP_TIMEOUT_S) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise SelfTestFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def _non_blank(image) -> bool:
    """Rendered pixels that are not all one colour."""
    small = image.scaled(64, 64)
    first = small.pixel(0, 0)
    return any(small.pixel(x, y) != first for x in range(0, 64, 4) for y in range(0, 64, 4))


def _check_library(app, win, folder: Path) -> str:
    if not win.open_path(folder):
        raise SelfTestFailed(f"the window refused to open {folder}")
    _wait(app, lambda: win.project.ready and win.project.scan_complete, "the demo project to be scanned")
    rows = win.library.model.rows
    if len(rows) < 3:
        raise SelfTestFailed(f"the library shows {len(rows)} images, expected the demo's 12")
    win.show_page("library")
    _wait(app, lambda: _non_blank(win.library.grab().toImage()), "library thumbnails to render")
    return f"library: {len(rows)} images, classes {', '.join(win.project.classes)}"


def _check_viewer(app, win) -> str:
    item = win.library.model.rows[0]
    win.open_item(item)
    viewer = win.viewer
    _wait(app, lambda: viewer.loaded is not None and viewer.loaded.item is item, "the viewer to load an image")
    viewer.ov_heat.set_checked(True)
    _wait(app, lambda: viewer.canvas.layer_visible("entropy"), "the entropy overlay")
    image = viewer.canvas.render_image()
    if image.isNull() or not _non_blank(image):
        raise SelfTestFailed("the viewer rendered a blank image")
    return f"viewer: {Path(item.path).name} with the entropy overlay, {image.width()}x{image.height()} px"


def _check_prediction(work: Path, folder: Path) -> str:
    """Two tiny random classifiers as an ensemble, run over a few demo images by batch prediction."""
    import torch

    from core.inference.ensemble import create_spec
    from core.inference.predict import list_images, predict_folder
    from core.train.config import FinetuneConfig
    from core.models.classifier import build_classifier, save_classifier_checkpoint

    classes = ["benign", "malignant", "normal"]
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="random", image_size=32)
        model, ccfg = build_classifier(cfg, classes, lambda msg: None)
        save_classifier_checkpoint(work / f"member{seed}" / "checkpoint-best", model, ccfg)
        members.append(work / f"member{seed}")
    spec = create_spec(work / "ensemble.json", members, names=["A", "B"])
    subset = work / "images"
    for rel in list_images(folder)[:4]:
        (subset / rel).parent.mkdir(parents=True, exist_ok=True)
        (subset / rel).write_bytes((folder / rel).read_bytes())
    out = work / "predictions.csv"
    summary = predict_folder(subset, out, ensemble=spec.path, num_workers=0)   # the default path (ONNX on a CPU)
    if summary["predicted"] != 4 or summary["errors"]:
        raise SelfTestFailed(f"prediction: {summary['predicted']} of 4 images predicted, {summary['errors']} errors")
    return f"prediction: 4 images through a 2-member ensemble ({summary['backend']}, {summary['precision']})"


def run_self_test(report: Callable[[str], None] = print) -> int:
    saved = {k: os.environ.get(k) for k in ("QT_QPA_PLATFORM", "MEDSSL_DATA_DIR")}
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        with tempfile.TemporaryDirectory(prefix="medssl-self-test-") as tmp:
            os.environ["MEDSSL_DATA_DIR"] = str(Path(tmp) / "userdata")   # never the user's own settings
            return _run_steps(Path(tmp), report)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_steps(work: Path, report: Callable[[str], None]) -> int:
    failures = 0
    app = win = None
    t0 = time.perf_counter()
    steps: list[tuple[str, Callable[[], str]]] = []

    def start() -> str:
        nonlocal app, win
        from desktop.app import create_app, preload_engine

        app = create_app()
        preload_engine()
        from desktop.main_window import MainWindow
        from desktop.settings import Settings

        win = MainWindow(Settings(work / "userdata" / "desktop.ini"))
        win.resize(1280, 720)
        win.show()
        return f"window: Qt platform {app.platformName()}"

    def demo() -> str:
        from core.data.demo import generate_demo

        generate_demo(work / "demo", n_cases=2, images_per_case=1, seed=1)
        return "demo data: 12 phantoms written"

    steps += [("start", start), ("demo", demo),
              ("library", lambda: _check_library(app, win, work / "demo")),
              ("viewer", lambda: _check_viewer(app, win)),
              ("prediction", lambda: _check_prediction(work, work / "demo"))]
    for name, step in steps:
        try:
            report(f"ok   {step()}")
        except Exception as exc:       # every failure is reported, the remaining steps still run
            failures += 1
            report(f"FAIL {name}: {type(exc).__name__}: {exc}")
            if os.environ.get("MEDSSL_SELF_TEST_TRACE"):
                report(traceback.format_exc())
            if name in ("start", "demo", "library"):
                break                   # the later steps need the window and the project
    if win is not None:
        win.close()
    report(f"{'passed' if not failures else 'FAILED'}: self-test in {time.perf_counter() - t0:.1f} s"
           f" (medssl-studio, Python {sys.version.split()[0]})")
    return 1 if failures else 0
