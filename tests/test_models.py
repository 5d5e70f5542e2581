"""Decoders against a naive reference written here from the HF/llama.cpp definitions.

The reference loops over positions and heads with explicit rope angles, an explicit causal /
sliding-window rule and softmax, sharing no code with warmload.models. Tiny random-weight
configs keep it fast; the real models are checked against transformers in test_loader.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from warmload.errors import ContextOverflowError
from warmload.models import gemma3, llama
from warmload.models.layers import rope_inv_freq

TOKENS = [3, 17, 9, 41, 0, 25, 25, 7, 33, 12, 48, 5, 19, 2]


def randomize(model: torch.nn.Module, seed: int, norm_center: float) -> torch.nn.Module:
    """Attach random weights to a meta-built model (norm weights near norm_center)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in list(model.named_parameters()):
        w = torch.randn(p.shape, generator=g)
        w = norm_center + 0.1 * w if name.endswith("norm.weight") else 0.3 * w
        module_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(module_name), leaf, torch.nn.Parameter(w, requires_grad=False))
    model.prepare()
    return model


def ref_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def ref_rope(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """HF rotate_half rope of one head vector x (D,) at position pos."""
    d = x.shape[0]
    out = x.clone()
    for i in range(d // 2):
        a = pos / theta ** (2 * i / d)
        c, s = math.cos(a), math.sin(a)
        out[i] = x[i] * c - x[i + d // 2] * s
        out[i + d // 2] = x[i + d // 2] * c + x[i] * s
    return out


def ref_attention(q, k, v, n_kv, scale, window):  # (T, H, D), (T, KV, D), (T, KV, D)
    T, H, D = q.shape
    out = torch.zeros(T, H, D)
    for t in range(T):
        for h in range(H):
            g = h // (H // n_kv)
            keys = [j for j in range(t + 1) if window is None or t - j < window]
            scores = torch.stack([q[t, h] @ k[j, g] * scale for j in keys])
            p = torch.softmax(scores, dim=0)
            out[t, h] = sum(p[i] * v[j, g] for i, j in enumerate(keys))
    return out


def ref_forward(sd, c, tokens, gemma: bool) -> torch.Tensor:
    """Logits (T, vocab) of llama (gemma=False) or gemma3 from a state dict."""
    H, KV, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    off = c.norm_weight_offset if gemma else 0.0
    x = sd["model.embed_tokens.weight"][tokens]
    if gemma:
        x = x * math.sqrt(c.hidden_size)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."

        def norm(x, name, p=p):
            return ref_rmsnorm(x, off + sd[p + name + ".weight"], c.rms_norm_eps)

        h = norm(x, "input_layernorm")
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(-1, H, D)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(-1, KV, D)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(-1, KV, D)
        window, theta, scale = None, c.rope_theta, D**-0.5
        if gemma:
            q, k = norm(q, "self_attn.q_norm"), norm(k, "self_attn.k_norm")
            scale = c.query_pre_attn_scalar**-0.5
            if c.layer_types[i] == "sliding_attention":
                window, theta = c.sliding_window, c.rope_local_base_freq
        q = torch.stack(
            [
                torch.stack([ref_rope(q[t, j], t, theta) for j in range(H)])
                for t in range(len(tokens))
            ]
        )
        k = torch.stack(
            [
                torch.stack([ref_rope(k[t, j], t, theta) for j in range(KV)])
                for t in range(len(tokens))
            ]
        )
        a = ref_attention(q, k, v, KV, scale, window).reshape(len(tokens), H * D)
        a = a @ sd[p + "self_attn.o_proj.weight"].T
        x = x + (norm(a, "post_attention_layernorm") if gemma else a)
        h = norm(x, "pre_feedforward_layernorm" if gemma else "post_attention_layernorm")
        gate = h @ sd[p + "mlp.gate_proj.weight"].T
        act = F.gelu(gate, approximate="tanh") if gemma else gate * torch.sigmoid(gate)
        m = (act * (h @ sd[p + "mlp.up_proj.weight"].T)) @ sd[p + "mlp.down_proj.weight"].T
        x = x + (norm(m, "post_feedforward_layernorm") if gemma else m)
    x = ref_rmsnorm(x, off + sd["model.norm.weight"], c.rms_norm_eps)
    head = sd["model.embed_tokens.weight"] if c.tie_word_embeddings else sd["lm_head.weight"]
    logits = x @ head.T
    cap = getattr(c, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


LLAMA = llama.LlamaConfig(
    vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500.0,
)  # fmt: skip
GEMMA = gemma3.Gemma3Config(
    vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
    num_attention_heads=2, num_key_value_heads=1, head_dim=16, rope_theta=3000.0,
    rope_local_base_freq=100.0, sliding_window=4, sliding_window_pattern=3,
    query_pre_attn_scalar=12.0, final_logit_softcapping=5.0,
)  # fmt: skip


def full_logits(model, tokens: list[int]) -> torch.Tensor:
    cache = model.new_cache(32)
    return model.compute_logits(model(torch.tensor([tokens]), cache, 0))[0]


@torch.inference_mode()
def test_llama_matches_reference():
    model = randomize(llama.build_model(LLAMA), 0, 1.0)
    want = ref_forward(model.state_dict(), LLAMA, TOKENS, gemma=False)
    assert torch.allclose(full_logits(model, TOKENS), want, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_llama_interleaved_rope_on_gguf_permuted_weights():
    """llama.cpp's converter permutes q/k rows for adjacent-pair rope; style "interleaved" on
    permuted weights must equal HF's rotate_half on the original weights."""
    hf = randomize(llama.build_model(LLAMA), 1, 1.0)
    cfg = replace(LLAMA, rope_style="interleaved")
    gg = randomize(llama.build_model(cfg), 1, 1.0)
    for layer in gg.model.layers:
        attn = layer.self_attn
        for proj, heads in (
            (attn.q_proj, cfg.num_attention_heads),
            (attn.k_proj, cfg.num_key_value_heads),
        ):
            w = proj.weight  # convert_hf_to_gguf.py LlamaModel.permute
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2)
            proj.weight = torch.nn.Parameter(w.reshape(proj.weight.shape), requires_grad=False)
    assert torch.allclose(full_logits(gg, TOKENS), full_logits(hf, TOKENS), atol=1e-4)


@pytest.mark.parametrize("offset", [1.0, 0.0])
@torch.inference_mode()
def test_gemma3_matches_reference_beyond_the_window(offset: float):
    cfg = replace(GEMMA, norm_weight_offset=offset)
    assert cfg.layer_types == ("sliding_attention", "sliding_attention", "full_attention")
    model = randomize(gemma3.build_model(cfg), 2, 1.0 - offset)
    want = ref_forward(model.state_dict(), cfg, TOKENS, gemma=True)
    got = full_logits(model, TOKENS)
    assert len(TOKENS) > 3 * cfg.sliding_window
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    # The window matters: a model whose local layers see everything gives other logits.
    wide = randomize(gemma3.build_model(replace(cfg, sliding_window=64)), 2, 1.0 - offset)
    assert (full_logits(wide, TOKENS)[-1] - got[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["llama", "llama-interleaved", "gemma3"])
@pytest.mark.parametrize("chunks", [[len(TOKENS)], [5] + [1] * 9, [1, 6, 3, 4], [4, 4, 4, 2]])
@torch.inference_mode()
def test_cache_chunks_match_full_forward(kind: str, chunks: list[int]):
    """Prefill in chunks then decode one by one == one full forward (window 4 crossed). Single
    tokens take the fused decode kernel (rope + cache write + attention in C), chunks torch."""
    if kind.startswith("llama"):
        style = "interleaved" if kind == "llama-interleaved" else "neox"
        model = randomize(llama.build_model(replace(LLAMA, rope_style=style)), 3, 1.0)
    else:
        model = randomize(gemma3.build_model(GEMMA), 3, 0.0)
    full = full_logits(model, TOKENS)
    cache = model.new_cache(len(TOKENS))
    rows, start = [], 0
    for n in chunks:
        hidden = model(torch.tensor([TOKENS[start : start + n]]), cache, start)
        rows.append(model.compute_logits(hidden)[0])
        start += n
    assert start == len(TOKENS)
    assert torch.allclose(torch.cat(rows), full, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_batch_rows_are_independent():
    model = randomize(gemma3.build_model(GEMMA), 4, 0.0)
    other = [t + 1 for t in TOKENS]
    cache = model.new_cache(len(TOKENS), batch_size=2)
    both = model.compute_logits(model(torch.tensor([TOKENS, other]), cache, 0))
    assert both.dtype == torch.float32 and both.shape == (2, len(TOKENS), GEMMA.vocab_size)
    assert torch.allclose(both[0], full_logits(model, TOKENS), atol=1e-5)
    assert torch.allclose(both[1], full_logits(model, other), atol=1e-5)


@torch.inference_mode()
def test_cache_overflow_is_a_typed_error():
    model = randomize(llama.build_model(LLAMA), 5, 1.0)
    cache = model.new_cache(8)
    model(torch.tensor([TOKENS[:6]]), cache, 0)
    with pytest.raises(ContextOverflowError, match="6..8 do not fit the KV cache of 8"):
        model(torch.tensor([TOKENS[:3]]), cache, 6)


def test_tied_embeddings_share_one_tensor():
    model = randomize(gemma3.build_model(GEMMA), 6, 0.0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.tied_weights() == {"lm_head.weight": "model.embed_tokens.weight"}


def test_rope_scaling_frequencies():
    base = rope_inv_freq(8, 10000.0)
    assert torch.allclose(
        base, torch.tensor([10000.0 ** (-i / 8) for i in (0, 2, 4, 6)], dtype=torch.float64)
    )
    assert torch.allclose(
        rope_inv_freq(8, 10000.0, {"rope_type": "linear", "factor": 4.0}), base / 4
    )
    factors = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert torch.allclose(rope_inv_freq(8, 10000.0, None, factors), base / factors.double())
    # llama3: wavelengths above old_ctx/low are divided by factor, below old_ctx/high kept,
    # the band between blended (transformers _compute_llama3_parameters).
    s = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64}  # fmt: skip
    got = rope_inv_freq(8, 10000.0, s)
    wavelen = 2 * math.pi / base
    for i in range(4):
        w, f = float(wavelen[i]), float(base[i])
        if w < 64 / 4:
            want = f
        elif w > 64 / 1:
            want = f / 8
        else:
            smooth = (64 / w - 1) / (4 - 1)
            want = (1 - smooth) * f / 8 + smooth * f
        assert math.isclose(float(got[i]), want, rel_tol=1e-12), i


@pytest.mark.peer
def test_rope_llama3_matches_transformers():
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    fn = rope_utils.ROPE_INIT_FUNCTIONS["llama3"]
    from transformers import LlamaConfig as HFLlamaConfig

    s = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192, "rope_theta": 500000.0}  # fmt: skip
    hf = HFLlamaConfig(
        hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072, rope_parameters=s
    )
    want, _ = fn(hf, "cpu")
    assert torch.allclose(rope_inv_freq(128, 500000.0, s).float(), want, rtol=1e-6)
