#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Idempotent: a stamp of
# pyproject.toml skips the install when nothing changed. Sourced by run-demo.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDSSL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "MedSSL Studio needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.medssl-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "installing MedSSL Studio and its dependencies into $VENV (first time: several minutes)" >&2
    # torch + torchvision first, together, so pip picks a matching pair (timm needs torchvision).
    # MEDSSL_TORCH_INDEX may point at a CPU-only wheel index for a small download (see README).
    if [ -n "${MEDSSL_TORCH_INDEX:-}" ]; then
        "$VENV/bin/pip" install --quiet --index-url "$MEDSSL_TORCH_INDEX" torch torchvision
    else
        "$VENV/bin/pip" install --quiet torch torchvision
    fi
    "$VENV/bin/pip" install --quiet -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
