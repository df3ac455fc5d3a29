#!/usr/bin/env bash
# Install what the desktop app needs to run headless under Xvfb (screenshots, GUI tests on a server).
# Debian/Ubuntu. Run as root (or with sudo). openbox: a window manager, so screenshots place, decorate and
# maximise windows as a desktop does (tests/desktop/gui_screenshots.py). Usage: scripts/xvfb-deps.sh
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    xvfb xauth libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 \
    libegl1 libgl1 fonts-dejavu-core openbox
echo "ok: xvfb-run is $(command -v xvfb-run)"
