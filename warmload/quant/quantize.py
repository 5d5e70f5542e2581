"""Float -> GGML blocks for the quantizer: one dispatch table, numpy kernels, all cores.

`quantize(x, "Q4_K")` turns a float array of shape (..., n) into the (..., n / block_size *
type_size) uint8 array that a GGUF file stores. The kernels reproduce llama.cpp's reference
quantizers (ggml/src/ggml-quants.c quantize_row_*_ref, what llama_model_quantize runs without an
importance matrix) bit for bit: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 here (gguf-py's gguf/quants.py
has the same numbers, a test compares), the K-quants in quantize_k.py, F16 and BF16 with
round-to-nearest-even (ggml_compute_fp32_to_bf16 for BF16). The K-quants run in C
(warmload/kernels/kquant.c, scale searches 8 groups at a time with AVX2) when the extension is
built, else in numpy (quantize_k.py); both give the same bytes. Work is split into chunks of
blocks that stay in cache and run on a thread pool: numpy and the C kernels release the GIL.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from warmload.errors import CheckpointError, UnsupportedError
from warmload.formats.ggml_types import GGML_TYPES
from warmload.quant.quantize_k import (
    quantize_q2_k,
    quantize_q3_k,
    quantize_q4_k,
    quantize_q5_k,
    quantize_q6_k,
)
from warmload.quant.quantize_search import F32, first_absmax, fp16_round

BlockQuantizer = Callable[[np.ndarray], np.ndarray]


def _inverse(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f`."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d))


def _blocks(nb: int, head: list[np.ndarray], *cols: np.ndarray) -> np.ndarray:
    """Assemble (nb, type_size) blocks from per-block header fields (nb, k) and column-major
    (k, nb) byte planes."""
    widths = [h.shape[1] for h in head] + [c.shape[0] for c in cols]
    out = np.empty((nb, sum(widths)), np.uint8)
    pos = 0
    for part in head:
        out[:, pos : pos + part.shape[1]] = part
        pos += part.shape[1]
    for part in cols:
        out[:, pos : pos + part.shape[0]] = part.T
        pos += part.shape[0]
    return out


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(nb,) float32 -> (nb, 2) bytes of its float16 rounding (GGML_FP32_TO_FP16)."""
    return fp16_round(v)[0].view(np.uint8).reshape(-1, 2)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(32, nb) quants -> (16, nb) bytes: element j in the low nibble of byte j, j + 16 in the
    high one."""
    return q[:16] | (q[16:] << 4)


def _qh(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 32 quants (all < 32) -> a little-endian uint32, as (4, nb) bytes."""
    bits = (q >> 4).reshape(4, 8, -1) << np.arange(8, dtype=np.uint8)[None, :, None]
    return np.bitwise_or.reduce(bits, axis=1)


# The block quantizers below take the blocks column-major: xt is (32, nb) float32, column i
# holding block i (see quantize()); reductions over a block are then vector operations.


def quantize_q4_0(xt: np.ndarray) -> np.ndarray:
    """Q4_0 (18 bytes): d = max / -8, q = min(15, (int8)(x / d + 8.5))."""
    d = first_absmax(xt)[1] / F32(-8)
    # x * id + 8.5 lies in [0.5, 16.5]: the uint8 cast truncates like the C (int8_t) cast
    q = np.minimum((xt * _inverse(d) + F32(8.5)).astype(np.uint8), np.uint8(15))
    return _blocks(xt.shape[1], [_f16_bytes(d)], _nibbles(q))


def quantize_q4_1(xt: np.ndarray) -> np.ndarray:
    """Q4_1 (20 bytes): d = (max - min) / 15, m = min, q = min(15, (int8)((x - m) / d + 0.5))."""
    mn, mx = xt.min(axis=0), xt.max(axis=0)
    d = (mx - mn) / F32(15)
    q = np.minimum(((xt - mn) * _inverse(d) + F32(0.5)).astype(np.uint8), np.uint8(15))
    return _blocks(xt.shape[1], [_f16_bytes(d), _f16_bytes(mn)], _nibbles(q))


def quantize_q5_0(xt: np.ndarray) -> np.ndarray:
    """Q5_0 (22 bytes): d = max / -16, q = min(31, (int8)(x / d + 16.5)), 5th bits in qh."""
    d = first_absmax(xt)[1] / F32(-16)
    q = np.minimum((xt * _inverse(d) + F32(16.5)).astype(np.uint8), np.uint8(31))
    return _blocks(xt.shape[1], [_f16_bytes(d)], _qh(q), _nibbles(q & np.uint8(15)))


