#!/usr/bin/env bash
# Mutation fuzzing of the ONNX decoder + classifier contract + gradient graph,
# the .npz / IDX / CIFAR loaders and the suite parser, for as long as asked:
#   scripts/fuzz.sh [SECONDS] [upat-fuzz options, e.g. --seed 7 onnx npz]
# under an 8 GB address-space limit. A panic is a finding: its input lands in
# fuzz-findings/ and the script exits 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
seconds="${1:-600}"
shift || true
cargo build --features fuzz --bin upat-fuzz
ulimit -v 8000000
exec target/debug/upat-fuzz --seconds "$seconds" --findings fuzz-findings "$@"
