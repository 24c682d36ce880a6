#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints,
# then runs every test, with the default features (train + ort) and as the
# audit-only build (no libtorch).
set -euo pipefail
# A test run rebuilds the crate a few times (two feature sets, tests,
# examples); incremental caches would only fill the disk. Set
# CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Golden gradients of torchvision models (too large for git), remade when
# their generator changes.
goldens="$UPAT_ROOT/target/goldens"
if ! cmp -s scripts/goldens/torchvision_models.py "$goldens/.generator" 2>/dev/null; then
    echo "== generating torchvision goldens into target/goldens" >&2
    "$VIRTUAL_ENV/bin/python" scripts/goldens/torchvision_models.py "$goldens" 2>/dev/null
    cp scripts/goldens/torchvision_models.py "$goldens/.generator"
fi
# Image collections and torchvision's tensors for them (tests/integration/images.rs).
images="$goldens/images"
if ! cmp -s scripts/goldens/images.py "$images/.generator" 2>/dev/null; then
    echo "== generating image goldens into target/goldens/images" >&2
    rm -rf "$images"
    "$VIRTUAL_ENV/bin/python" scripts/goldens/images.py "$images" >/dev/null
    cp scripts/goldens/images.py "$images/.generator"
fi
# The timm zoo (tests/integration/zoo.rs): ~70 exports of timm architectures
# with float64 reference gradients, remade when their generators change.
zoo="$goldens/timm"
if ! cat scripts/goldens/timm_zoo.py scripts/goldens/onnx_in_torch.py scripts/requirements.txt \
        | cmp -s - "$zoo/.generator" 2>/dev/null; then
    echo "== generating the timm zoo into target/goldens/timm (a few minutes)" >&2
    mkdir -p "$zoo"
    "$VIRTUAL_ENV/bin/python" scripts/goldens/timm_zoo.py --out "$zoo" >"$goldens/timm_zoo.log" 2>&1 \
        || { tail -20 "$goldens/timm_zoo.log" >&2; exit 1; }
    cat scripts/goldens/timm_zoo.py scripts/goldens/onnx_in_torch.py scripts/requirements.txt >"$zoo/.generator"
fi
# Tests that need Fashion-MNIST or the goldens fail here rather than skip.
export UPAT_REQUIRE_FASHION_MNIST=1 UPAT_REQUIRE_GOLDENS=1
# The sharded-audit test submits to a real single-node Slurm cluster (Debian's
# packages, started and stopped by the test); it is required wherever Slurm
# could be installed, and skipped with a note elsewhere (not root, no apt).
if bash scripts/slurm-local.sh install; then
    export UPAT_REQUIRE_SLURM=1
fi
echo "== cargo fmt --check; cargo clippy -D warnings (both feature sets)" >&2
cargo fmt --check
# `fuzz` adds the fuzz harness binary, which a test runs.
cargo clippy --quiet --all-targets --features train,fuzz -- -D warnings
cargo clippy --quiet --all-targets --features fuzz -- -D warnings
echo "== cargo test --features train,fuzz (train + ort)" >&2
cargo test --features train,fuzz
echo "== cargo test --features fuzz (the default: upat-audit without libtorch)" >&2
cargo test --features fuzz
