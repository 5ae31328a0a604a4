#!/usr/bin/env bash
# Compile every CUDA source to an object file against torch's headers (no GPU and a CPU torch
# here, so nothing links): CUDA code that does not compile fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "nvcc not found: CUDA compile check skipped"; exit 0; }
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
py_include=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A CPU wheel lacks this generated header; a one-line stand-in is enough to compile. The flags
# mirror those torch.utils.cpp_extension passes to nvcc.
mkdir -p "$work/include/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$work/include/c10/cuda/impl/cuda_cmake_macros.h"
printf '%s\n' csrc/cuda/*.cu | xargs -P "${MAX_JOBS:-2}" -I{} sh -c '
  nvcc -std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ \
    -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    -c "$0" -o "$1/$(basename "$0").o" \
    -I"$1/include" -I"$2/include" -I"$2/include/torch/csrc/api/include" -I"$3" \
    -DTORCH_EXTENSION_NAME=_C -DMDM_EXT_WITH_CUDA && echo "compiled $0"' {} "$work" "$torch_dir" "$py_include"
