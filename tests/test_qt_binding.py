"""Guard against a Qt binding that corrupts reference counts (PySide6 6.12.0 on Python < 3.12 dropped a
reference to None on every void call, aborting the app with 'none_dealloc' within seconds)."""

import sys

import pytest

QtWidgets = pytest.importorskip("PySide6.QtWidgets")


def test_void_qt_calls_keep_none_refcount(qapp):
    label = QtWidgets.QLabel()
    before = sys.getrefcount(None)
    for i in range(500):
        label.setText(str(i))
        label.resize(10 + i % 3, 10)
    assert sys.getrefcount(None) - before > -100, "this PySide6 build leaks references to None"
