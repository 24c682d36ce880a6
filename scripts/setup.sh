#!/usr/bin/env bash
# Installs what upat needs and builds it; quick when everything is already there.
#   - Fashion-MNIST from Debian (dataset-fashion-mnist)
#   - the project venv .venv with scripts/requirements.txt from PyPI
#   - cargo build --features train (upat-train, and upat-audit with ONNX Runtime)
# Sourced by scripts/demo.sh and scripts/test.sh; can also be run on its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$UPAT_ROOT"

say() { echo "setup: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; return 1; fi
}

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    say "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

stamp="$VIRTUAL_ENV/.upat-requirements"
if ! cmp -s scripts/requirements.txt "$stamp" 2>/dev/null; then
    if [ ! -x "$VIRTUAL_ENV/bin/python" ]; then
        say "creating the project venv in .venv"
        python3 -m venv "$VIRTUAL_ENV"
    fi
    say "installing scripts/requirements.txt into .venv (torch is large: a few minutes the first time)"
    "$VIRTUAL_ENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check -r scripts/requirements.txt
    cp scripts/requirements.txt "$stamp"
fi

say "building (cargo build --features train)"
cargo build --quiet --bins --features train
