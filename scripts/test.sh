#!/usr/bin/env bash
# Set up the environment if needed and run the test suite (slow tests excluded; `-m slow` runs them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
export QT_QPA_PLATFORM=offscreen
# OpenMP threads that sleep instead of spinning while they wait: on a shared 2-core machine spinning threads
# fight the other processes (a scan child, a second test process, a neighbour's job) and the tiny models'
# tests ran 1.55x slower (tests/train/test_runtime.py beside a training process: 56 s vs 36 s)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
