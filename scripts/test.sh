#!/usr/bin/env bash
# Set up the environment if needed and run the test suite (slow tests excluded; `-m slow` runs them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
export QT_QPA_PLATFORM=offscreen
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
