"""Builds the optional C kernels for quantized matrix products (warmload/kernels/*.c).

Everything else lives in pyproject.toml. The extension is compiled for the machine that installs
it (-march=native, as llama.cpp's GGML_NATIVE); if it cannot be built, warmload still runs on
weights dequantized at load (slower, more memory).
"""

from pathlib import Path

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "warmload.kernels._cpu",
            sorted(str(p) for p in Path("warmload/kernels").glob("*.c")),
            depends=["warmload/kernels/kernels.h", "warmload/kernels/blocks.h"],
            extra_compile_args=[
                "-O3",
                "-march=native",
                "-std=c11",
                "-Wall",
                "-Wno-unused-function",
            ],
            extra_link_args=["-lpthread"],
            optional=True,
        )
    ]
)
