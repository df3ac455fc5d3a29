#!/usr/bin/env bash
# Set up the environment if needed, make the built-in demo project (procedural phantoms) and open it
# in MedSSL Studio. Extra arguments go to medssl-studio.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
exec "$ROOT/.venv/bin/medssl-studio" --demo "$@"
