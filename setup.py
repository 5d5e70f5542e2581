"""Builds the optional C kernels for quantized matrix products (warmload/kernels/_cpu.c).

Everything else lives in pyproject.toml. The extension is compiled for the machine that installs
it (-march=native, as llama.cpp's GGML_NATIVE); if it cannot be built, warmload still runs on
weights dequantized at load (slower, more memory).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "warmload.kernels._cpu",
            ["warmload/kernels/_cpu.c"],
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