def quantize_q5_1(xt: np.ndarray) -> np.ndarray:
    """Q5_1 (24 bytes): d = (max - min) / 31, m = min, q = (uint8)((x - m) / d + 0.5)."""
    mn, mx = xt.min(axis=0), xt.max(axis=0)
    d = (mx - mn) / F32(31)
    q = ((xt - mn) * _inverse(d) + F32(0.5)).astype(np.uint8)
    head = [_f16_bytes(d), _f16_bytes(mn)]
    return _blocks(xt.shape[1], head, _qh(q), _nibbles(q & np.uint8(15)))


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero): rint (half to even) except at exact halves, where
    v +- 0.5 is the answer (exact for |v| < 2**22). v - rint(v) is exact in float32."""
    r = np.rint(v)
    frac = v - r
    if frac.max() >= F32(0.5) or frac.min() <= F32(-0.5):
        tie = np.flatnonzero(np.abs(frac, out=frac) == F32(0.5))
        r.flat[tie] = v.flat[tie] + np.copysign(F32(0.5), v.flat[tie])
    return r


def quantize_q8_0(xt: np.ndarray) -> np.ndarray:
    """Q8_0 (34 bytes): d = amax / 127, q = roundf(x / d)."""
    amax = np.maximum(xt.max(axis=0), -xt.min(axis=0)) + F32(0)  # + 0: no -0.0 for all-zero
    d = amax / F32(127)
    q = _roundf(xt * _inverse(d)).astype(np.int8)
    return _blocks(xt.shape[1], [_f16_bytes(d)], q.view(np.uint8))


def quantize_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even, NaNs made quiet. In uint32: the
    rounding add only wraps for bit patterns above 0xFFFF7FFF, which are NaNs (replaced)."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    rounded = (u + ((u >> 16) & 1) + np.uint32(0x7FFF)) >> 16
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded = np.where(nan, (u >> 16) | np.uint32(64), rounded)
    return rounded.astype(np.uint16).view(np.uint8)


def quantize_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=F32).view(np.uint8)


QUANTIZERS: dict[str, BlockQuantizer] = {
    "F32": quantize_f32,
    "F16": quantize_f16,
    "BF16": quantize_bf16,
    "Q4_0": quantize_q4_0,
    "Q4_1": quantize_q4_1,
    "Q5_0": quantize_q5_0,
    "Q5_1": quantize_q5_1,
    "Q8_0": quantize_q8_0,
    "Q2_K": quantize_q2_k,
    "Q3_K": quantize_q3_k,
    "Q4_K": quantize_q4_k,
    "Q5_K": quantize_q5_k,
    "Q6_K": quantize_q6_k,
}
# The quantizers of these types take their input column-major: (group, n_groups) float32 whose
# column g is group g of `group` consecutive weights (the others take (n_blocks, block_size)).
# The float16 -> float32 conversion writes this layout at no extra cost, and per-group
# reductions become vector operations across groups instead of short loops along rows.
GROUP_SIZE: dict[str, int] = {
    "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
    "Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16,
}  # fmt: skip

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# Weights per chunk. The searches run many small vector ops per chunk, so chunks must be big
# enough to amortise numpy's per-call cost, yet their float32 temporaries should stay near L2
# (measured on the 2-core CI machine, CPU time: the scale searches are ~10% faster at 2**16
# than at 2**15 or 2**17; make_q3_quants' per-element passes want bigger chunks).
_CHUNK_WEIGHTS = {"Q3_K": 1 << 18, "Q2_K": 1 << 16, "Q4_K": 1 << 16, "Q5_K": 1 << 16,
                  "Q6_K": 1 << 16}  # fmt: skip
_DEFAULT_CHUNK_WEIGHTS = 1 << 17


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _as_float_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: numpy view without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float16, np.float64):
        raise UnsupportedError(f"quantize takes float16/32/64 input, not {a.dtype}")
    return a


def _plan(x: Any, ggml_type: str) -> tuple[BlockQuantizer, Any, np.ndarray, tuple[int, ...]]:
    fn = QUANTIZERS.get(ggml_type)
    if fn is None:
        raise UnsupportedError(
            f"cannot quantize to {ggml_type!r}; supported: {', '.join(QUANTIZERS)}"
        )
    t = GGML_TYPES[ggml_type]
    a = _as_float_array(x)
    shape = a.shape if a.ndim else (1,)
    if shape[-1] % t.block_size:
        raise UnsupportedError(
            f"cannot quantize rows of {shape[-1]} values to {ggml_type}: rows must be a multiple "
            f"of {t.block_size}"
        )
    return fn, t, a.reshape(-1, t.block_size), shape


@functools.cache
def _native_k_quantizer() -> Callable[[np.ndarray, str, np.ndarray], None] | None:
    """warmload.kernels.quantize_k (kernels/kquant.c) when the C extension is built, else None
    (the numpy kernels of quantize_k.py then run). Imported on first use: the kernels package
    imports torch, which the other types do not need."""
    from warmload import kernels

    return kernels.quantize_k if kernels.AVAILABLE else None


def submit_quantize(
    x: Any,
    ggml_type: str,
    executor: Executor,
    *,
    check_finite: bool = False,
    use_kernels: bool = True,
) -> Callable[[], np.ndarray]:
    """Start quantizing x (as quantize() does) on `executor`, chunk by chunk; return a function
    that waits for the chunks and returns the result (and re-raises a chunk's error). Several
    tensors can be in flight at once, so small tensors still keep every worker busy.
    use_kernels: the K-quants run in C when the extension is built (False: numpy, for tests)."""
    fn, t, blocks, shape = _plan(x, ggml_type)
    n, nblocks = shape[-1], blocks.shape[0]
    out = np.empty((nblocks, t.type_size), np.uint8)
    per_chunk = max(1, _CHUNK_WEIGHTS.get(ggml_type, _DEFAULT_CHUNK_WEIGHTS) // t.block_size)
    native = _native_k_quantizer() if use_kernels and ggml_type in K_TYPES else None
    group = None if native else GROUP_SIZE.get(ggml_type)

    def run(start: int) -> None:
        stop = min(start + per_chunk, nblocks)
        if group:
            chunk = blocks[start:stop].reshape(-1, group).T.astype(F32, order="C")
        elif native:  # a view where the source is float32 already (copied if misaligned)
            chunk = np.require(blocks[start:stop], F32, ["C_CONTIGUOUS", "ALIGNED"])
        else:
            chunk = np.ascontiguousarray(blocks[start:stop], dtype=F32)
        if check_finite and not (np.isfinite(chunk.max()) and np.isfinite(chunk.min())):
            first = start * t.block_size // n
            raise CheckpointError(
                f"NaN or infinite values in rows {first}..{(stop * t.block_size - 1) // n}"
            )
        if native:
            native(chunk, ggml_type, out[start:stop])
        else:
            out[start:stop] = fn(chunk)

    futures = [executor.submit(run, s) for s in range(0, nblocks, per_chunk)]

    def result() -> np.ndarray:
        for f in futures:
            f.result()
        return out.reshape(*shape[:-1], n // t.block_size * t.type_size)

    return result


class _Inline(Executor):
    """Runs each task at once in the caller's thread (one-thread quantization)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            f.set_exception(e)
        return f


def quantize(
    x: Any,
    ggml_type: str,
    *,
    threads: int | None = None,
    executor: Executor | None = None,
    check_finite: bool = False,
    use_kernels: bool = True,
) -> np.ndarray:
    """Quantize a float array (..., n) to GGML blocks: uint8 (..., n / block_size * type_size).

    n must be a multiple of the type's block size. Float16/64 input is converted chunk by chunk
    on the workers. threads: worker threads (None: all CPUs); executor: an existing pool to run
    the chunks on (then threads is ignored). check_finite: raise CheckpointError on NaN or inf.
    use_kernels: False runs the numpy K-quant kernels even where the C ones are built.
    """
    opts = {"check_finite": check_finite, "use_kernels": use_kernels}
    if executor is not None:
        return submit_quantize(x, ggml_type, executor, **opts)()
    n_threads = threads or default_threads()
    if n_threads <= 1:
        return submit_quantize(x, ggml_type, _Inline(), **opts)()
    with ThreadPoolExecutor(n_threads) as pool:
        return submit_quantize(x, ggml_type, pool, **opts)()
