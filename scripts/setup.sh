#!/usr/bin/env bash
# Set up everything the project needs on a Debian 12 machine: apt packages, the virtual environment,
# torch (CPU build) when none is installed, and the project with its test extras.
# Idempotent: each step checks first and does nothing when its work is already done.
set -euo pipefail

cd "$(dirname "$0")/.."

# pixelmed-apps: PixelMed's DicomSRValidator (SR template checks); default-jre-headless runs it.
# postgresql: the server that the tests of the PostgreSQL job queue start on a free port (their own cluster).
# orthanc-postgresql: Orthanc's PostgreSQL index, which the servers of a node cluster share (cluster mode).
# chromium, chromium-driver, fonts-dejavu-core: the headless browser of the viewer's test (OHIF in a real browser).
APT_PACKAGES=(orthanc orthanc-python orthanc-dicomweb dcmtk python3-venv pixelmed-apps default-jre-headless postgresql
    orthanc-postgresql chromium chromium-driver fonts-dejavu-core)
PYTHON=/usr/bin/python3
VENV=.venv
TORCH_SPEC="torch==2.13.0"
TAPS_SPEC="lavlab-taps==1.1.2"
# The PI-CAI nnU-Net reference pipeline's nnU-Net (test oracle only; see pyproject.toml's test extras).
NNUNET_SPEC="nnunet==1.7.0"
# The OHIF viewer the node serves at /lesion-ai/viewer/: the built app of this npm package, pinned by version
# and by the integrity of its tarball (the registry's dist.integrity). orthanc_plugin/admin/viewer.py names the
# same version.
OHIF_PACKAGE="@ohif/app"
OHIF_VERSION="3.13.2"
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
VIEWER_DIR="$VENV/share/lesion-ai-viewer/$OHIF_VERSION"
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
# The whole-gland model of the anatomical gate ships in the PyPI package lavlab-taps (MIT): only its ONNX
# file is used (its weights are read into our torch network), so the package is installed without its own
# dependencies (monai, nibabel and the onnxruntime-gpu build, which would share the folder of the
# onnxruntime CPU package that the tests use as the oracle).
if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('$TAPS_SPEC'.split('==')[0])" >/dev/null 2>&1; then
    log "installing $TAPS_SPEC (whole-gland model, without its dependencies)"
    "$VENV/bin/python" -m pip install -q --no-deps "$TAPS_SPEC"
fi
# nnU-Net v1, the oracle of the imported PI-CAI nnU-Net's tests (never imported by the node): without its
# dependencies, because it requires the withdrawn PyPI name `sklearn` (a package that refuses to install);
# the ones it uses (scikit-learn, batchgenerators, medpy, ...) come with the test extras.
case ",$EXTRAS," in
*,test,*)
    if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('nnunet')" >/dev/null 2>&1; then
        log "installing $NNUNET_SPEC (the PI-CAI nnU-Net reference of the tests, without its dependencies)"
        "$VENV/bin/python" -m pip install -q --no-deps "$NNUNET_SPEC"
    fi
    ;;
esac
# The viewer: `npm pack` fetches the package's tarball only (not its dependency tree: dist/ is the complete,
# built app); its integrity is checked, dist/ is extracted without what the node's viewer never loads
# (ort/: onnxruntime-web for in-browser AI tools, dicom-microscopy-viewer/: slide microscopy) and moved
# into place in one step, so that a present index.html means a complete install.
install_viewer() {
    if ! command -v npm >/dev/null 2>&1; then
        log "installing npm (Debian's npm and nodejs) to fetch the OHIF viewer"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
    fi
    local work="$1"
    log "fetching $OHIF_PACKAGE@$OHIF_VERSION from the npm registry"
    (cd "$work" && npm pack --silent "$OHIF_PACKAGE@$OHIF_VERSION" >/dev/null)
    local tarball="$work/ohif-app-$OHIF_VERSION.tgz"
    local got
    got="$("$PYTHON" -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")"
    if [ "$got" != "$OHIF_INTEGRITY" ]; then
        log "$OHIF_PACKAGE@$OHIF_VERSION: integrity $got, expected $OHIF_INTEGRITY; not installed"
        exit 1
    fi
    tar -xzf "$tarball" -C "$work" package/dist package/LICENSE
    rm -rf "$work/package/dist/ort" "$work/package/dist/dicom-microscopy-viewer"
    cp "$work/package/LICENSE" "$work/package/dist/LICENSE-OHIF"
    mkdir -p "$(dirname "$VIEWER_DIR")"
    rm -rf "$VIEWER_DIR.partial"
    mv "$work/package/dist" "$VIEWER_DIR.partial"
    rm -rf "$VIEWER_DIR"
    mv "$VIEWER_DIR.partial" "$VIEWER_DIR"
    log "OHIF viewer $OHIF_VERSION installed in $VIEWER_DIR"
}
if [ ! -f "$VIEWER_DIR/index.html" ]; then
    VIEWER_WORK="$(mktemp -d)"
    trap 'rm -rf "$VIEWER_WORK"' EXIT
    install_viewer "$VIEWER_WORK"
fi

log "ready: $("$VENV/bin/python" --version), $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
