"""Checkpoint and TensorInfo: what a model file holds, independent of its format.

A Checkpoint is opened by formats.open_checkpoint (GGUF or SafeTensors, picked by magic bytes).
It owns a ByteSource (formats/source.py) that hands out tensor bytes in the chosen load mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmload.errors import CheckpointError


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    ggml_type: str  # a GGML_TYPES name ("F32", "Q4_K", "BF16", ...); SafeTensors maps onto it
    shape: tuple[int, ...]  # PyTorch order: rows first (GGUF stores ne reversed)
    offset: int  # absolute byte offset in `file`
    nbytes: int
    file: str  # the file that holds the bytes (shards differ)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(slots=True)
class Checkpoint:
    path: Path  # the file, or the folder of a sharded SafeTensors model
    format: str  # "gguf" | "safetensors"
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    source: Any = field(repr=False)  # formats.source.ByteSource; None: opened header-only
    version: int = 0  # GGUF version (0 for SafeTensors)
    data_offset: int = 0  # GGUF: start of the tensor data section
    alignment: int = 0

    def tensor_bytes(self, name: str) -> memoryview:
        """The tensor's raw bytes: a zero-copy view in mmap and memory modes."""
        info = self.tensors[name]
        if self.source is None:
            raise CheckpointError(f"{self.path}: opened header-only; no tensor bytes to read")
        return self.source.view(info.file, info.offset, info.nbytes)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def close(self) -> None:
        if self.source is not None:
            self.source.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
