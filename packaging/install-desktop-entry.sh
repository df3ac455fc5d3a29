#!/usr/bin/env bash
# Put MedSSL Studio in the desktop menu (Linux, per user): a .desktop file that runs this checkout's venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
ICONS="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/scalable/apps"
mkdir -p "$APPS" "$ICONS"
cp "$ROOT/resources/icons/app.svg" "$ICONS/medssl-studio.svg"
sed "s#^Exec=medssl-studio#Exec=$ROOT/.venv/bin/medssl-studio#" "$ROOT/packaging/medssl-studio.desktop" \
    > "$APPS/medssl-studio.desktop"
echo "installed $APPS/medssl-studio.desktop"
