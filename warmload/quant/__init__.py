"""Tensor math on torch (CPU or CUDA), no file I/O: GGML dequantization and quantized kernels."""
