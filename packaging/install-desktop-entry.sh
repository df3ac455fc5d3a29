#!/usr/bin/env bash
# Put MedSSL Studio in the desktop menu (Linux, per user): menu entry, icon (SVG + PNG sizes) and the
# MIME type of project files, so that double-clicking a project.db opens it in MedSSL Studio.
#
#   bash packaging/install-desktop-entry.sh                  # this checkout's .venv/bin/medssl-studio
#   bash packaging/install-desktop-entry.sh --exec /opt/medssl-studio/medssl-studio   # an unpacked bundle
#   bash packaging/install-desktop-entry.sh --uninstall
#
# Honours XDG_DATA_HOME (default ~/.local/share). Refreshes the desktop, MIME and icon caches when their
# tools are installed (update-desktop-database, update-mime-database, gtk-update-icon-cache).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
APPS="$DATA/applications"
ICONS="$DATA/icons/hicolor"
MIME="$DATA/mime"
MODE=install
EXEC=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --uninstall) MODE=uninstall ;;
        --exec) EXEC="$2"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
# resources/ beside packaging/ in a checkout; in the bundle, PyInstaller keeps it under _internal/
RES="$ROOT/resources"
[ -d "$RES" ] || RES="$ROOT/_internal/resources"
if [ -z "$EXEC" ]; then
    if [ -x "$ROOT/medssl-studio" ]; then EXEC="$ROOT/medssl-studio"; else EXEC="$ROOT/.venv/bin/medssl-studio"; fi
fi

refresh() {
    if command -v update-desktop-database >/dev/null; then update-desktop-database -q "$APPS" || true; fi
    if command -v update-mime-database >/dev/null; then update-mime-database "$MIME" >/dev/null || true; fi
    if command -v gtk-update-icon-cache >/dev/null; then gtk-update-icon-cache -q -t "$ICONS" 2>/dev/null || true; fi
}

if [ "$MODE" = uninstall ]; then
    rm -f "$APPS/medssl-studio.desktop" "$MIME/packages/medssl-studio.xml" "$ICONS/scalable/apps/medssl-studio.svg"
    rm -f "$ICONS"/*/apps/medssl-studio.png
    refresh
    echo "removed MedSSL Studio's menu entry, icons and MIME type from $DATA"
    exit 0
fi

if [ ! -x "$EXEC" ]; then
    echo "medssl-studio not found at $EXEC: set up the app first (bash scripts/run-demo.sh) or pass --exec PATH" >&2
    exit 1
fi
mkdir -p "$APPS" "$ICONS/scalable/apps" "$MIME/packages"
cp "$RES/icons/app.svg" "$ICONS/scalable/apps/medssl-studio.svg"
for png in "$RES"/icons/hicolor/*/apps/medssl-studio.png; do
    size="$(basename "$(dirname "$(dirname "$png")")")"
    mkdir -p "$ICONS/$size/apps"
    cp "$png" "$ICONS/$size/apps/medssl-studio.png"
done
cp "$HERE/medssl-studio-mime.xml" "$MIME/packages/medssl-studio.xml"
sed -e "s#^Exec=medssl-studio#Exec=\"$EXEC\"#" -e "s#^TryExec=medssl-studio#TryExec=$EXEC#" \
    "$HERE/medssl-studio.desktop" > "$APPS/medssl-studio.desktop"
refresh
echo "installed $APPS/medssl-studio.desktop (runs $EXEC), icons and the project MIME type"
