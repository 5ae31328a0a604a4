"""Builds the mdm_ext._C extension against the torch already installed.

Environment switches:
  MDM_EXT_CUDA=1 / MDM_EXT_CUDA=0   force the CUDA kernels on / off (default: on when torch has
                                    CUDA and a CUDA toolkit is found)
  MAX_JOBS=N                        parallel compile jobs (ninja)
  TORCH_CUDA_ARCH_LIST="9.0"        GPU architectures to build for
  DEBUG=1                           -O0 -g
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def build_cuda() -> bool:
    switch = os.environ.get("MDM_EXT_CUDA", "auto")
    if switch not in ("auto", "0", "1"):
        raise ValueError(f"MDM_EXT_CUDA must be 0, 1 or unset, got {switch!r}")
    if switch != "auto":
        return switch == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    debug = os.environ.get("DEBUG") == "1"
    optimise = ["-O0", "-g"] if debug else ["-O3"]
    # No fused multiply-add contraction: the sampling kernels' arithmetic must round the same
    # way on CPU and CUDA (csrc/det_math.h).
    # -fno-trapping-math lets the compiler turn the kernels' selects into vector blends, so
    # their loops vectorise; nothing here reads floating-point exception flags, and no value
    # changes (rounding stays IEEE, no reassociation).
    # at::parallel_for is OpenMP inside torch's headers: without -fopenmp it runs on one thread.
    cxx_flags = optimise + ["-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
    link_flags = ["-fopenmp"]
    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    if not build_cuda():
        return CppExtension(
            "mdm_ext._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
        )
    macros = [("MDM_EXT_WITH_CUDA", None), ("MDM_EXT_CUDA_VERSION", f'"{torch.version.cuda}"')]
    return CUDAExtension(
        "mdm_ext._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": optimise + ["-lineinfo", "--expt-relaxed-constexpr"]},
        extra_link_args=link_flags,
    )


setup(
    packages=find_packages(include=["mdm_ext", "mdm_ext.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
