"""The architectures warmload runs: the ONE list every other part reads.

Each entry names the module (models/<module>.py) that owns everything about the architecture:
its config, how it is read from GGUF metadata (`config_from_gguf(keys, tensors, n_tokens)`) and
from config.json (`config_from_hf(fields)`), its GGUF tensor-name table (`GGUF_TENSOR_NAMES`,
which the HF converter inverts), how it is written back to GGUF (`gguf_metadata(config)`,
`gguf_tensor(name, array, config)`) and its forward (`build_model(config)`, a DecoderLM whose
LayerSpecs the C plan is built from). Here only data: the GGUF name, the config.json
model_type values and architectures[] classes it reads, the GGUF architecture it converts to,
and its built-in chat template (warmload.chat) for files without one. The loader, the HF
folder reader, the converter and the chat templates all look architectures up here.

Importing this module does not import torch (the modules are imported on first use), so the
torch-free layers (formats, chat, hf_convert) may read it at call time.

To add an architecture: write models/<name>.py (see docs/ADDING_AN_ARCHITECTURE.md), add its
line below, add tests/test_arch_<name>.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str  # GGUF general.architecture (what a GGUF file says) and our name
    module: str  # warmload.models.<module>
    hf_model_types: tuple[str, ...] = ()  # config.json "model_type" values
    hf_classes: tuple[str, ...] = ()  # config.json "architectures" entries the converter takes
    gguf_arch: str | None = None  # the GGUF architecture it is written as (None: name)
    reads_gguf: bool = True  # False: no GGUF file says this name (it converts to gguf_arch)
    chat_template: str = "chatml"  # built-in template (warmload.chat.BUILTIN_TEMPLATES)
    plan: bool = True  # runs through the packed C decode plan (False: the torch modules)


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", "llama", ("llama",), ("LlamaForCausalLM",)),
    Architecture(
        "mistral",
        "mistral",
        ("mistral",),
        ("MistralForCausalLM",),
        gguf_arch="llama",
        reads_gguf=False,
        chat_template="mistral",
    ),
    Architecture("qwen2", "qwen2", ("qwen2",), ("Qwen2ForCausalLM",)),
    Architecture("qwen3", "qwen3", ("qwen3",), ("Qwen3ForCausalLM",)),
    Architecture("phi3", "phi3", ("phi3",), ("Phi3ForCausalLM",), chat_template="phi3"),
    Architecture("gemma2", "gemma2", ("gemma2",), ("Gemma2ForCausalLM",), chat_template="gemma3"),
    Architecture(
        "gemma3", "gemma3", ("gemma3_text",), ("Gemma3ForCausalLM",), chat_template="gemma3"
    ),
    Architecture(
        "cohere2",
        "cohere2",
        ("cohere2",),
        ("Cohere2ForCausalLM",),
        chat_template="cohere",
        plan=False,
    ),
)

_BY_NAME = {a.name: a for a in ARCHITECTURES}
HF_MODEL_TYPES = {t: a.name for a in ARCHITECTURES for t in a.hf_model_types}
HF_CLASSES = {c: a.name for a in ARCHITECTURES for c in a.hf_classes}


def gguf_names() -> list[str]:
    """The general.architecture values warmload reads, sorted."""
    return sorted(a.name for a in ARCHITECTURES if a.reads_gguf)


def find(name: str) -> Architecture | None:
    """The entry of our architecture `name` (a GGUF name or an HF-only one), or None."""
    return _BY_NAME.get(name) if isinstance(name, str) else None


def module(name: str) -> ModuleType:
    """The architecture's module (imported on first use); KeyError for an unknown name."""
    return importlib.import_module(f"warmload.models.{_BY_NAME[name].module}")


def builtin_template(name: object) -> str | None:
    """The built-in chat template's name for architecture `name` (None: not ours)."""
    entry = _BY_NAME.get(name) if isinstance(name, str) else None
    return entry.chat_template if entry else None


class _Modules(Mapping[str, ModuleType]):
    """name -> architecture module, imported on first access (the loader's view)."""

    def __getitem__(self, name: str) -> ModuleType:
        return module(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_BY_NAME)

    def __len__(self) -> int:
        return len(_BY_NAME)


MODULES: Mapping[str, ModuleType] = _Modules()
