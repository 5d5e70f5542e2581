"""The decoders warmload runs, by GGUF `general.architecture` name (one dispatch table).

Each entry's module provides a config dataclass (HF field names), build_model(config) and
GGUF_TENSOR_NAMES (GGUF name -> HF parameter name). Models never import formats/ or loader/.
"""

from __future__ import annotations

from types import ModuleType

from warmload.models import gemma3, llama

ARCHITECTURES: dict[str, ModuleType] = {
    "llama": llama,
    "gemma3": gemma3,
}
