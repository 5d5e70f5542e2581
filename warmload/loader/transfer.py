"""Host -> device streaming: a ring of pinned staging buffers and a side CUDA stream.

Raw checkpoint bytes (an mmap view, a read buffer) are pageable memory; a copy from pageable
memory to the GPU is synchronous and staged by the driver. The ring instead copies each chunk
into one of `slots` pinned buffers (a CPU memcpy that also faults mmap pages in), then queues a
non-blocking copy of that buffer to the device on a side stream and records an event; a slot is
reused only after its event has completed. So the CPU fills slot k+1 while the DMA engine
drains slot k, and peak host memory is the ring (slots x slot_bytes), not the model. Raw bytes
go over the bus, which is 2-8x fewer than dequantized fp16/fp32 ones: dequantization then runs
on the GPU (quant.dequant works on CUDA tensors). The compute stream waits for the side stream
(wait_stream) before it uses an uploaded tensor.

Without CUDA the same ring runs synchronously on CPU tensors (plain buffers, no stream, no
events): the chunking and byte bookkeeping are the same code, which is what the CPU tests
cover. Reference: PyTorch "CUDA semantics" (pinned memory, non_blocking, streams, events);
llama.cpp's llama_model_loader::load_all_data (4 pinned upload buffers with events).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

DEFAULT_SLOTS = 4
DEFAULT_SLOT_BYTES = 64 << 20


class StagingRing:
    """`slots` staging buffers of `slot_bytes` for uploads to `device` (see the docstring)."""

    def __init__(
        self,
        device: torch.device | str,
        slots: int = DEFAULT_SLOTS,
        slot_bytes: int = DEFAULT_SLOT_BYTES,
    ) -> None:
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f"a staging ring needs slots >= 1 and slot_bytes >= 1, got {slots}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        pin = self.cuda and torch.cuda.is_available()
        self.slot_bytes = slot_bytes
        self._buffers = [
            torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(slots)
        ]
        self._events: list[Any] = [None] * slots
        self._next = 0
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.nbytes = 0  # bytes uploaded so far
        self.chunks = 0

    @property
    def host_nbytes(self) -> int:
        """Host memory the ring holds (its whole footprint)."""
        return len(self._buffers) * self.slot_bytes

    def _slot(self) -> torch.Tensor:
        i = self._next
        self._next = (i + 1) % len(self._buffers)
        if self._events[i] is not None:
            self._events[i].synchronize()  # the DMA that last read this slot is done
            self._events[i] = None
        self._current = i
        return self._buffers[i]

    def upload(self, raw: Any) -> torch.Tensor:
        """The bytes of `raw` (buffer protocol, numpy or CPU uint8 tensor) as a new 1-D uint8
        tensor on the device. On CUDA the copy may still be running on self.stream: call
        ready() (or use the tensor on a stream that waits for self.stream)."""
        src = _as_uint8(raw)
        out = torch.empty(src.numel(), dtype=torch.uint8, device=self.device)
        for start in range(0, src.numel(), self.slot_bytes):
            n = min(self.slot_bytes, src.numel() - start)
            buf = self._slot()[:n]
            buf.copy_(src[start : start + n])  # pageable (maybe mmap) -> pinned, on the CPU
            if self.stream is None:
                out[start : start + n].copy_(buf)
                continue
            with torch.cuda.stream(self.stream):
                out[start : start + n].copy_(buf, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self._events[self._current] = event
            self.chunks += 1
        if self.stream is None:
            self.chunks += (src.numel() + self.slot_bytes - 1) // self.slot_bytes
        self.nbytes += src.numel()
        return out

    def ready(self) -> None:
        """Make the current stream wait for every queued upload (no-op without CUDA)."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def synchronize(self) -> None:
        """Block until every queued upload is done (no-op without CUDA)."""
        if self.stream is not None:
            self.stream.synchronize()


def _as_uint8(raw: Any) -> torch.Tensor:
    """A flat CPU uint8 tensor over `raw` without copying it (read-only buffers included)."""
    if isinstance(raw, torch.Tensor):
        return raw.reshape(-1).view(torch.uint8)
    array = raw if isinstance(raw, np.ndarray) else np.frombuffer(raw, dtype=np.uint8)
    with warnings.catch_warnings():  # "The given NumPy array is not writable": never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array.reshape(-1).view(np.uint8))
