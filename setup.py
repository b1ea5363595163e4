"""Builds functorch_lite and its C++ dispatcher extension against the installed torch."""
import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

# The torch releases the extension is built and tested against (csrc/core/version.h guards
# their differences). Set FUNCTORCH_LITE_ALLOW_UNTESTED_TORCH=1 to build against another one.
TESTED_TORCH = ("2.13", "2.14")
torch_release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
if torch_release not in TESTED_TORCH and not os.environ.get("FUNCTORCH_LITE_ALLOW_UNTESTED_TORCH"):
    sys.exit(
        f"functorch_lite: torch {torch.__version__} is outside the tested range "
        f"({', '.join(v + '.x' for v in TESTED_TORCH)}). Install a tested torch, e.g. "
        f"`pip install torch==2.13.0`, or set FUNCTORCH_LITE_ALLOW_UNTESTED_TORCH=1 to build anyway."
    )

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
                "-std=c++20",  # torch 2.14's headers need C++20; 2.13's build with it too
                "-fvisibility=hidden",
                "-fopenmp-simd",  # vectorizes the loops marked `omp simd`; no OpenMP runtime
                "-Wno-c++20-extensions",
            ],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.13,<2.15"],
    extras_require={"bench": ["matplotlib", "opacus"]},
)
