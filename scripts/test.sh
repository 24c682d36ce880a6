#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test, with the
# default features (train + ort) and as the audit-only build (no libtorch).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Golden gradients of torchvision models (too large for git), remade when
# their generator changes.
goldens="$UPAT_ROOT/target/goldens"
if ! cmp -s scripts/goldens/torchvision_models.py "$goldens/.generator" 2>/dev/null; then
    echo "== generating torchvision goldens into target/goldens" >&2
    "$VIRTUAL_ENV/bin/python" scripts/goldens/torchvision_models.py "$goldens" 2>/dev/null
    cp scripts/goldens/torchvision_models.py "$goldens/.generator"
fi
# Tests that need Fashion-MNIST or the goldens fail here rather than skip.
export UPAT_REQUIRE_FASHION_MNIST=1 UPAT_REQUIRE_GOLDENS=1
echo "== cargo test (features: train, ort)" >&2
cargo test
echo "== cargo test --no-default-features --features ort (upat-audit without libtorch)" >&2
cargo test --no-default-features --features ort
