#!/usr/bin/env bash
# Set up mdm_ext in ./.venv on a fresh machine: a virtual environment, torch (only if none is
# installed there), the build tools, and the package built in place against that torch.
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh --test   # the package and the test extras
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0; with a CUDA build of torch
# and a CUDA toolkit the CUDA kernels are built too).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "mdm_ext needs Python >= 3.10" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
.venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
"${pip[@]}" "setuptools>=64" wheel pybind11 ninja numpy
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
# No build isolation: the extension must compile and link against the torch installed above.
MAX_JOBS=${MAX_JOBS:-2} "${pip[@]}" --no-build-isolation -e ".${extras}"
