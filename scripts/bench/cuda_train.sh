#!/usr/bin/env bash
# upat-train on a CUDA GPU: the demo's training (UPAT pre-training, PGD
# fine-tuning of the head, export) with --device cuda and again with
# --device cpu on the same machine, then the UPAT-step benchmark
# (scripts/bench/upat_step.py) against PyTorch on the GPU.
#
#   scripts/bench/cuda_train.sh BIN_DIR DATA_DIR OUT_DIR
#
# BIN_DIR holds upat-train and the bench_upat_step example (built against
# the same libtorch as the python3 here, whose lib/ is put on
# LD_LIBRARY_PATH); DATA_DIR is a Fashion-MNIST directory (idx .gz files).
# Exported models, logs and the benchmark's output land in OUT_DIR.
# DEVICES (default "cuda cpu") and BENCH=0 (skips the benchmark) narrow it.
set -euo pipefail
bin=$1 data=$2 out=$3
mkdir -p "$out"
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$bin/upat-train" info

common=(--data "fashion-mnist:$data" --samples "${SAMPLES:-4256}" --width "${WIDTH:-8}"
        --batch-size 64 --holdout 256 --eps 0.1 --alpha 0.025)
for device in ${DEVICES:-cuda cpu}; do
    run="$out/$device"
    echo "== $device: UPAT pre-training, fine-tuning, export"
    start=$(date +%s.%N)
    "$bin/upat-train" pretrain --method upat "${common[@]}" --device "$device" --epochs 3 --out "$run/upat"
    mid=$(date +%s.%N)
    "$bin/upat-train" finetune --encoder "$run/upat" --mode at "${common[@]}" --device "$device" \
        --epochs 2 --out "$run/upat-at"
    end=$(date +%s.%N)
    "$bin/upat-train" export "$run/upat-at" -o "$out/upat-at-$device.onnx"
    python3 -c "print('$device: pretrain %.1f s, finetune %.1f s' % ($mid - $start, $end - $mid))" | tee -a "$out/times.txt"
done

[ "${BENCH:-1}" = 0 ] && exit 0
echo "== UPAT step: upat-train (tch) vs PyTorch on the GPU"
for shape in "16 128" "64 256"; do
    set -- $shape
    python3 scripts/bench/upat_step.py --device cuda --upat "$bin/bench_upat_step" \
        --width "$1" --batch "$2" --steps 5 --iterations 10 --rounds 3 | tee -a "$out/bench.txt"
done
