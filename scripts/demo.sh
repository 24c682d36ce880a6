#!/usr/bin/env bash
# The main job: train a robust Fashion-MNIST classifier without labels and
# audit it.
#   1. UPAT pre-training (no labels) of a narrow ResNet-18 on a training subset
#   2. adversarial fine-tuning of a linear head on the frozen encoder
#   3. export to ONNX
#   4. upat-audit of the result, beside the plain and the adversarially trained
#      CNNs shipped in models/, on real test images with the fashion-mnist suite
# Sizes are small enough for a few minutes on 2 CPU cores; the environment
# can change them: SAMPLES, WIDTH, PRETRAIN_EPOCHS, FINETUNE_EPOCHS,
# AUDIT_SAMPLES. Everything lands in runs/demo (removed first).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out="$UPAT_ROOT/runs/demo"
train="$UPAT_ROOT/target/debug/upat-train"
audit="$UPAT_ROOT/target/debug/upat-audit"
common=(--data fashion-mnist --samples "${SAMPLES:-4256}" --width "${WIDTH:-8}"
        --batch-size 64 --holdout 256 --device auto --eps 0.1 --alpha 0.025)
rm -rf "$out"
mkdir -p "$out"
step() { echo; echo "== $*" >&2; }

step "1/4 UPAT pre-training without labels"
"$train" pretrain --method upat "${common[@]}" --epochs "${PRETRAIN_EPOCHS:-3}" --out "$out/upat"
step "2/4 adversarial fine-tuning of a linear head (PGD-10, l-inf 0.1)"
"$train" finetune --encoder "$out/upat" --mode at "${common[@]}" --epochs "${FINETUNE_EPOCHS:-2}" \
    --out "$out/upat-at"
step "3/4 export"
"$train" export "$out/upat-at" -o "$out/upat-at.onnx"
step "4/4 audit"
models=("$out/upat-at.onnx" models/fmnist-cnn.onnx)
[ -f models/fmnist-cnn-at.onnx ] && models+=(models/fmnist-cnn-at.onnx)
"$audit" "${models[@]}" --data fashion-mnist --samples "${AUDIT_SAMPLES:-500}" \
    --suite fashion-mnist --out "$out/audit"
echo
cat "$out/audit/report.md"
echo
echo "run directories, model and reports (robustness.svg too) in $out"
