"""Which GGML type each tensor gets in a quantized file: llama.cpp's per-tensor mix rules.

Reference: llama.cpp src/llama-quant.cpp (tensor_allows_quantization, tensor_get_category,
llama_tensor_get_type(_impl), tensor_type_fallback, llama_ftype_get_default_type) for the file
types warmload writes. Norms, biases and other 1-D tensors keep their type; the output (or the
token embedding when it is tied to the output) goes to Q6_K; the _M/_L mixes give more bits to
attn_v and ffn_down in the layers `use_more_bits` picks; rows that are not a multiple of the
block size fall back to a 32-block type (or F16). Tensors are visited in llama.cpp's order
(layer number, then name) because the attn_v rules count the tensors seen so far.
Pure data and functions: no file I/O, no numpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from warmload.errors import RequestError, UnsupportedError
from warmload.formats.ggml_types import GGML_TYPES

# TYPE name -> (llama_ftype value written as general.file_type, default tensor type)
FILE_TYPES: dict[str, tuple[int, str]] = {
    "F32": (0, "F32"),
    "F16": (1, "F16"),
    "BF16": (32, "BF16"),
    "Q8_0": (7, "Q8_0"),
    "Q6_K": (18, "Q6_K"),
    "Q5_K_M": (17, "Q5_K"),
    "Q5_K_S": (16, "Q5_K"),
    "Q5_0": (8, "Q5_0"),
    "Q5_1": (9, "Q5_1"),
    "Q4_K_M": (15, "Q4_K"),
    "Q4_K_S": (14, "Q4_K"),
    "Q4_0": (2, "Q4_0"),
    "Q4_1": (3, "Q4_1"),
    "Q3_K_L": (13, "Q3_K"),
    "Q3_K_M": (12, "Q3_K"),
    "Q3_K_S": (11, "Q3_K"),
    "Q2_K": (10, "Q2_K"),
}
QUANTIZED = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_NOT_QUANTIZED_PARTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
    "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
    "mm.a.code_embd",
)  # fmt: skip
# tensor_get_category's substring tests, in its order (attn_v before attn_k, ...)
_CATEGORY_PARTS = (
    ("attn_qkv.weight", "attn_qkv"),
    ("attn_kv_b.weight", "attn_kv_b"),
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The hyperparameters the rules look at (from `{arch}.*` metadata)."""

    arch: str
    n_layer: int
    n_head: int = 0
    n_head_kv: int = 0
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:  # llama_quant_model_from_metadata's test for LLM_TYPE_70B
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelShape:
        arch = str(metadata.get("general.architecture", ""))

        def first(key: str) -> int:
            v = metadata.get(f"{arch}.{key}", 0)
            if not isinstance(v, (int, float, str)) and hasattr(v, "__len__"):
                v = v[0] if len(v) else 0  # per-layer arrays: the rules use layer 0
            return int(v)

        return cls(
            arch, first("block_count"), first("attention.head_count"),
            first("attention.head_count_kv"), first("expert_count"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class MixOptions:
    """The overrides of llama-quantize: --pure, --output-tensor-type, --token-embedding-type,
    --tensor-type REGEX=TYPE (first matching pattern wins), --leave-output-tensor."""

    pure: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    quantize_output_tensor: bool = True

    def __post_init__(self) -> None:
        for name, t in (("output_tensor_type", self.output_tensor_type),
                        ("token_embedding_type", self.token_embedding_type)):  # fmt: skip
            if t is not None and t not in GGML_TYPES:
                raise RequestError(f"{name}: unknown GGML type {t!r}", name)
        for pattern, t in self.tensor_types:
            if t not in GGML_TYPES:
                raise RequestError(
                    f"tensor type {pattern}={t}: unknown GGML type {t!r}", "tensor_types"
                )
            try:
                re.compile(pattern)
            except re.error as e:
                raise RequestError(f"tensor type pattern {pattern!r}: {e}", "tensor_types") from e


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # PyTorch order: the last dimension is the row (ggml ne[0])
    ggml_type: str


def layer_sort_key(name: str) -> tuple[int, str]:
    """llama_model_loader's weight_name_comparer: layer number (-1 if none), then name."""
    m = _LAYER.match(name)
    return (int(m.group(1)) if m else -1, name)


def category(name: str) -> str:
    """tensor_get_category: the broad role of a tensor from its GGUF name."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in _CATEGORY_PARTS:
        if part in name:
            return cat
    return "other"


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one (in ggml order) that is not 1."""
    ne = tuple(reversed(shape))
    return max((i + 1 for i, d in enumerate(ne) if d > 1), default=1)


def allows_quantization(entry: TensorEntry, opts: MixOptions) -> bool:
    """tensor_allows_quantization: 2-D+ '*weight' tensors that are not norms, gates, ..."""
    name = entry.name
    if _n_dims(entry.shape) < 2 or not name.endswith("weight"):
        return False
    if name == "output.weight" and not opts.quantize_output_tensor:
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(part in name for part in _NOT_QUANTIZED_PARTS)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def fallback(entry: TensorEntry, ggml_type: str) -> str:
    """tensor_type_fallback: a type whose block size divides the row length."""
    ncols = entry.shape[-1]
    if ncols % GGML_TYPES[ggml_type].block_size == 0:
        return ggml_type
    new = _FALLBACK.get(ggml_type, ggml_type)
    if GGML_TYPES[ggml_type].block_size > 32 and ggml_type not in _FALLBACK:
        raise UnsupportedError(f"no fallback type is defined for {ggml_type}")
    return new if ncols % GGML_TYPES[new].block_size == 0 else "F16"


@dataclass(slots=True)
class _State:
    shape: ModelShape
    ftype: str
    opts: MixOptions
    has_tied_embeddings: bool
    n_attention_wv: int
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    current: str = ""  # the tensor being typed (the MoE rules read its layer from the name)


def _output_type(st: _State, entry: TensorEntry, new_type: str) -> str:
    if st.opts.output_tensor_type is not None:
        return st.opts.output_tensor_type
    if st.shape.arch == "falcon" or entry.shape[-1] % GGML_TYPES[new_type].block_size:
        return "Q8_0"
    return new_type if new_type == "Q8_0" else "Q6_K"


def _attn_v_type(st: _State, new_type: str) -> str:
    f, gqa = st.ftype, st.shape.n_gqa
    if f == "Q2_K":
        new_type = "Q4_K" if gqa >= 4 else "Q3_K"
    elif f == "Q3_K_M":
        new_type = "Q5_K" if st.i_attention_wv < 2 else "Q4_K"
    elif f == "Q3_K_L":
        new_type = "Q5_K"
    elif f in ("Q4_K_M", "Q5_K_M") and use_more_bits(st.i_attention_wv, st.n_attention_wv):
        new_type = "Q6_K"
    elif f == "Q4_K_S" and st.i_attention_wv < 4:
        new_type = "Q5_K"
    if st.shape.is_70b and new_type in ("Q3_K", "Q4_K"):
        new_type = "Q5_K"
    if st.shape.n_expert == 8:
        new_type = "Q8_0"
    st.i_attention_wv += 1
    return new_type


def _ffn_down_type(st: _State, new_type: str) -> str:
    f, falcon = st.ftype, st.shape.arch == "falcon"
    i, n = st.i_ffn_down, st.shape.n_layer
    if st.shape.n_expert > 1:  # experts are not consecutive: take the layer from the name
        m = _LAYER.match(st.current)
        if m is None or not 0 <= int(m.group(1)) < n:
            raise UnsupportedError(f"cannot tell the layer of tensor {st.current!r}")
        i = int(m.group(1))
    if f == "Q2_K":
        new_type = "Q3_K"
    elif f == "Q3_K_M":
        if i < n // 16:
            new_type = "Q5_K"
        elif not falcon or use_more_bits(i, n):
            new_type = "Q4_K"
        else:
            new_type = "Q3_K"
    elif f == "Q3_K_L":
        new_type = "Q4_K" if falcon else "Q5_K"
    elif f == "Q4_K_M":
        if falcon:
            new_type = "Q6_K" if i < n // 16 else "Q5_K" if use_more_bits(i, n) else "Q4_K"
        elif use_more_bits(i, n):
            new_type = "Q6_K"
    elif f == "Q5_K_M" and use_more_bits(i, n):
        new_type = "Q6_K"
    elif f == "Q4_K_S" and not falcon and i < n // 8:
        new_type = "Q5_K"
    st.i_ffn_down += 1
    return new_type


def _attn_output_type(st: _State, new_type: str) -> str:
    f = st.ftype
    if st.shape.arch == "falcon":
        return "Q4_K" if f == "Q3_K_L" else new_type
    if st.shape.n_expert == 8:
        return "Q5_K" if f in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M") else new_type
    return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(f, new_type)


def _mix_type(st: _State, entry: TensorEntry, cat: str, new_type: str) -> str:
    """llama_tensor_get_type_impl for the file types of FILE_TYPES."""
    if cat == "output" or (st.has_tied_embeddings and cat == "token_embd"):
        return _output_type(st, entry, new_type)
    if cat == "token_embd":
        return st.opts.token_embedding_type or new_type
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        return _attn_v_type(st, new_type)
    if cat == "attn_k":
        return "Q8_0" if st.shape.n_expert == 8 else new_type
    if cat == "ffn_down":
        return _ffn_down_type(st, new_type)
    if cat == "attn_output":
        return _attn_output_type(st, new_type)
    # attn_qkv is handled with attn_v above (category_is_attn_v), as in llama.cpp
    return new_type


def plan_types(
    tensors: list[TensorEntry], ftype: str, shape: ModelShape, opts: MixOptions | None = None
) -> dict[str, str]:
    """The output type of every tensor (name -> GGML type name) for the file type `ftype`."""
    if ftype not in FILE_TYPES:
        raise UnsupportedError(
            f"unknown quantization type {ftype!r}; known: {', '.join(FILE_TYPES)}"
        )
    opts = opts or MixOptions()
    default = FILE_TYPES[ftype][1]
    cats = {e.name: category(e.name) for e in tensors}
    st = _State(
        shape, ftype, opts,
        has_tied_embeddings="output" not in cats.values(),
        n_attention_wv=sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats.values()),
    )  # fmt: skip
    out: dict[str, str] = {}
    for e in sorted(tensors, key=lambda e: layer_sort_key(e.name)):
        out[e.name] = _tensor_type(st, e, cats[e.name], default)
    return out


def _tensor_type(st: _State, e: TensorEntry, cat: str, default: str) -> str:
    """llama_tensor_get_type: overrides first, then the mix, then the shape fallback."""
    opts = st.opts
    if not allows_quantization(e, opts):
        return e.ggml_type
    if opts.token_embedding_type is not None and cat == "token_embd":
        return opts.token_embedding_type
    if opts.output_tensor_type is not None and cat == "output":
        return opts.output_tensor_type
    if default not in QUANTIZED:
        return default
    st.current = e.name
    for pattern, t in opts.tensor_types:
        if re.search(pattern, e.name):
            return fallback(e, t)
    new_type = default if opts.pure else _mix_type(st, e, cat, default)
    return fallback(e, new_type)
