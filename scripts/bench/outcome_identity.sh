#!/usr/bin/env bash
# Same seed, same outcomes: runs one upat-audit binary on a suite holding
# every registered attack kind (and clean, transfer and the AutoAttack
# cascade) on both backends, resumed and sharded, into DIR. Run it with two
# binaries (before and after a change to the audit engine) and compare:
#
#   scripts/bench/outcome_identity.sh OLD_BIN old/   # e.g. a build of main
#   scripts/bench/outcome_identity.sh NEW_BIN new/
#   scripts/bench/outcome_identity.sh --compare old/ new/
#
# --compare diffs report.csv (timings removed) and samples.csv of every run.
# BACKENDS="ort" (say) runs one backend only; SAMPLES sets the sample count.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
cd "$UPAT_ROOT"

strip_seconds() { # report.csv without its `seconds` column
    python3 - "$1" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
i = rows[0].index("seconds")
for r in rows:
    print(",".join(v for j, v in enumerate(r) if j != i))
PY
}

if [ "${1:-}" = "--compare" ]; then
    a=$2 b=$3 status=0
    for run in $(cd "$a" && ls -d */ | tr -d /); do
        [ -d "$b/$run" ] || { echo "only in $a: $run"; continue; }
        for file in report.csv samples.csv; do
            [ -f "$a/$run/$file" ] || continue
            if [ "$file" = report.csv ]; then
                cmp -s <(strip_seconds "$a/$run/$file") <(strip_seconds "$b/$run/$file")
            else
                cmp -s "$a/$run/$file" "$b/$run/$file"
            fi && echo "same       $run/$file" || { echo "DIFFERENT  $run/$file"; status=1; }
        done
    done
    exit $status
fi

bin=$(realpath "$1") out=$2
mkdir -p "$out"
out=$(realpath "$out")
suite="$out/every-kind.toml"
cat >"$suite" <<'TOML'
name = "every-kind"
[[attack]]
id = "clean"
kind = "clean"
[[attack]]
id = "fgsm"
kind = "fgsm"
eps = 0.1
[[attack]]
id = "pgd-linf"
kind = "pgd"
norm = "linf"
eps = 0.1
steps = 10
step_size = 0.02
restarts = 2
[[attack]]
id = "pgd-l2"
kind = "pgd"
norm = "l2"
eps = 1.5
steps = 10
step_size = 0.3
[[attack]]
id = "noise"
kind = "noise"
eps = 0.1
[[attack]]
id = "apgd-ce"
kind = "apgd-ce"
eps = 0.1
steps = 20
[[attack]]
id = "apgd-t"
kind = "apgd-t"
eps = 0.1
steps = 10
[[attack]]
id = "fab-t"
kind = "fab-t"
eps = 0.1
steps = 10
[[attack]]
id = "square"
kind = "square"
eps = 0.1
queries = 100
[[attack]]
id = "aa"
kind = "autoattack"
version = "standard"
norm = "linf"
eps = 0.1
[[attack]]
id = "transfer"
kind = "transfer"
craft = "pgd"
eps = 0.1
steps = 5
step_size = 0.03
TOML
models="models/fmnist-cnn.onnx models/fmnist-cnn-at.onnx"
common=(--data fashion-mnist --samples "${SAMPLES:-60}" --suite "$suite" --seed 7
        --batch-size 16 --per-sample --source models/fmnist-cnn.onnx)
for backend in ${BACKENDS:-ort tract}; do
    echo "== $backend: whole" >&2
    "$bin" $models "${common[@]}" --backend "$backend" --out "$out/$backend-whole" >/dev/null
    echo "== $backend: resumed after losing half the journal" >&2
    rm -rf "$out/$backend-resumed"
    cp -r "$out/$backend-whole" "$out/$backend-resumed"
    ls "$out/$backend-resumed/journal/"*.json | awk 'NR % 2 == 0' | xargs rm
    sed -i 's/"complete": true/"complete": false/' "$out/$backend-resumed/audit.json"
    "$bin" $models "${common[@]}" --backend "$backend" --out "$out/$backend-resumed" --resume >/dev/null
    echo "== $backend: two shards, merged" >&2
    for k in 0 1; do
        "$bin" $models "${common[@]}" --backend "$backend" --shard "$k/2" \
            --out "$out/$backend-shard$k" >/dev/null
    done
    "$bin" merge "$out/$backend-shard0" "$out/$backend-shard1" --out "$out/$backend-merged" >/dev/null
done
