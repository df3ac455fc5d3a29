"""bench/gpu_check.py: on a machine without CUDA it says so in one JSON line and exits 0; ``--device cpu``
runs its checks on the CPU (slow: a smoke test of the script itself, which no CPU CI could run otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def test_without_cuda_one_json_line_and_exit_0():
    proc = _run(timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["cuda"] is False and "no CUDA device" in line["reason"]


@pytest.mark.slow
def test_the_checks_run_on_the_cpu(tmp_path):
    proc = _run("--device", "cpu", "--work", str(tmp_path), timeout=1800)
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, json.dumps(line["checks"], indent=1)
    checks = line["checks"]
    assert {f"pretrain_{m}" for m in ("mae", "simclr", "micle", "fgssl", "multimodal")} <= set(checks)
    assert checks["finetune_fp16"]["ok"] is None and "needs CUDA" in checks["finetune_fp16"]["skipped"]
    for name in ("pretrain_mae", "ensemble", "predict_channels_last"):
        assert checks[name]["ok"] is True and checks[name]["images_per_s"] > 0, name
