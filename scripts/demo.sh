#!/usr/bin/env bash
# The main job: audit the Fashion-MNIST models shipped in models/ (a plain CNN
# and the same CNN adversarially trained) on the first 1000 real test images
# with the fashion-mnist suite, and show the comparative report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out="$UPAT_ROOT/runs/demo"
audit="$UPAT_ROOT/target/debug/upat-audit"
models=(models/fmnist-cnn.onnx)
[ -f models/fmnist-cnn-at.onnx ] && models+=(models/fmnist-cnn-at.onnx)
"$audit" inspect models/fmnist-cnn.onnx
echo
"$audit" "${models[@]}" --data fashion-mnist --samples 1000 --suite fashion-mnist --out "$out"
echo
cat "$out/report.md"
echo
echo "reports and robustness.svg in $out"
