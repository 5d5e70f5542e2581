"""Write a GGUF model out as a Hugging Face model folder (safetensors + config + tokenizer).

    python scripts/export_hf.py MODEL OUT_DIR [--dtype F32|F16|BF16] [--max-shard-mb N]

MODEL is a GGUF path or a packaged model name ("smollm2", "gemma3-270m"). The folder holds
config.json, generation_config.json, model.safetensors (or shards + model.safetensors.index.json
with --max-shard-mb), tokenizer.json and tokenizer_config.json (with the chat template): what
transformers' save_pretrained writes, so warmload.load(folder) and transformers both read it.

Weights are dequantized (warmload.quant.dequant) and undo what llama.cpp's
convert_hf_to_gguf.py did: llama q/k rows are un-permuted (LlamaModel.permute reshapes rows to
(heads, 2, head_dim / 2) and swaps the last two axes; the inverse swaps them back), and gemma
norm weights lose the +1 it added (Gemma3Model.modify_tensors). Names map through the
architecture's GGUF_TENSOR_NAMES table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from warmload.catalog import resolve_model_path
from warmload.formats.open import open_checkpoint
from warmload.formats.safetensors_write import write_safetensors, write_sharded
from warmload.loader.hparams import read_model_config
from warmload.loader.plan import expand_names
from warmload.models import ARCHITECTURES
from warmload.quant.dequant import dequantize
from warmload.tokenizer import build_tokenizer
from warmload.tokenizer.hf import write_tokenizer_files

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
HF_MODEL_TYPES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
}
OUR_ONLY_FIELDS = ("rope_style", "norm_weight_offset")  # not HF fields: implied by the format


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's permute(w, n_heads): GGUF's rope-pair row order -> HF's."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weight(arch: str, config: Any, name: str, w: torch.Tensor) -> torch.Tensor:
    """A dequantized GGUF weight (under its HF name) as the HF checkpoint stores it."""
    if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
        return unpermute(w, config.num_attention_heads)
    if arch == "llama" and name.endswith("self_attn.k_proj.weight"):
        return unpermute(w, config.num_key_value_heads)
    if arch == "gemma3" and name.endswith("norm.weight"):
        return w - 1.0
    return w


def hf_config(arch: str, config: Any, tokenizer: Any, dtype: str) -> dict[str, Any]:
    """config.json: our config's fields (HF names), plus model_type and the special ids."""
    fields = dataclasses.asdict(config)
    for key in OUR_ONLY_FIELDS:
        fields.pop(key, None)
    if fields.get("layer_types") is not None:
        fields["layer_types"] = list(fields["layer_types"])
    model_type, cls = HF_MODEL_TYPES[arch]
    return {
        "architectures": [cls],
        "model_type": model_type,
        **fields,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.vocab.pad_id,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
    }


def hf_tensors(checkpoint: Any, arch: str, config: Any, dtype: str) -> dict[str, tuple]:
    """HF name -> (safetensors dtype, shape, bytes) of every weight, in file order."""
    names = expand_names(ARCHITECTURES[arch].GGUF_TENSOR_NAMES, config.num_hidden_layers)
    out = {}
    for info in sorted(checkpoint.tensors.values(), key=lambda t: t.offset):
        if info.name not in names:
            raise SystemExit(
                f"{checkpoint.path}: tensor {info.name!r} has no HF name (rope_freqs?)"
            )
        name = names[info.name]
        w = dequantize(checkpoint.tensor_bytes(info.name), info.ggml_type, info.shape)
        w = hf_weight(arch, config, name, w).to(DTYPES[dtype]).contiguous()
        out[name] = (dtype, tuple(w.shape), w.view(torch.uint8).numpy())
    return out


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", "utf-8")
    tmp.replace(path)


def export_hf(
    model: str | Path, out: str | Path, dtype: str = "F32", max_shard_mb: int = 0
) -> Path:
    """Write the HF folder of GGUF `model` into `out` (created); returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open_checkpoint(resolve_model_path(model)) as checkpoint:
        arch, config = read_model_config(checkpoint)
        tokenizer = build_tokenizer(checkpoint.metadata)
        tensors = hf_tensors(checkpoint, arch, config, dtype)
    if max_shard_mb:
        write_sharded(out, tensors, max_shard_mb << 20, {"format": "pt"})
    else:
        write_safetensors(out / "model.safetensors", tensors, {"format": "pt"})
    write_json(out / "config.json", hf_config(arch, config, tokenizer, dtype))
    generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": sorted(tokenizer.stop_ids)}
    write_json(out / "generation_config.json", generation)
    write_tokenizer_files(tokenizer, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="GGUF path or packaged model name")
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="F32")
    p.add_argument("--max-shard-mb", type=int, default=0, help="shard the weights (0: one file)")
    args = p.parse_args(argv)
    print(export_hf(args.model, args.out, args.dtype, args.max_shard_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
