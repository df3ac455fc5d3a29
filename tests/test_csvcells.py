"""CSV formula injection: every CSV the engine and the window write has cells that cannot run as formulas,
and the engine reads its own files back unchanged."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from core import csvcells

FORMULAS = ["=cmd|' /C calc'!A0", "+1+2", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\t=1", "\r=1", "'=quoted"]


def formula_cells(path: Path) -> list[str]:
    """Text cells of a CSV file a spreadsheet would run as a formula."""
    with open(path, newline="", encoding="utf-8") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    return [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r")) and not _number(c)]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("value", FORMULAS + ["plain", "", "-0.25", "1e-3", "it's"])
def test_escape_round_trips_and_never_starts_a_formula(value):
    cell = csvcells.escape_cell(value)
    assert csvcells.unescape_cell(cell) == value
    assert not cell.startswith(("=", "+", "@", "\t", "\r")) and (not cell.startswith("-") or _number(cell))


def test_numbers_and_non_text_are_unchanged():
    buf = io.StringIO()
    csvcells.writer(buf, lineterminator="\n").writerow([-1.5, "-0.25", 3, None, True])
    assert buf.getvalue() == "-1.5,-0.25,3,,True\n"


def test_logits_csv_escapes_and_reads_back(tmp_path):
    from core.inference.logits import read_logits, write_logits
    from core.train.data import Sample

    samples = [Sample(tmp_path / "=evil.png", "=evil.png", "=cmd|' /C calc'!A0"),
               Sample(tmp_path / "a.png", "a.png", "@label")]
    path = tmp_path / "logits_val.csv"
    write_logits(path, samples, np.array([[-1.0, 2.0], [0.5, -0.25]]), ["=c", "d"])
    assert formula_cells(path) == []
    rel, labels, logits = read_logits(path)
    assert rel == ["=evil.png", "a.png"] and labels == ["=cmd|' /C calc'!A0", "@label"]
    np.testing.assert_allclose(logits, [[-1.0, 2.0], [0.5, -0.25]])


def test_per_image_csv_escapes(tmp_path):
    from core.inference.ensemble import write_per_image

    ens = np.array([[0.2, 0.8], [0.6, 0.4]])
    path = tmp_path / "per_image.csv"
    write_per_image(path, ["=x.png", "+y.png"], np.array([0, 1]), ["=HYPERLINK(1)", "-b"], ens,
                    np.stack([ens, ens]), ["=m1", "@m2"], None)
    assert formula_cells(path) == []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [csvcells.unescape_cell(r["path"]) for r in rows] == ["=x.png", "+y.png"]
