#!/usr/bin/env bash
# Build MedSSL Studio as a double-click app for Linux: a PyInstaller one-folder bundle made from a clean
# virtual environment, smoke-tested outside any Python environment, packed as a .tar.gz a user unpacks.
#
#   bash packaging/build.sh                      # torch as pip resolves it (on these build machines: the CUDA build)
#   MEDSSL_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash packaging/build.sh   # CPU-only, much smaller
#
# Output: build/bundle/dist/medssl-studio/ (run ./medssl-studio) and build/bundle/medssl-studio-VERSION-linux-ARCH.tar.gz.
# Not part of CI (it takes minutes and gigabytes); CI runs `medssl-studio --self-test` from the venv instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MEDSSL_BUILD_DIR:-$ROOT/build/bundle}"
PYTHON="${PYTHON:-python3}"
VENV="$BUILD/venv"
START=$(date +%s)

echo "== clean virtual environment in $VENV" >&2
rm -rf "$VENV" "$BUILD/dist" "$BUILD/work"
mkdir -p "$BUILD"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet)
if [ -n "${MEDSSL_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" --index-url "$MEDSSL_TORCH_INDEX" torch torchvision
else
    "${PIP[@]}" torch torchvision
fi
"${PIP[@]}" "$ROOT" pyinstaller
VERSION="$("$VENV/bin/python" -c 'import core; print(core.__version__)')"

echo "== PyInstaller" >&2
(cd "$ROOT" && "$VENV/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$BUILD/dist" \
    --workpath "$BUILD/work" packaging/medssl-studio.spec)
APP="$BUILD/dist/medssl-studio"
mkdir -p "$APP/packaging"
cp "$ROOT/packaging/install-desktop-entry.sh" "$ROOT/packaging/medssl-studio.desktop" \
   "$ROOT/packaging/medssl-studio-mime.xml" "$APP/packaging/"

echo "== self-test of the bundle, with no Python on PATH and no site-packages" >&2
SCRATCH="$(mktemp -d)"
mkdir "$SCRATCH/bin"          # an empty PATH: no python, no tools
(cd "$SCRATCH" && env -i HOME="$SCRATCH" PATH="$SCRATCH/bin" LANG=C.UTF-8 "$APP/medssl-studio" --self-test)
rm -rf "$SCRATCH"

ARCHIVE="$BUILD/medssl-studio-$VERSION-linux-$(uname -m).tar.gz"
echo "== archive $ARCHIVE" >&2
tar -C "$BUILD/dist" -czf "$ARCHIVE" medssl-studio
echo "bundle: $(du -sh "$APP" | cut -f1) in $APP"
echo "archive: $(du -sh "$ARCHIVE" | cut -f1) ($ARCHIVE)"
echo "build time: $(( $(date +%s) - START )) s"
