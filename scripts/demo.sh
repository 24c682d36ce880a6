#!/usr/bin/env bash
# The main job: audit the Fashion-MNIST CNN shipped in models/ on the first
# 1000 real test images with both backends, and show the report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out="$UPAT_ROOT/runs/demo"
mkdir -p "$out"
audit="$UPAT_ROOT/target/debug/upat-audit"
"$audit" inspect models/fmnist-cnn.onnx
for backend in ort tract; do
    echo
    "$audit" models/fmnist-cnn.onnx --data fashion-mnist --samples 1000 --suite smoke \
        --backend "$backend" --out "$out/$backend"
done
echo
echo "== $out/ort/summary.csv"
cat "$out/ort/summary.csv"
