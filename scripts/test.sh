#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test, with the
# default features (train + ort) and as the audit-only build (no libtorch).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Tests that need Fashion-MNIST fail here rather than skip.
export UPAT_REQUIRE_FASHION_MNIST=1
echo "== cargo test (features: train, ort)" >&2
cargo test
echo "== cargo test --no-default-features --features ort (upat-audit without libtorch)" >&2
cargo test --no-default-features --features ort
