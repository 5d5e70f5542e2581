"""load_model: an opened Checkpoint -> a runnable model and the LoadStats of getting there.

Pipeline (../shared/DESIGN.md): config from metadata -> model built on `meta` -> plan (pure,
raises on a wrong architecture, missing/unexpected/mis-shaped tensors or unsupported types
before any byte is read) -> per tensor: source bytes -> transform -> transfer -> assign ->
prepare (tie embeddings, rope tables on the device) -> verify (nothing left on meta).

On the CPU, the matrices of linear layers and embeddings whose GGML type has a packed kernel
(warmload.quant.matmul) are not converted at all: their modules are swapped for QuantLinear /
QuantEmbedding over the file's own bytes, so an mmap load reads and copies nothing up front.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from warmload.config import LoadConfig
from warmload.errors import WeightMismatchError
from warmload.formats.checkpoint import Checkpoint
from warmload.kernels import set_threads as set_kernel_threads
from warmload.loader.hparams import read_model_config
from warmload.loader.plan import LoadPlan, TensorLoad, make_load_plan
from warmload.loader.stats import LoadStats
from warmload.loader.transform import transform_tensor
from warmload.loader.warm import lock, warm_in_background
from warmload.loader.warm import warm as warm_pages
from warmload.models import ARCHITECTURES
from warmload.quant.matmul import PREFILL_TOKENS, QuantEmbedding, QuantLinear, has_kernel

log = logging.getLogger(__name__)

ACTIVATION_DTYPE = torch.float32  # of dequantized weights, norms and activations


def load_model(
    checkpoint: Checkpoint,
    cfg: LoadConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, LoadStats]:
    """Build the checkpoint's model with its weights on cfg.device; see the module docstring.
    `progress(done_bytes, total_bytes)` is called after each tensor."""
    cfg = cfg or LoadConfig()
    stats = LoadStats()
    started = time.perf_counter()
    device = torch.device(cfg.device)
    with torch.no_grad(), gc_paused():
        with stats.timed("config"):
            arch, config = read_model_config(checkpoint)
        with stats.timed("build"):
            model = ARCHITECTURES[arch].build_model(config)
        with stats.timed("plan"):
            plan = plan_for(checkpoint, arch, model, packed=cfg.packed and device.type == "cpu")
        set_kernel_threads(cfg.threads or torch.get_num_threads())
        warm_before(checkpoint, cfg, stats)
        done, total = 0, sum(load.nbytes for load in plan.tensors)
        for load in plan.tensors:
            tensor = read_tensor(checkpoint, load, device, stats)
            with stats.timed("assign"):
                assign_parameter(model, load, tensor)
            done += load.nbytes
            if progress is not None:
                progress(done, total)
        with stats.timed("prepare"):
            factors = plan.rope_freq_factors
            model.prepare(read_tensor(checkpoint, factors, device, stats) if factors else None)
        with stats.timed("verify"):
            verify_loaded(model, str(checkpoint.path))
        if device.type == "cpu":
            one_torch_thread_per_step(model, cfg.threads or torch.get_num_threads())
    stats.wall_seconds = time.perf_counter() - started
    log.info("%s: %s", checkpoint.path, stats.summary())
    if cfg.warmup != "none" and not cfg.warmup_sync:
        warm_in_background(checkpoint, cfg.warmup, lambda s, n: stats.add("warm", s, n))
    return model, stats


def one_torch_thread_per_step(model: nn.Module, threads: int) -> None:
    """Decode-sized forward passes run torch's own (tiny) ops on one thread; prompt-sized ones on
    `threads`. The packed kernels keep their own threads; had torch's OpenMP team been waiting
    for the core a kernel thread holds, each small op would stall (measured: SDPA for one token
    went from 0.05 ms to 5 ms on 2 cores)."""

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        tokens = args[0]
        torch.set_num_threads(1 if tokens.numel() < PREFILL_TOKENS else threads)

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        torch.set_num_threads(threads)

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after, always_call=True)


def warm_before(checkpoint: Checkpoint, cfg: LoadConfig, stats: LoadStats) -> None:
    """mlock and the synchronous warm-up (cfg.warmup_sync), before any tensor is read."""
    if cfg.mlock:
        with stats.timed("mlock"):
            locked = lock(checkpoint)
        stats.stages["mlock"].nbytes += locked
    if cfg.warmup != "none" and cfg.warmup_sync:
        stats.add("warm", *warm_pages(checkpoint, cfg.warmup))


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC during a load: building modules triggers full collections that walk the
    tokenizer's huge metadata lists (measured ~90 ms each); a load makes no garbage cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def plan_for(checkpoint: Checkpoint, arch: str, model: nn.Module, packed: bool) -> LoadPlan:
    """The load plan of `checkpoint` into `model` (built on meta), checked before any read.
    With `packed`, weights of linear and embedding layers with a packed kernel stay packed."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    matrices = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Embedding))
    }

    def packable(target: str, ggml_type: str) -> bool:
        return packed and target in matrices and ggml_type != "F32" and has_kernel(ggml_type)

    return make_load_plan(
        checkpoint.path,
        checkpoint.tensors,
        ARCHITECTURES[arch].GGUF_TENSOR_NAMES,
        model.config.num_hidden_layers,
        expected,
        model.tied_weights(),
        packable,
    )


def read_tensor(
    checkpoint: Checkpoint, load: TensorLoad, device: torch.device, stats: LoadStats
) -> torch.Tensor:
    """One tensor's bytes -> transformed tensor on `device`, timed per stage."""
    with stats.timed("source", load.nbytes):
        raw = checkpoint.tensor_bytes(load.source)
    with stats.timed("transform", load.nbytes):
        tensor = transform_tensor(raw, load, ACTIVATION_DTYPE)
    if tensor.device != device:
        with stats.timed("transfer", tensor.nbytes):
            tensor = tensor.to(device)
    stats.n_tensors += 1
    stats.source_nbytes += load.nbytes
    stats.param_nbytes += tensor.nbytes
    return tensor


def assign_parameter(model: nn.Module, load: TensorLoad, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter load.target by `tensor`, without copying it; a packed
    matrix replaces its whole linear or embedding module by a quantized one."""
    module_name, _, leaf = load.target.rpartition(".")
    module = model.get_submodule(module_name)
    if load.transform == "pack":
        parent_name, _, child = module_name.rpartition(".")
        in_features = load.shape[-1]
        if isinstance(module, nn.Embedding):
            packed = QuantEmbedding(tensor, load.ggml_type, in_features)
        else:
            packed = QuantLinear(tensor, load.ggml_type, in_features)
        setattr(model.get_submodule(parent_name), child, packed)
        return
    setattr(module, leaf, nn.Parameter(tensor, requires_grad=False))


def verify_loaded(model: nn.Module, where: str) -> None:
    """WeightMismatchError naming (sorted) every parameter or buffer still on meta."""
    left: list[Any] = [
        name
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.device.type == "meta"
    ]
    if left:
        raise WeightMismatchError(
            f"{where}: {len(left)} parameter(s) got no weights: {', '.join(sorted(left))}"
        )
