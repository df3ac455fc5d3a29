"""bench/predict_memory.py end to end on 300 images: its last line is one JSON object with the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_memory_bench_reports_each_phase_within_its_bound(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "predict_memory.py"), "--images", "300",
                           "--data", str(tmp_path / "images")], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == result["scan_images"] == result["stored_images"] == 300
    assert result["predicted"] == result["stored_predictions"] == 300
    assert result["scan_errors"] == result["predict_errors"] == 0
    for phase in ("scan", "predict"):
        assert 0 < result[f"{phase}_baseline_rss_mb"] <= result[f"{phase}_peak_rss_mb"] <= result["peak_rss_mb"]
        assert result[f"{phase}_growth_mb"] <= result["growth_bound_mb"]
        assert result[f"{phase}_seconds"] > 0
    assert result["within_bound"] is True
