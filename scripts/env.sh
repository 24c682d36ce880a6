# Sourced by the project's scripts: points cargo and the binaries at the
# project venv (.venv), whose torch provides libtorch and whose onnxruntime
# provides ONNX Runtime's library.
UPAT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$UPAT_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
