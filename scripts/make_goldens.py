"""Write tests/golden/generation_<model>.json: two references' greedy text, teacher-forced.

llama.cpp (llama-cpp-python, 8-bit activations in its quantized matmuls) and Hugging Face
transformers (GGUF dequantized to float32) both run the same GGUF file. Their greedy
continuations drift apart after a few dozen tokens although both are right, so each reference is
recorded on its own: for every prompt, the prompt ids (llama.cpp's tokenization, reused for
transformers so that only the model differs), the reference's greedy continuation, and then the
reference's own next-token top-1 at every position of prompt + continuation evaluated in one
teacher-forced pass. tests/test_golden.py feeds warmload the same sequences and compares top-1s.

Per prompt and reference the file holds (positions are the C positions whose next token is a
continuation token: from the last prompt token to the second-to-last continuation token):
  top1            teacher-forced top-1 id at each position
  top5_ids/logits teacher-forced top-5 at each position
  first           at the first generated position: top-50 ids, their logits, and the
                  log-sum-exp of all logits (so the top-50 log-probabilities are exact)

Run by hand (needs transformers and llama-cpp-python; ~5 min on 2 cores):
    .venv/bin/python scripts/make_goldens.py [smollm2] [gemma3-270m] [qwen2.5-coder-0.5b]
Deterministic: greedy decoding, fixed thread counts, no sampling.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

from warmload.catalog import resolve_model_path

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "tests" / "golden"
MODELS = ("smollm2", "gemma3-270m", "qwen2.5-coder-0.5b")
MAX_NEW_TOKENS = 32
TOP_K = 5
FIRST_TOP_K = 50
THREADS = 2

CHAT_USER = "Give me three tips for staying focused while studying."
# Each model's own chat format (the template in its GGUF, rendered for one user turn).
CHAT_PROMPTS = {
    "smollm2": (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        f"Face<|im_end|>\n<|im_start|>user\n{CHAT_USER}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "gemma3-270m": f"<start_of_turn>user\n{CHAT_USER}<end_of_turn>\n<start_of_turn>model\n",
    "qwen2.5-coder-0.5b": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        f"assistant.<|im_end|>\n<|im_start|>user\n{CHAT_USER}<|im_end|>\n<|im_start|>assistant\n"
    ),
}
PROMPTS = {
    "prose": "The invention of the printing press in the fifteenth century changed Europe because",
    "code": 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n',
    "qa": "Question: What is the boiling point of water at sea level in Celsius?\nAnswer:",
    "list": "The planets of the solar system, in order from the Sun:\n1. Mercury\n",
    "unicode": "Café, crème brûlée, 3 € — 東京は晴れです ✓. In English: the weather in Tokyo is",
    # over 64 tokens: the prompt runs as one long chunk (torch's GEMM, bfloat16 on AMX CPUs)
    "long": (
        "Lighthouses were once kept by families who lived at the edge of the sea. Every evening "
        "the keeper climbed the spiral stairs, trimmed the wick, polished the great lens and "
        "wound the clockwork that turned it, so that ships miles away could read the flashes "
        "and know exactly which headland they were passing. In storms the keeper stayed awake "
        "all night, and a log book recorded the weather, the ships that passed and the oil "
        "that was burned. When electricity and automatic lamps arrived in the twentieth "
        "century, the keepers left one by one, and the last of them"
    ),
}


def prompt_texts(model_name: str) -> dict[str, str]:
    return {**PROMPTS, "chat": CHAT_PROMPTS[model_name]}


def round_list(values: Any) -> list[float]:
    return [round(float(v), 5) for v in values]


def describe(logits: torch.Tensor, first_row: int) -> dict[str, Any]:
    """Top-1 / top-5 at each row of `logits` (C, vocab) and the top-50 of row `first_row`."""
    top = logits.topk(TOP_K, dim=-1)
    first = logits[first_row]
    first_top = first.topk(FIRST_TOP_K)
    return {
        "top1": top.indices[:, 0].tolist(),
        "top5_ids": top.indices.tolist(),
        "top5_logits": [round_list(row) for row in top.values.tolist()],
        "first": {
            "ids": first_top.indices.tolist(),
            "logits": round_list(first_top.values.tolist()),
            "logsumexp": round(float(torch.logsumexp(first.double(), dim=0)), 5),
        },
    }


class LlamaCppReference:
    name = "llama.cpp"
    version = f"llama-cpp-python {llama_cpp.__version__}"

    def __init__(self, path: Path) -> None:
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=512,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            logits_all=True,
            verbose=False,
            seed=0,
        )

    def tokenize(self, text: str) -> list[int]:
        # add_bos=True means "add the special tokens the model's file asks for" (llama_tokenize).
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def _eval(self, ids: list[int]) -> torch.Tensor:
        """Logits at each position of `ids` appended to what is already evaluated."""
        start = self.llm.n_tokens
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[start : start + len(ids)]))

    def generate(self, prompt: list[int]) -> list[int]:
        self.llm.reset()
        row = self._eval(prompt)[-1]
        out: list[int] = []
        while len(out) < MAX_NEW_TOKENS:
            token = int(row.argmax())
            out.append(token)
            if self.is_end(token):
                break
            row = self._eval([token])[-1]
        return out

    def teacher_forced(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        return self._eval(ids).float()


class TransformersReference:
    name = "transformers"
    version = f"transformers {transformers.__version__} GGUF -> float32"

    def __init__(self, path: Path) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        self.end_ids = set(np.atleast_1d(self.model.generation_config.eos_token_id or []).tolist())
        self.end_ids |= set(np.atleast_1d(self.model.config.eos_token_id or []).tolist())

    @torch.inference_mode()
    def generate(self, prompt: list[int]) -> list[int]:
        out_ = self.model(input_ids=torch.tensor([prompt]), use_cache=True)
        out: list[int] = []
        while len(out) < MAX_NEW_TOKENS:
            token = int(out_.logits[0, -1].argmax())
            out.append(token)
            if token in self.end_ids:
                break
            out_ = self.model(
                input_ids=torch.tensor([[token]]),
                past_key_values=out_.past_key_values,
                use_cache=True,
            )
        return out

    @torch.inference_mode()
    def teacher_forced(self, ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids])).logits[0].float()


def record(reference: Any, prompt: list[int]) -> dict[str, Any]:
    continuation = reference.generate(prompt)
    logits = reference.teacher_forced(prompt + continuation)
    region = logits[len(prompt) - 1 : len(prompt) + len(continuation) - 1]
    described = describe(region, 0)
    agree = sum(a == b for a, b in zip(described["top1"], continuation))
    return {
        "reference": reference.name,
        "version": reference.version,
        "continuation_ids": continuation,
        # how often the one-pass top-1 equals the token the reference generated step by step
        "self_agreement": round(agree / len(continuation), 4),
        **described,
    }


def make_golden(model_name: str) -> dict[str, Any]:
    path = resolve_model_path(model_name)
    cpp = LlamaCppReference(path)
    prompts = {name: cpp.tokenize(text) for name, text in prompt_texts(model_name).items()}
    cases = {name: {"prompt_ids": ids, "references": {}} for name, ids in prompts.items()}
    for name, ids in prompts.items():
        cases[name]["references"]["llama.cpp"] = record(cpp, ids)
    del cpp
    hf = TransformersReference(path)
    hf_arch = type(hf.model).__name__
    for name, ids in prompts.items():
        cases[name]["references"]["transformers"] = record(hf, ids)
    return {
        "model": model_name,
        "file": path.name,
        "file_nbytes": path.stat().st_size,
        "transformers_class": hf_arch,
        "positions": "from the last prompt token to the second-to-last continuation token",
        "max_new_tokens": MAX_NEW_TOKENS,
        "prompt_texts": prompt_texts(model_name),
        "cases": cases,
    }


def dump(golden: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers on one line."""
    text = json.dumps(golden, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)


def main(argv: list[str]) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name in argv or MODELS:
        golden = make_golden(name)
        out = GOLDEN_DIR / f"generation_{name}.json"
        out.write_text(dump(golden) + "\n")
        for case, data in golden["cases"].items():
            refs = data["references"]
            print(
                name,
                case,
                {r: (v["continuation_ids"][:4], v["self_agreement"]) for r, v in refs.items()},
            )
        print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
