#!/usr/bin/env bash
# Builds the upat-audit wheel with maturin (from PyPI, in a throwaway venv),
# installs it with its [cpu] extra into a fresh venv and audits a fixture
# model from there, with nothing else on PATH: the check that a pip user's
# upat-audit finds its ONNX Runtime. Not part of the test command (a
# release build takes minutes).
#   scripts/wheel.sh [OUT_DIR]      (default target/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/wheels}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/build"
"$work/build/bin/pip" install --quiet "maturin>=1.5,<2"
"$work/build/bin/maturin" build --release --out "$out"
wheel="$(ls -t "$out"/upat_audit-*.whl | head -1)"
python3 -m venv "$work/user"
"$work/user/bin/pip" install --quiet "$wheel[cpu]"
env -i PATH=/usr/bin:/bin HOME="$work" "$work/user/bin/upat-audit" \
    tests/fixtures/tiny_cnn.onnx --data npz:tests/fixtures/tiny_cnn_golden.npz \
    --out "$work/report" 2>&1 | tee "$work/log"
grep -q "backend: ort ($work/user/lib/" "$work/log" \
    || { echo "wheel.sh: the installed upat-audit did not load its own ONNX Runtime" >&2; exit 1; }
echo "wheel.sh: $wheel installs and audits with its own ONNX Runtime"
