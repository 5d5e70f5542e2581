"""Write tests/golden/model_logits_<model>.json: transformers' float32 logits on fixed token ids.

The reference is Hugging Face transformers loading the same GGUF file (it dequantizes every
tensor to float32 and runs its own Llama / Gemma3 code). For each position we keep the top-5
token ids and their logits; tests/test_loader.py checks warmload's top-1 and values against them.
Needs transformers (and ~40 s per model):
`.venv/bin/python scripts/make_model_goldens.py [smollm2] [gemma3-270m] [qwen2.5-coder-0.5b]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from warmload.catalog import resolve_model_path

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "tests" / "golden"
TOP_K = 5

# The text, tokenized by each model's own tokenizer (ids fixed here so the golden does not
# depend on a tokenizer): "The quick brown fox jumps over the lazy dog. In the beginning, the
# universe was created. This has made a lot of people very angry" (+ BOS for gemma3).
TOKEN_IDS = {
    "smollm2": [
        504,
        2365,
        6354,
        16438,
        27003,
        690,
        260,
        23790,
        2767,
        30,
        533,
        260,
        3616,
        28,
        260,
        6128,
        436,
        2312,
        30,
        669,
        553,
        1135,
        253,
        2341,
        282,
        701,
        1035,
        12575,
    ],  # fmt: skip
    "gemma3-270m": [
        2,
        818,
        3823,
        8864,
        37423,
        38167,
        1024,
        506,
        31770,
        4799,
        236761,
        799,
        506,
        6534,
        236764,
        506,
        17748,
        691,
        4464,
        236761,
        1174,
        815,
        1603,
        496,
        2606,
        529,
        1331,
        1401,
        23186,
    ],  # fmt: skip
    # qwen2 pre-tokenizer, no BOS (warmload's and llama.cpp's tokenization agree on it)
    "qwen2.5-coder-0.5b": [
        785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13, 758, 279, 7167, 11, 279,
        15494, 572, 3465, 13, 1096, 702, 1865, 264, 2696, 315, 1251, 1602, 18514,
    ],  # fmt: skip
}


def make_golden(model_name: str) -> dict:
    path = resolve_model_path(model_name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    ids = TOKEN_IDS[model_name]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # (T, vocab)
    top = logits.topk(TOP_K, dim=-1)
    return {
        "model": model_name,
        "file": path.name,
        "file_nbytes": path.stat().st_size,
        "reference": f"transformers {transformers.__version__} GGUF -> float32",
        "token_ids": ids,
        "top_ids": top.indices.tolist(),
        "top_logits": [[round(v, 5) for v in row] for row in top.values.tolist()],
    }


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or TOKEN_IDS:
        out = GOLDEN_DIR / f"model_logits_{name}.json"
        out.write_text(json.dumps(make_golden(name), indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
