"""Synthetic GGUF files with real model shapes and random weights, for load benchmarks at size.

    .venv/bin/python benchmarks/make_synthetic.py [OUT_DIR] [--models llama-3.2-1b,llama-3-8b]
                                                  [--types f16,q4_k_m]

Writes OUT_DIR/{model}-{type}.gguf (default OUT_DIR: /tmp/warmload-synthetic; never commit
them: the 8B F16 file is 16 GB). Shapes and metadata are those of the real Llama-3.2-1B and
Llama-3-8B GGUF files (config.json of meta-llama's repos; llama.cpp's tensor names). "q4_k_m"
follows llama.cpp's Q4_K_M mix (src/llama-quant.cpp llama_tensor_get_type): Q4_K everywhere,
Q6_K for output.weight and for attn_v / ffn_down in the "use_more_bits" layers, F32 norms.

Data is random but valid: F16 values are N(0, 0.02) (no inf/nan), quantized blocks are random
bytes whose fp16 scale fields (d, dmin) are overwritten with small positive halves, so every
dequantizer yields finite numbers. One random pool per type, as big as the largest tensor, is
sliced for every tensor: the file is written at disk speed (GGUFWriter on a background thread).
There is no tokenizer in these files: they are for `warmload bench --load`, which times the
weights only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmload.formats.ggml_types import GGML_TYPES
from warmload.formats.gguf_write import GGUFWriter, TensorSpec, atomic_output, encode_kv

DEFAULT_DIR = Path("/tmp/warmload-synthetic")


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    context: int
    tied: bool
    rope_freqs: bool  # llama 3.1+ rope scaling factors tensor


MODELS = {
    "llama-3.2-1b": Shape(128256, 2048, 8192, 16, 32, 8, 131072, True, True),
    "llama-3-8b": Shape(128256, 4096, 14336, 32, 32, 8, 8192, False, False),
}
FILE_TYPES = {"f16": 1, "q4_k_m": 15}  # general.file_type (llama_ftype)
# byte offsets of the fp16 scale fields in one block (ggml-common.h block_q4_K / block_q6_K)
SCALE_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q8_0": (0,)}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_specs(shape: Shape, file_type: str) -> list[TensorSpec]:
    """Every tensor of the model in llama.cpp's file order, with its GGML type."""
    q = file_type == "q4_k_m"
    big, more = ("Q4_K", "Q6_K") if q else ("F16", "F16")
    h, f, d = shape.hidden, shape.intermediate, shape.hidden // shape.heads
    # tied: the embedding is also the output, which llama.cpp gives more bits
    specs = [TensorSpec("token_embd.weight", (shape.vocab, h), more if shape.tied else big)]
    if shape.rope_freqs:
        specs.append(TensorSpec("rope_freqs.weight", (d // 2,), "F32"))
    for i in range(shape.layers):
        v_down = more if use_more_bits(i, shape.layers) else big
        p = f"blk.{i}."
        specs += [
            TensorSpec(p + "attn_norm.weight", (h,), "F32"),
            TensorSpec(p + "attn_q.weight", (h, h), big),
            TensorSpec(p + "attn_k.weight", (shape.kv_heads * d, h), big),
            TensorSpec(p + "attn_v.weight", (shape.kv_heads * d, h), v_down),
            TensorSpec(p + "attn_output.weight", (h, h), big),
            TensorSpec(p + "ffn_norm.weight", (h,), "F32"),
            TensorSpec(p + "ffn_gate.weight", (f, h), big),
            TensorSpec(p + "ffn_up.weight", (f, h), big),
            TensorSpec(p + "ffn_down.weight", (h, f), v_down),
        ]
    specs.append(TensorSpec("output_norm.weight", (h,), "F32"))
    if not shape.tied:
        specs.append(TensorSpec("output.weight", (shape.vocab, h), more if q else big))
    return specs


def metadata(name: str, shape: Shape, file_type: str) -> list:
    d = shape.hidden // shape.heads
    items = [
        ("general.architecture", "llama"),
        ("general.name", f"synthetic {name} {file_type}"),
        ("general.file_type", FILE_TYPES[file_type]),
        ("llama.block_count", shape.layers),
        ("llama.context_length", shape.context),
        ("llama.embedding_length", shape.hidden),
        ("llama.feed_forward_length", shape.intermediate),
        ("llama.attention.head_count", shape.heads),
        ("llama.attention.head_count_kv", shape.kv_heads),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5),
        ("llama.rope.freq_base", 500000.0),
        ("llama.rope.dimension_count", d),
        ("llama.vocab_size", shape.vocab),
    ]
    return [encode_kv(k, v) for k, v in items]


def random_pool(ggml_type: str, nbytes: int, rng: np.random.Generator) -> np.ndarray:
    """nbytes of valid random data of `ggml_type` (see the module docstring)."""
    if ggml_type == "F32":
        return (1.0 + 0.1 * rng.standard_normal(nbytes // 4, dtype=np.float32)).view(np.uint8)
    if ggml_type == "F16":
        values = rng.standard_normal(nbytes // 2, dtype=np.float32) * 0.02
        return values.astype(np.float16).view(np.uint8)
    block = GGML_TYPES[ggml_type].type_size
    pool = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
    blocks = pool.reshape(-1, block)
    for offset in SCALE_FIELDS[ggml_type]:
        scales = rng.uniform(1e-4, 1e-2, size=len(blocks)).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return pool


def write_synthetic(path: Path, name: str, file_type: str, seed: int = 0) -> int:
    """Write one synthetic GGUF file; returns its size in bytes."""
    shape = MODELS[name]
    specs = tensor_specs(shape, file_type)
    rng = np.random.default_rng(seed)
    pools = {}
    for t in {s.ggml_type for s in specs}:
        pools[t] = random_pool(t, max(s.nbytes for s in specs if s.ggml_type == t), rng)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        with GGUFWriter(f, metadata(name, shape, file_type), specs, background=True) as w:
            for spec in specs:
                w.write_tensor(spec.name, pools[spec.ggml_type][: spec.nbytes])
            w.finish()
    return path.stat().st_size


def planned_bytes(name: str, file_type: str) -> int:
    return sum(s.nbytes for s in tensor_specs(MODELS[name], file_type))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", default=str(DEFAULT_DIR))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--types", default=",".join(FILE_TYPES))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, t) for m in args.models.split(",") for t in args.types.split(",")]
    unknown = [m for m, t in jobs if m not in MODELS] + [t for m, t in jobs if t not in FILE_TYPES]
    if unknown:
        p.error(
            f"unknown model/type {unknown[0]!r}: models {list(MODELS)}, types {list(FILE_TYPES)}"
        )
    need = sum(planned_bytes(m, t) for m, t in jobs if not (out / f"{m}-{t}.gguf").exists())
    free = shutil.disk_usage(out).free
    if need > free - (2 << 30):
        p.error(f"{out}: needs {need / 1e9:.1f} GB, has {free / 1e9:.1f} GB free (keep 2 GB)")
    for name, file_type in jobs:
        path = out / f"{name}-{file_type}.gguf"
        if path.exists():
            print(f"{path}: exists, kept", file=sys.stderr)
            continue
        started = time.perf_counter()
        size = write_synthetic(path, name, file_type)
        seconds = time.perf_counter() - started
        print(f"{path}\t{size / 1e9:.2f} GB\t{seconds:.1f} s\t{size / seconds / 1e9:.2f} GB/s")
    os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
