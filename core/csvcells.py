"""CSV cells a spreadsheet cannot run as formulas.

Every CSV the engine or the window writes (predictions, ``--per-image``, ``logits_*.csv``, errors, the window's
export) goes through :func:`writer`: a text cell that a spreadsheet would read as a formula (starting with
``= + - @``, a tab or a carriage return) gets a leading apostrophe, and so does a text cell that already starts
with one, so that :func:`unescape_cell` restores every value exactly when the engine reads its own files back.
Numbers (also negative ones written as text, e.g. ``-0.25``) are left as they are.
"""
from __future__ import annotations

import csv
from typing import Any, Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value: Any) -> Any:
    """``value`` as a cell that cannot run as a formula (non-text values unchanged)."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(ESCAPE) or (value.startswith(FORMULA_STARTS) and not _is_number(value)):
        return ESCAPE + value
    return value


def unescape_cell(text: str) -> str:
    """The value :func:`escape_cell` escaped (for reading the engine's own CSV files back)."""
    return text[1:] if text.startswith(ESCAPE) else text


class _FormulaSafeWriter:
    def __init__(self, fh, **kwargs):
        self._writer = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[Any]):
        return self._writer.writerow([escape_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(fh, **kwargs) -> _FormulaSafeWriter:
    """``csv.writer(fh, **kwargs)`` whose text cells cannot run as formulas."""
    return _FormulaSafeWriter(fh, **kwargs)
