"""open_checkpoint: a path -> Checkpoint, the format picked by the file's first bytes.

GGUF files start with b"GGUF" (ggml/docs/gguf.md); SafeTensors files with an 8-byte
little-endian header length followed by b"{" (huggingface/safetensors). A folder is read as
SafeTensors when it has model.safetensors.index.json or *.safetensors files, or as GGUF when it
holds exactly one .gguf file. Only headers are read here; tensor bytes come later from the
checkpoint's ByteSource in the chosen load mode.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from warmload.config import LOAD_MODES
from warmload.errors import CheckpointError, RequestError
from warmload.formats.checkpoint import Checkpoint
from warmload.formats.gguf import read_gguf
from warmload.formats.safetensors import INDEX_NAME, read_safetensors

# Format name -> reader; one table for the dispatch by magic bytes.
READERS: dict[str, Callable[[Path, str], Checkpoint]] = {
    "gguf": read_gguf,
    "safetensors": read_safetensors,
}


def detect_format(path: str | os.PathLike[str]) -> str:
    """ "gguf" or "safetensors" for a file or model folder, else CheckpointError naming it."""
    p = Path(path)
    if p.is_dir():
        return _folder_format(p)
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such file or directory") from None
    except PermissionError:
        raise CheckpointError(f"{p}: permission denied") from None
    if not head:
        raise CheckpointError(f"{p}: the file is empty (0 bytes)")
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 0:
        return "safetensors"
    raise CheckpointError(
        f"{p}: not a GGUF or SafeTensors model (starts with {head[:8].hex(' ')}; GGUF starts "
        f"with 'GGUF', SafeTensors with a header length and '{{')"
    )


def _folder_format(folder: Path) -> str:
    if (folder / INDEX_NAME).is_file() or any(folder.glob("*.safetensors")):
        return "safetensors"
    if len(list(folder.glob("*.gguf"))) == 1:
        return "gguf"
    ggufs = sorted(f.name for f in folder.glob("*.gguf"))
    if ggufs:
        raise CheckpointError(
            f"{folder}: holds {len(ggufs)} .gguf files ({', '.join(ggufs[:4])}); pass one of them"
        )
    raise CheckpointError(
        f"{folder}: no model weights here (no {INDEX_NAME}, *.safetensors or *.gguf file)"
    )


def open_checkpoint(path: str | os.PathLike[str], load_mode: str = "mmap") -> Checkpoint:
    """Open a GGUF or SafeTensors file (or model folder): header only, no tensor bytes read."""
    if load_mode not in LOAD_MODES:
        raise RequestError(
            f"load_mode must be one of {', '.join(LOAD_MODES)}, not {load_mode!r}", "load_mode"
        )
    p = Path(path).expanduser()
    fmt = detect_format(p)
    if fmt == "gguf" and p.is_dir():
        p = next(p.glob("*.gguf"))
    return READERS[fmt](p, load_mode)
