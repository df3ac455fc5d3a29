"""The engine must run with Qt absent: import every core module with Qt made unimportable."""

import subprocess
import sys
from pathlib import Path

import core

BLOCKER = r"""
import importlib, importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'PySide6', 'PyQt5', 'PyQt6', 'PySide2', 'pyqtgraph', 'desktop'}:
            raise ImportError(f'{name} is blocked: core must not import Qt')
sys.meta_path.insert(0, Block())
import core
names = [m.name for m in pkgutil.walk_packages(core.__path__, 'core.')]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_core_module_imports_without_qt():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True,
                         cwd=Path(core.__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 5


def test_no_qt_import_statements_in_core():
    offenders = []
    for path in Path(core.__file__).parent.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(
                    q in stripped.split()[1] for q in ("PySide", "PyQt", "pyqtgraph", "desktop")):
                offenders.append(f"{path}: {stripped}")
    assert not offenders, offenders
