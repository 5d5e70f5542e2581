"""Parallel tensor loading with backpressure: a pool of workers reads and transforms tensors in
file order; the caller assigns each result in the same order.

Workers run the loader's `read` seam (source -> transform -> transfer), whose heavy parts
release the GIL (preadv, page faults in numpy/torch copies, torch kernels). At most
`max_inflight_bytes` of tensors (counted at their checkpoint size, at least one tensor) are
submitted and not yet assigned: that bounds the transient memory above the model's own
(read-mode buffers, dequantization outputs waiting for their turn) whatever the model's size,
and keeps reads close to sequential. Results are assigned in plan order, so the first error
raised is the first bad tensor's, and the pool is shut down before it propagates. With one
worker everything runs on the caller's thread (no pool). llama.cpp reads and uploads with a
similar bounded ring in llama_model_loader::load_all_data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_INFLIGHT_BYTES = 256 << 20


def load_in_order(
    items: Sequence[T],
    nbytes: Callable[[T], int],
    read: Callable[[T], Any],
    assign: Callable[[T, Any], None],
    workers: int = 1,
    max_inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
) -> int:
    """read(item) on `workers` threads, assign(item, result) in order; returns the peak bytes in
    flight (submitted, not yet assigned) as counted by nbytes()."""
    if workers <= 1:
        for item in items:
            assign(item, read(item))
        return max((nbytes(i) for i in items), default=0)
    pending: deque[tuple[T, Future]] = deque()
    inflight = peak = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="warmload-load") as pool:
        try:
            for item in items:
                size = nbytes(item)
                while pending and inflight + size > max_inflight_bytes:
                    inflight -= _assign_next(pending, nbytes, assign)
                pending.append((item, pool.submit(read, item)))
                inflight += size
                peak = max(peak, inflight)
            while pending:
                inflight -= _assign_next(pending, nbytes, assign)
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise
    return peak


def _assign_next(
    pending: deque[tuple[Any, Future]],
    nbytes: Callable[[Any], int],
    assign: Callable[[Any, Any], None],
) -> int:
    item, future = pending.popleft()
    assign(item, future.result())
    return nbytes(item)
