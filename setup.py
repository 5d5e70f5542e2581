"""Builds the optional C kernels (warmload/kernels/*.c) once per instruction-set variant.

Everything else lives in pyproject.toml. No build targets the installing machine (no
-march=native, unlike llama.cpp's default GGML_NATIVE): the same sources are compiled side by
side as `warmload.kernels._cpu_<variant>`, each for a fixed ISA level (as ggml's
GGML_CPU_ALL_VARIANTS), and warmload/kernels/dispatch.py picks at import the best one the CPU
runs (cpuid on x86, getauxval / sysctl on ARM). A variant the compiler cannot build is dropped
with a message and the others are kept; with none, warmload still runs on weights dequantized
at load (slower, more memory). WARMLOAD_NATIVE=1 adds an opt-in `_cpu_native` (-march=native),
which dispatch takes only when forced (WARMLOAD_KERNELS=native): it may not run elsewhere.
"""

import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = Path("warmload/kernels")
COMMON = ["-O3", "-std=c11", "-Wall", "-Wno-unused-function", "-fvisibility=hidden"]
AVX2 = ["-mavx", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2"]
# variant -> compiler flags, per machine family; keep in step with dispatch.VARIANTS
X86_VARIANTS = {
    "generic": [],
    "avx2": AVX2,
    "avxvnni": [*AVX2, "-mavxvnni"],
    "avx512": [*AVX2, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"],
}
ARM_VARIANTS = {
    "generic": [],
    "neon": ["-march=armv8-a"],
    "dotprod": ["-march=armv8.2-a+dotprod+fp16"],
    "i8mm": ["-march=armv8.2-a+dotprod+fp16+i8mm"],
}


def variants() -> dict[str, list[str]]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        table = dict(X86_VARIANTS)
    elif machine in ("aarch64", "arm64"):
        table = dict(ARM_VARIANTS)
    else:
        table = {"generic": []}
    if os.environ.get("WARMLOAD_NATIVE") == "1":
        arm = machine in ("aarch64", "arm64")
        table["native"] = ["-mcpu=native" if arm else "-march=native"]
    return table


def kernel_extension(variant: str, flags: list[str]) -> Extension:
    module = f"_cpu_{variant}"
    return Extension(
        f"warmload.kernels.{module}",
        sorted(str(p) for p in KERNELS.glob("*.c")),  # top level only: subfolders are headers
        depends=sorted(str(p) for p in KERNELS.rglob("*.h")),
        define_macros=[
            ("WARMLOAD_MODULE", module),
            ("WARMLOAD_VARIANT", f'"{variant}"'),
            *([("WARMLOAD_GENERIC", "1")] if variant == "generic" else []),  # plain C on ARM too
        ],
        extra_compile_args=[*COMMON, *flags],
        extra_link_args=["-lpthread"],
        optional=True,
    )


class BuildVariants(build_ext):
    """build_ext with one object folder per extension (the variants share their sources), and
    a variant that fails to compile dropped with a message naming it (the others are kept)."""

    def build_extension(self, ext: Extension) -> None:
        base = self.build_temp
        self.build_temp = os.path.join(base, ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        except Exception as error:  # CompileError, LinkError, a missing compiler: drop it
            if not ext.optional:
                raise
            why = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            print(
                f"warmload: kernel variant {ext.name} was NOT built ({why}); the other"
                " variants are kept (see `warmload info`)",
                file=sys.stderr,
            )
        finally:
            self.build_temp = base


setup(
    ext_modules=[
        Extension(  # cpuid / getauxval / sysctl, built with no ISA flags: safe on any CPU
            "warmload.kernels._features",
            ["warmload/kernels/features/features.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall"],
            optional=True,
        ),
        *(kernel_extension(name, flags) for name, flags in variants().items()),
    ],
    cmdclass={"build_ext": BuildVariants},
)
