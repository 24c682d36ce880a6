#!/usr/bin/env bash
# Benchmark: one audit as one process with --threads T, against the same
# audit as T shards with --threads 1 each, submitted as a job array to a
# local single-node Slurm cluster (scripts/slurm-local.sh), merged by a
# dependent job. Prints the wall times (and one process with --threads 1,
# for scale), their ratio, the merge's own cost,
# and whether the merged report equals the single process's (seconds aside).
#
#   scripts/bench/slurm_shards.sh [SAMPLES] [SUITE] [MODEL] [BACKEND]
#
# Defaults: 200 images, fashion-mnist-aa (AutoAttack, l-inf 0.1), the
# adversarially trained CNN, ort; T = the machine's cores. Needs root (the
# cluster's daemons) and Fashion-MNIST.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
cd "$UPAT_ROOT"
slurm_local="$UPAT_ROOT/scripts/slurm-local.sh"
samples=${1:-200}
suite=${2:-fashion-mnist-aa}
model=$(realpath "${3:-models/fmnist-cnn-at.onnx}")
backend=${4:-ort}
threads=$(nproc)
audit=$(realpath target/debug/upat-audit)
[ -x "$audit" ] || { echo "build first: cargo build" >&2; exit 1; }

work=$(mktemp -d)
cluster="$work/cluster"
trap 'bash "$slurm_local" stop "$cluster"; rm -rf "$work"' EXIT
bash "$slurm_local" start "$cluster" >/dev/null
export SLURM_CONF="$cluster/slurm.conf"
cd "$work"

common=("$model" --data fashion-mnist --samples "$samples" --suite "$suite"
    --backend "$backend" --seed 0)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { print b - a }'; }

start=$(now)
"$audit" "${common[@]}" --threads 1 --out serial >/dev/null 2>&1
serial=$(since "$start")
start=$(now)
"$audit" "${common[@]}" --threads "$threads" --out whole >/dev/null 2>&1
single=$(since "$start")

{
    echo '#!/bin/bash'
    printf 'exec'
    printf ' %q' "$audit" "${common[@]}" --threads 1 --shard auto
    echo ' --out "shard-$SLURM_ARRAY_TASK_ID" 2>/dev/null'
} >shard.sbatch
shard_dirs=$(seq -f 'shard-%g' 0 $((threads - 1)) | tr '\n' ' ')
start=$(now)
array=$(sbatch --parsable --array=0-$((threads - 1)) --cpus-per-task=1 \
    --output=task-%a.out shard.sbatch)
merge=$(sbatch --parsable --wait --dependency=afterok:"$array" --kill-on-invalid-dep=yes \
    --output=merge.out --wrap "exec $audit merge $shard_dirs --out merged")
sharded=$(since "$start")
state=$(scontrol show job "$merge" | grep -o 'JobState=[A-Z]*')
[ "$state" = JobState=COMPLETED ] || { cat task-*.out merge.out >&2; echo "merge job: $state" >&2; exit 1; }

start=$(now)
# shellcheck disable=SC2086
"$audit" merge $shard_dirs --out merged-again >/dev/null 2>&1
merge_cost=$(since "$start")

same=$(python3 - <<'EOF'
import csv
def rows(path):
    out = []
    for row in csv.DictReader(open(path)):
        row.pop("seconds")
        out.append(row)
    return out
print("yes" if rows("whole/report.csv") == rows("merged/report.csv") else "NO")
EOF
)
printf 'audit: %s, %s images, %s, backend %s, %s cores\n' \
    "$(basename "$model")" "$samples" "$suite" "$backend" "$threads"
printf 'one process, --threads 1:              %6.1f s\n' "$serial"
printf 'one process, --threads %s:              %6.1f s\n' "$threads" "$single"
printf '%s Slurm shards, --threads 1, + merge:   %6.1f s\n' "$threads" "$sharded"
printf 'sharded / one process (--threads %s):   %6.2f\n' "$threads" \
    "$(awk -v a="$sharded" -v b="$single" 'BEGIN { print a / b }')"
printf 'merge alone:                           %6.2f s\n' "$merge_cost"
printf 'merged report equals the single one: %s\n' "$same"
