"""Builds functorch_lite and its C++ dispatcher extension against the installed torch."""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(
    os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "**", "*.cpp"), recursive=True)
)

setup(
    name="functorch_lite",
    version="0.1.0",
    description="Composable function transforms (vmap, grad, jvp, ...) for PyTorch",
    packages=find_packages(include=["functorch_lite", "functorch_lite.*"]),
    ext_modules=[
        CppExtension(
            "functorch_lite._C",
            sources,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args=[
                "-O2",
                "-std=c++17",
                "-fvisibility=hidden",
                "-fopenmp-simd",  # vectorizes the loops marked `omp simd`; no OpenMP runtime
                "-Wno-c++20-extensions",
            ],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    extras_require={"bench": ["matplotlib", "opacus"]},
)
