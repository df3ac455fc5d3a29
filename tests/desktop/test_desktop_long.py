"""A long labelling session in the real window (pytest-qt, offscreen): 5000 images labelled by keyboard in
the viewer, memory flat, the event loop served throughout, every label in the store."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = [pytest.mark.gui, pytest.mark.slow]

from PySide6 import QtCore  # noqa: E402

N_IMAGES = 5000
RSS_GROWTH_BOUND_MB = 40.0   # labels 1000 -> 5000; measured growth is reported in the failure message
PER_LABEL_BOUND_S = 10.0     # key press -> next image on screen; only catches a hang or O(N) work per label


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def write_small_pngs(folder: Path, n: int) -> None:
    """``n`` distinct 24x24 grey PNGs: one in each class folder (so the project has two classes), the rest
    unlabelled in the root."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (n, 24, 24), dtype=np.uint8)
    for name in ("benign", "malignant"):
        (folder / name).mkdir(parents=True)
    for i, image in enumerate(pixels):
        where = folder / ("benign", "malignant")[i] if i < 2 else folder
        Image.fromarray(image, "L").save(where / f"img{i:05d}.png", compress_level=1)


def test_labelling_5000_images_by_keyboard_keeps_memory_flat_and_the_window_responsive(qtbot, main_window,
                                                                                        tmp_path):
    win = main_window
    folder = tmp_path / "many"
    write_small_pngs(folder, N_IMAGES)
    assert win.open_path(folder)
    qtbot.waitUntil(lambda: win.project.ready and win.project.scan_complete, timeout=600_000)
    rows = win.library.model.rows
    assert len(rows) == N_IMAGES and win.project.classes == ["benign", "malignant"]
    win.open_item(rows[0])
    viewer = win.viewer
    viewer.auto_advance.setChecked(True)          # the labelling workflow: a key labels and goes on
    classes = win.project.classes
    keys = {classes[0]: QtCore.Qt.Key.Key_1, classes[1]: QtCore.Qt.Key.Key_2}

    ticks = []
    timer = QtCore.QTimer()
    timer.setInterval(0)                          # runs whenever the event loop is free
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    ticks_per_thousand, per_label_s, rss_at = [], [], {}
    expected = {}
    for i in range(N_IMAGES):
        item = viewer.item
        assert item is rows[i]
        qtbot.waitUntil(lambda: viewer.loaded is not None and viewer.loaded.item is item, timeout=60_000)
        # alternate the classes; an image already labelled gets the other class (a label that does not
        # change the image does not advance)
        label = classes[i % 2] if item.label is None else classes[1 - classes.index(item.label)]
        expected[item.image_id] = label
        t0 = time.perf_counter()
        viewer.canvas.setFocus()
        qtbot.keyClick(viewer.canvas, keys[label])
        if i + 1 < N_IMAGES:                      # the last image stays (there is no next one)
            qtbot.waitUntil(lambda: viewer.item is rows[i + 1] and viewer.loaded is not None
                            and viewer.loaded.item is rows[i + 1], timeout=60_000)
        per_label_s.append(time.perf_counter() - t0)
        if (i + 1) % 1000 == 0:
            ticks_per_thousand.append(len(ticks))
            ticks.clear()
            gc.collect()
            rss_at[i + 1] = rss_mb()
    timer.stop()

    growth = rss_at[N_IMAGES] - rss_at[1000]
    early, late = np.median(per_label_s[:1000]), np.median(per_label_s[-1000:])
    report = (f"RSS {rss_at} MB (growth 1000 -> {N_IMAGES}: {growth:.1f} MB); median per label {early * 1e3:.0f} ms "
              f"(first 1000) vs {late * 1e3:.0f} ms (last 1000), max {max(per_label_s):.2f} s; "
              f"idle timer ticks per 1000 labels {ticks_per_thousand}")
    print(report)
    assert growth <= RSS_GROWTH_BOUND_MB, report
    assert max(per_label_s) <= PER_LABEL_BOUND_S, report
    assert all(t > 0 for t in ticks_per_thousand), report      # the event loop ran between labels
    assert win.project.store.labels() == expected                # every label reached the store
