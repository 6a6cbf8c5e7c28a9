#!/usr/bin/env bash
# Set up everything the project needs on a Debian 12 machine: apt packages, the virtual environment,
# torch (CPU build) when none is installed, and the project with its test extras.
# Idempotent: each step checks first and does nothing when its work is already done.
set -euo pipefail

cd "$(dirname "$0")/.."

# pixelmed-apps: PixelMed's DicomSRValidator (SR template checks); default-jre-headless runs it.
# postgresql: the server that the tests of the PostgreSQL job queue start on a free port (their own cluster).
APT_PACKAGES=(orthanc orthanc-python orthanc-dicomweb dcmtk python3-venv pixelmed-apps default-jre-headless postgresql)
PYTHON=/usr/bin/python3
VENV=.venv
TORCH_SPEC="torch==2.13.0"
EXTRAS="${LESION_AI_EXTRAS:-test}"

log() { printf '[setup] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $* (run as root, or install sudo)"
        exit 1
    fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$PYTHON" ]; then
    log "$PYTHON not found: the node needs Debian's python3 (the interpreter Orthanc's Python plugin embeds)"
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    log "installing $TORCH_SPEC (CPU build)"
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi

# Re-install the project only when its metadata changed since the last successful install.
stamp="$VENV/.lesion-ai-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing the project with extras [$EXTRAS]"
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
    touch "$stamp"
fi
log "ready: $("$VENV/bin/python" --version), $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
