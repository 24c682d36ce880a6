#!/usr/bin/env bash
# The main job: train a robust Fashion-MNIST classifier without labels and
# audit it.
#   1. UPAT pre-training (no labels) of a narrow ResNet-18 on a training subset
#   2. adversarial fine-tuning of a linear head on the frozen encoder
#   3. export to ONNX
#   4. upat-audit of the result, beside the plain and the adversarially trained
#      CNNs shipped in models/, on real test images with the fashion-mnist suite
#   5. AutoAttack (standard, l-inf 0.1) on the UPAT model, on fewer images
# Sizes are small enough for a few minutes on 2 CPU cores; the environment
# can change them: SAMPLES, WIDTH, PRETRAIN_EPOCHS, FINETUNE_EPOCHS,
# AUDIT_SAMPLES, AA_SAMPLES (0 skips step 5). Everything lands in runs/demo
# (removed first).
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

step "1/5 UPAT pre-training without labels"
"$train" pretrain --method upat "${common[@]}" --epochs "${PRETRAIN_EPOCHS:-3}" --out "$out/upat"
step "2/5 adversarial fine-tuning of a linear head (PGD-10, l-inf 0.1)"
"$train" finetune --encoder "$out/upat" --mode at "${common[@]}" --epochs "${FINETUNE_EPOCHS:-2}" \
    --out "$out/upat-at"
step "3/5 export"
"$train" export "$out/upat-at" -o "$out/upat-at.onnx"
step "4/5 audit"
models=("$out/upat-at.onnx" models/fmnist-cnn.onnx)
[ -f models/fmnist-cnn-at.onnx ] && models+=(models/fmnist-cnn-at.onnx)
"$audit" "${models[@]}" --data fashion-mnist --samples "${AUDIT_SAMPLES:-500}" \
    --suite fashion-mnist --out "$out/audit"
echo
cat "$out/audit/report.md"
aa_samples="${AA_SAMPLES:-100}"
if [ "$aa_samples" -gt 0 ]; then
    step "5/5 AutoAttack standard (l-inf 0.1) on the UPAT model: first $aa_samples test images only, to keep the demo short"
    cat > "$out/aa.toml" <<'TOML'
name = "demo-aa"
[[attack]]
id = "aa-linf-0.1"
kind = "autoattack"
version = "standard"
norm = "linf"
eps = 0.1
TOML
    "$audit" "$out/upat-at.onnx" --data fashion-mnist --samples "$aa_samples" \
        --suite "$out/aa.toml" --out "$out/autoattack"
    echo "AutoAttack on $aa_samples images (the audit above used ${AUDIT_SAMPLES:-500}); full runs: --suite fashion-mnist-aa"
fi
echo
echo "run directories, model and reports (robustness.svg too) in $out"
