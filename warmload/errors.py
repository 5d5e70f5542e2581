"""The one exception hierarchy of warmload. Imports nothing from warmload.

Messages say what, where and what to do, with the numbers (see ../shared/DESIGN.md).
"""

from __future__ import annotations


class WarmloadError(Exception):
    """Base of every error warmload raises on purpose."""


class CheckpointError(WarmloadError):
    """Not GGUF/SafeTensors, truncated, offset out of range, bad alignment, bad metadata."""


class UnsupportedError(WarmloadError):
    """An architecture, quant type or feature we do not run; the message lists what we do."""


class WeightMismatchError(WarmloadError):
    """Checkpoint and model disagree: missing, unexpected or mis-shaped tensors (sorted)."""


class TokenizerError(WarmloadError):
    """The tokenizer metadata is missing or inconsistent."""


class RequestError(WarmloadError):
    """A bad API or generation request; carries the offending parameter's name."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextOverflowError(RequestError):
    """A prompt (or prompt + reserved tokens) longer than the context window."""


class HashMismatchError(CheckpointError):
    """A file's SHA-256 is not the expected one."""


class DownloadError(WarmloadError):
    """A transfer failed (HTTP status, network, disk); the message says what was kept."""


class OutputError(WarmloadError):
    """Writing an output file failed (disk full, read-only, permissions); names the path and
    what was left behind (nothing partial is ever left under the output's name)."""


class ModelLoadError(WarmloadError):
    """Wraps a load failure at the server boundary with the model id."""

    def __init__(self, model_id: str, cause: BaseException) -> None:
        super().__init__(f"model {model_id!r} failed to load: {cause}")
        self.model_id = model_id
        self.cause = cause
