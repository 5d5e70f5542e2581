"""Ground truth per architecture: a tiny random model made by transformers from its own config
class, run by transformers and by warmload three ways.

For each registered architecture (models/registry.py) transformers builds a seeded model (norms
and biases away from their init so a wrong convention shows; a sliding window of 4, shorter
than the 14-token test sequence; soft-caps and logit scales switched on) and saves it as a
Hugging Face folder. warmload must give transformers' float32 logits (within 1e-3):
- loading the folder itself (config.json and safetensors names through the architecture's
  config_from_hf and modules),
- loading the F32 GGUF its converter writes (gguf_metadata, the inverted tensor table and
  gguf_tensor, read back by config_from_gguf and GGUF_TENSOR_NAMES);
and through the packed Q8_0 path (8-bit activations, the C decode plan where the registry says
the architecture has one) its teacher-forced top-1 must equal transformers' at >= 90% of the
positions (the threshold of the llama converter's own test), decode steps included.
transformers is a test extra: without it these tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from warmload.models import fused, registry

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

IDS = [5, 71, 200, 33, 9, 120, 64, 250, 17, 88, 140, 3, 199, 42]
PROMPT = 6  # tokens prefilled before the decode steps of the packed check
WINDOW = 4
COMMON = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
# architecture -> (transformers config class, model class, its own fields)
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500.0, rms_norm_eps=1e-5)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=10000.0)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=True)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=WINDOW)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW, tie_word_embeddings=True,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
    # every Gemma 3 field away from its default, so a reader that drops one fails: local and
    # global rope bases and scaling (transformers 5 nests them per layer kind), the score scale
    # != head_dim**-0.5, the final soft-cap, a layer pattern no sliding_window_pattern makes
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, tie_word_embeddings=True,
        layer_types=["sliding_attention", "full_attention", "sliding_attention",
                     "sliding_attention"], final_logit_softcapping=5.0,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", dict(
        sliding_window=WINDOW, logit_scale=0.5, tie_word_embeddings=True)),
}  # fmt: skip
GGUF_BLOCKED = {"gemma3": "a Gemma 3 GGUF fixes every 6th layer global (6 layers here: 4)"}


def test_every_registered_architecture_has_a_ground_truth():
    assert sorted(MODELS) == sorted(a.name for a in registry.ARCHITECTURES)


def _tokenizer(folder: Path) -> None:
    """A byte-level BPE of 256 byte tokens (no merges) as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))


def _perturb(model: torch.nn.Module) -> None:
    """Norm weights and biases away from their init (1 / 0; gemma's 0 = scale 1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request, tmp_path_factory) -> tuple[str, Path, torch.Tensor]:
    """(architecture, HF folder, transformers' float32 logits on IDS)."""
    arch = request.param
    config_cls, model_cls, fields = MODELS[arch]
    config = getattr(transformers, config_cls)(**{**COMMON, **fields})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).float().eval()
    _perturb(model)
    folder = tmp_path_factory.mktemp(arch) / f"tiny-{arch}"
    model.save_pretrained(folder, safe_serialization=True)
    _tokenizer(folder)
    ref = getattr(transformers, model_cls).from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        logits = ref(torch.tensor([IDS])).logits[0].float()
    return arch, folder, logits


def _ours(path: Path, decode_from: int | None = None):
    import warmload

    engine = warmload.load(str(path), threads=2)
    return engine, engine.logits(IDS, decode_from=decode_from).float()


def test_hf_folder_matches_transformers(case):
    arch, folder, ref = case
    _, ours = _ours(folder)
    assert (ours - ref).abs().max() <= 1e-3, f"{arch}: max |ours - transformers|"


def test_converted_gguf_matches_transformers(case, tmp_path):
    from warmload.errors import UnsupportedError
    from warmload.quantizer import quantize_checkpoint

    arch, folder, ref = case
    if arch in GGUF_BLOCKED:
        with pytest.raises(UnsupportedError):
            quantize_checkpoint(folder, tmp_path / "f32.gguf", "F32")
        return
    out = quantize_checkpoint(folder, tmp_path / "f32.gguf", "F32").path
    _, ours = _ours(out)
    assert (ours - ref).abs().max() <= 1e-3, f"{arch}: max |ours - transformers|"


def test_packed_path_agrees_with_transformers(case, tmp_path):
    from warmload.quantizer import quantize_checkpoint

    arch, folder, ref = case
    if arch in GGUF_BLOCKED:
        pytest.skip(GGUF_BLOCKED[arch])
    out = quantize_checkpoint(folder, tmp_path / "q8.gguf", "Q8_0").path
    engine, ours = _ours(out, decode_from=PROMPT)
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.9, f"{arch}: top-1 agreement {agree:.0%}"
    plan = fused.decode_plan(engine.model, engine.model.new_cache(16, 1))
    assert (plan is not None) == registry.find(arch).plan, fused.plan_refusal(engine.model)


def test_gemma3_transformers4_config_gives_the_same_logits(case, tmp_path):
    """The same weights with config.json as transformers 4.x wrote it (flat rope_theta,
    rope_scaling, rope_local_base_freq, no rope_parameters)."""
    import shutil

    arch, folder, ref = case
    if arch != "gemma3":
        pytest.skip("transformers 4.x / 5.x rope layouts differ for gemma3 only here")
    old = tmp_path / "tiny-gemma3-v4"
    shutil.copytree(folder, old)
    config = json.loads((old / "config.json").read_text())
    rope = config.pop("rope_parameters")
    full, local = rope["full_attention"], rope["sliding_attention"]
    config["rope_theta"] = full["rope_theta"]
    config["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    config["rope_local_base_freq"] = local["rope_theta"]
    (old / "config.json").write_text(json.dumps(config))
    _, ours = _ours(old)
    assert (ours - ref).abs().max() <= 1e-3


def test_plan_matches_modules(case, tmp_path, monkeypatch):
    """Where the registry says the C plan runs the architecture (soft-capped Gemma 2 scores
    included), its decode steps give the modules' logits bit for bit."""
    from warmload import kernels
    from warmload.quantizer import quantize_checkpoint

    arch, folder, _ = case
    if not registry.find(arch).plan or arch in GGUF_BLOCKED:
        pytest.skip(f"{arch}: no plan, or no GGUF of this config")
    if "int8" not in kernels.KERNEL_TYPES.values():
        pytest.skip("no integer kernels in this variant (the plan needs them)")
    out = quantize_checkpoint(folder, tmp_path / "q8.gguf", "Q8_0").path
    model = _ours(out)[0].model

    def steps(planned: bool) -> torch.Tensor:
        if not planned:
            monkeypatch.setattr(fused, "_build", lambda model, cache: None)
        model.__dict__.pop("_plans", None)
        with torch.inference_mode():
            cache = model.new_cache(len(IDS))
            model(torch.tensor([IDS[:PROMPT]]), cache, 0)
            rows = [
                model.compute_logits(model(torch.tensor([[t]]), cache, PROMPT + i))[0, -1]
                for i, t in enumerate(IDS[PROMPT:])
            ]
        monkeypatch.undo()
        return torch.stack(rows)

    planned = steps(True)
    assert [p for p in model._plans.values() if p is not None]
    assert torch.equal(planned, steps(False))
