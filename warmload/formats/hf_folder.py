"""The side files of a Hugging Face model folder -> Checkpoint metadata (no tensor bytes).

A transformers model folder holds, next to its *.safetensors weights: config.json (the model
config, HF field names), generation_config.json (eos ids for generation), tokenizer.json (the
`tokenizers` library's serialized tokenizer), tokenizer_config.json (BOS/EOS texts, the
add_bos/add_eos flags and the Jinja `chat_template`), and in recent transformers versions the
template as a file of its own, chat_template.jinja. Reference: transformers
PreTrainedTokenizerBase.from_pretrained / save_pretrained and PretrainedConfig.

Keys added to Checkpoint.metadata (only for files that exist):

    "config"                    config.json as a dict
    "generation_config"         generation_config.json as a dict
    "tokenizer_config"          tokenizer_config.json as a dict
    "hf.tokenizer_json"         the path of tokenizer.json (parsed by warmload.tokenizer)
    "general.architecture"      our architecture name for config["model_type"] (GGUF's key, so
                                chat templates and summaries read both formats alike)
    "tokenizer.chat_template"   the template (GGUF's key), from chat_template.jinja or the
                                "default" entry of tokenizer_config's chat_template

Nothing outside the folder is read: names with `..`, absolute names, and symlinks that resolve
outside it are refused (inside_folder), except a hub cache snapshot's links into its blobs.
JSON of any shape or depth ends in CheckpointError, never RecursionError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warmload.errors import CheckpointError

TOKENIZER_JSON = "tokenizer.json"
TEMPLATE_FILE = "chat_template.jinja"


def allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where a model folder's files may really live: the folder itself, and for a Hugging Face
    hub cache snapshot (models--org--name/snapshots/REV, whose files are symlinks to
    ../../blobs/HASH) the repository's blobs folder."""
    root = folder.resolve()
    if root.parent.name == "snapshots":
        return root, root.parent.parent / "blobs"
    return (root,)


def inside_folder(folder: Path, name: str | Path, what: str) -> Path:
    """folder/name, refused (CheckpointError) when the name or a symlink on its way leads out of
    the model folder: `../x`, an absolute path, a link to /etc/passwd."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise CheckpointError(
            f"{folder}: {what} names {str(name)!r}, which is outside the model folder; a "
            "model folder's files must be inside it"
        )
    path = folder / relative
    real = path.resolve()
    if not any(real == root or root in real.parents for root in allowed_roots(folder)):
        raise CheckpointError(
            f"{path}: a symlink to {real}, outside the model folder {folder}; refusing to read it"
        )
    return path


def parse_json(text: str | bytes, where: Path | str) -> Any:
    """json.loads with every failure (bad UTF-8, syntax, nesting too deep) a CheckpointError."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{where}: JSON nested too deeply to be a model file") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; CheckpointError naming the file when it is not one."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    value = parse_json(text, path)
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: want a JSON object, got {type(value).__name__}")
    return value


def chat_template(folder: Path, tokenizer_config: dict[str, Any] | None) -> str | None:
    """The folder's chat template: chat_template.jinja, else tokenizer_config's chat_template
    (a string, or a list of {"name", "template"} of which "default" or the first is used)."""
    jinja = folder / TEMPLATE_FILE
    if jinja.is_file():
        try:
            return inside_folder(folder, TEMPLATE_FILE, "the chat template").read_text("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{jinja}: not UTF-8 text") from None
    template = (tokenizer_config or {}).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if template is not None and not isinstance(template, str):
        raise CheckpointError(
            f"{folder / 'tokenizer_config.json'}: chat_template must be a string or a list of "
            f"{{name, template}}, not {type(template).__name__}"
        )
    return template


def read_hf_folder(folder: Path) -> dict[str, Any]:
    """Metadata keys from the side files of the model folder `folder` (see the docstring)."""
    metadata: dict[str, Any] = {}
    for key, name in (
        ("config", "config.json"),
        ("generation_config", "generation_config.json"),
        ("tokenizer_config", "tokenizer_config.json"),
    ):
        if (folder / name).is_file():
            metadata[key] = read_json(inside_folder(folder, name, name))
    if (folder / TOKENIZER_JSON).is_file():
        path = inside_folder(folder, TOKENIZER_JSON, TOKENIZER_JSON)
        metadata["hf.tokenizer_json"] = str(path)
    model_type = metadata.get("config", {}).get("model_type")
    if isinstance(model_type, str):
        # the registry is data (torch-free), read at call time: formats sits below models
        from warmload.models.registry import HF_MODEL_TYPES

        metadata["general.architecture"] = HF_MODEL_TYPES.get(model_type, model_type)
    template = chat_template(folder, metadata.get("tokenizer_config"))
    if template:
        metadata["tokenizer.chat_template"] = template
    return metadata
