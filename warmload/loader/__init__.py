"""load_model: an opened Checkpoint -> a runnable model and the LoadStats of getting there.

Pipeline (../shared/DESIGN.md): config from metadata -> model built on `meta` -> plan (pure,
raises on a wrong architecture, missing/unexpected/mis-shaped tensors or unsupported types
before any byte is read) -> per tensor, on a pool of workers in file order with bounded bytes in
flight (pipeline.py): source bytes -> transform -> transfer, then assign in order -> prepare
(tie embeddings, rope tables on the device) -> verify (nothing left on meta). With cfg.lazy
(lazy.py) each decoder layer's tensors are read when the layer first runs instead.

On the CPU, the matrices of linear layers and embeddings whose GGML type has a packed kernel
(warmload.quant.matmul) are not converted at all: their modules are swapped for QuantLinear /
QuantEmbedding over the file's own bytes, so an mmap load reads and copies nothing up front.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from warmload.config import LoadConfig
from warmload.errors import CheckpointError, WarmloadError, WeightMismatchError
from warmload.formats.checkpoint import Checkpoint
from warmload.kernels import set_threads as set_kernel_threads
from warmload.loader.finite import check_finite
from warmload.loader.hparams import read_model_config
from warmload.loader.lazy import LazyWeights
from warmload.loader.pipeline import load_in_order
from warmload.loader.plan import LoadPlan, TensorLoad, make_load_plan
from warmload.loader.stats import LoadStats
from warmload.loader.transfer import StagingRing
from warmload.loader.transform import transform_tensor
from warmload.loader.warm import lock, warm_in_background
from warmload.loader.warm import warm as warm_pages
from warmload.models import ARCHITECTURES
from warmload.quant.matmul import QuantEmbedding, QuantLinear, has_kernel, integer_prompt_tokens

log = logging.getLogger(__name__)

ACTIVATION_DTYPE = torch.float32  # of dequantized weights, norms and activations
MAX_WORKERS = 4  # read/transform threads: past 4, memory bandwidth is the limit
# Bytes to convert (tensors not used as mapped) below which a mapped file loads on the caller's
# thread: packed weights are views of the mapping, and a pool only adds hand-offs (measured:
# 15-20 ms of a 45-70 ms load_model for SmolLM2 and Gemma 3 270M).
SERIAL_BELOW_BYTES = 64 << 20


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
        with stats.timed("config"), _bad_hyperparameters(checkpoint):
            arch, config = read_model_config(checkpoint)
        with stats.timed("build"), _bad_hyperparameters(checkpoint):
            model = ARCHITECTURES[arch].build_model(config)
        with stats.timed("plan"):
            plan = plan_for(checkpoint, arch, model, packed=cfg.packed and device.type == "cpu")
        set_kernel_threads(cfg.threads or torch.get_num_threads())
        warm_before(checkpoint, cfg, stats)
        if cfg.check_tensors:
            with stats.timed("check", plan.nbytes):
                rope = [plan.rope_freq_factors] if plan.rope_freq_factors else []
                check_finite(checkpoint, [t.source for t in (*plan.tensors, *rope)])
        if cfg.lazy:
            model.lazy_weights = load_lazily(checkpoint, plan, model, cfg, device, stats)
        elif device.type == "cuda":
            load_streamed(checkpoint, plan, model, device, stats, progress)
        else:
            load_weights(checkpoint, plan, model, cfg, device, stats, progress)
        with stats.timed("prepare"):
            factors = plan.rope_freq_factors
            model.prepare(read_tensor(checkpoint, factors, device, stats) if factors else None)
        with stats.timed("verify"):
            verify_loaded(model, str(checkpoint.path))
        if device.type == "cpu":
            packed_types = {t.ggml_type for t in plan.tensors if t.transform == "pack"}
            in_kernels_below = max(2, integer_prompt_tokens(packed_types))
            one_torch_thread_per_step(
                model, cfg.threads or torch.get_num_threads(), in_kernels_below
            )
        if not cfg.lazy and not cfg.mlock and (cfg.warmup == "none" or cfg.warmup_sync):
            checkpoint.source.release()  # the file's pages/buffer, unless tensors alias them
    stats.wall_seconds = time.perf_counter() - started
    log.info("%s: %s", checkpoint.path, stats.summary())
    if cfg.warmup != "none" and not cfg.warmup_sync:
        warm_in_background(checkpoint, cfg.warmup, lambda s, n: stats.add("warm", s, n))
    return model, stats


def load_weights(
    checkpoint: Checkpoint,
    plan: LoadPlan,
    model: nn.Module,
    cfg: LoadConfig,
    device: torch.device,
    stats: LoadStats,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Every planned tensor: read_tensor on a pool of workers (file order, bounded bytes in
    flight: loader/pipeline.py), assign_parameter in order on this thread."""
    read, assign = read_and_assign(checkpoint, model, device, stats, progress, plan.nbytes)
    load_in_order(plan.tensors, lambda t: t.nbytes, read, assign, workers_for(cfg, plan.tensors))


def workers_for(cfg: LoadConfig, tensors: Sequence[TensorLoad] = ()) -> int:
    """Threads that read and transform `tensors`: one for a mapped file with little to convert,
    else the pool."""
    converted = sum(t.nbytes for t in tensors if t.transform != "pack")
    if tensors and cfg.load_mode == "mmap" and converted < SERIAL_BELOW_BYTES:
        return 1
    return min(MAX_WORKERS, cfg.threads or os.cpu_count() or 1)


def read_and_assign(
    checkpoint: Checkpoint,
    model: nn.Module,
    device: torch.device,
    stats: LoadStats,
    progress: Callable[[int, int], None] | None = None,
    total: int = 0,
) -> tuple[Callable[[TensorLoad], Any], Callable[[TensorLoad, Any], None]]:
    """The seams as pool work: read(load) on any thread (its own LoadStats), assign(load,
    result) on the caller's thread, which merges the stats and reports progress."""
    done = 0

    def read(load: TensorLoad) -> tuple[torch.Tensor, LoadStats]:
        mine = LoadStats()  # per tensor: merged on the assigning thread, no shared counters
        with torch.no_grad():
            return read_tensor(checkpoint, load, device, mine), mine

    def assign(load: TensorLoad, result: tuple[torch.Tensor, LoadStats]) -> None:
        nonlocal done
        tensor, tensor_stats = result
        stats.merge(tensor_stats)
        with stats.timed("assign"):
            assign_parameter(model, load, tensor)
        done += load.nbytes
        if progress is not None:
            progress(done, total)

    return read, assign


def load_streamed(
    checkpoint: Checkpoint,
    plan: LoadPlan,
    model: nn.Module,
    device: torch.device,
    stats: LoadStats,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """CUDA: raw bytes through a ring of pinned buffers on a side stream, transformed
    (dequantized) on the GPU; host memory in use is the ring (transfer.py)."""
    ring = StagingRing(device)
    done = 0
    for load in plan.tensors:
        with stats.timed("source", load.nbytes):
            raw = checkpoint.tensor_bytes(load.source)
        with stats.timed("transfer", load.nbytes):
            on_device = ring.upload(raw)
        ring.ready()  # the transform runs on the current stream, after the copy
        with stats.timed("transform", load.nbytes):
            tensor = transform_tensor(on_device, load, ACTIVATION_DTYPE)
        stats.n_tensors += 1
        stats.source_nbytes += load.nbytes
        stats.param_nbytes += tensor.nbytes
        with stats.timed("assign"):
            assign_parameter(model, load, tensor)
        done += load.nbytes
        if progress is not None:
            progress(done, plan.nbytes)
    ring.synchronize()


def load_lazily(
    checkpoint: Checkpoint,
    plan: LoadPlan,
    model: nn.Module,
    cfg: LoadConfig,
    device: torch.device,
    stats: LoadStats,
) -> LazyWeights:
    """Placeholders now, each decoder layer's weights on its first run (loader/lazy.py). The
    few tensors outside the layers (embeddings, output, final norm) load now: prepare() ties
    the output to the embeddings, and a packed embedding or output replaces its whole module,
    which a hook on that very module could not do before its own forward."""
    read, assign = read_and_assign(checkpoint, model, device, stats)
    layered = [t for t in plan.tensors if is_layer_tensor(t.target)]
    others = [t for t in plan.tensors if not is_layer_tensor(t.target)]
    load_in_order(others, lambda t: t.nbytes, read, assign, workers_for(cfg, others))

    def done() -> None:
        log.info("%s: lazy loading done: %s", checkpoint.path, stats.summary())

    workers = workers_for(cfg, layered)
    return LazyWeights(model, layered, read, assign, {}, ACTIVATION_DTYPE, device, workers, done)


def is_layer_tensor(target: str) -> bool:
    return target.startswith("model.layers.")


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


@contextmanager
def _bad_hyperparameters(checkpoint: Checkpoint) -> Iterator[None]:
    """Config reading and model building are functions of the file's metadata alone: an
    exception there that no validation turned into a typed error yet (a ZeroDivisionError from
    0 heads, a TypeError from a string where a number belongs) is the file's fault, and becomes
    a CheckpointError naming it (the original is chained; --debug shows it)."""
    try:
        yield
    except WarmloadError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise CheckpointError(
            f"{checkpoint.path}: its hyperparameters do not describe a model this architecture "
            f"can build ({type(e).__name__}: {e})"
        ) from e


def check_loadable(checkpoint: Checkpoint) -> LoadPlan:
    """The load's first stages on a header-only checkpoint (config, build on meta, plan): what a
    load would refuse without reading a tensor byte. The quantizer reads its output back with
    it. Any failure is a typed error naming the file."""
    with _bad_hyperparameters(checkpoint):
        arch, config = read_model_config(checkpoint)
        model = ARCHITECTURES[arch].build_model(config)
    return plan_for(checkpoint, arch, model, packed=False)


def plan_for(checkpoint: Checkpoint, arch: str, model: nn.Module, packed: bool) -> LoadPlan:
    """The load plan of `checkpoint` into `model` (built on meta), checked before any read.
    GGUF names go through the architecture's table; SafeTensors (HF) names are ours already.
    With `packed`, weights of linear and embedding layers with a packed kernel stay packed."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    matrices = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Embedding))
    }

    def packable(target: str, ggml_type: str) -> bool:
        return packed and target in matrices and ggml_type != "F32" and has_kernel(ggml_type)

    tied = model.tied_weights()
    tensors, table = checkpoint.tensors, ARCHITECTURES[arch].GGUF_TENSOR_NAMES
    if checkpoint.format == "safetensors":
        table = {name: name for name in expected}
        tensors = {n: t for n, t in tensors.items() if n not in tied and not _ignored(n)}
    n_layers = model.config.num_hidden_layers
    return make_load_plan(checkpoint.path, tensors, table, n_layers, expected, tied, packable)


def _ignored(name: str) -> bool:
    """HF tensors that are not weights: old checkpoints saved rope's inv_freq buffers."""
    return name.endswith("rotary_emb.inv_freq")


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


def one_torch_thread_per_step(model: nn.Module, threads: int, in_kernels_below: int) -> None:
    """Forward passes whose products all run in the packed kernels (fewer than
    `in_kernels_below` tokens: decode steps, and short prompt chunks where the integer prompt
    product covers every weight) run torch's own small ops on one thread; the others on
    `threads`. The kernels keep their own threads; had torch's
    OpenMP team been spinning on the core a kernel thread needs, each would stall (measured:
    SDPA for one token went from 0.05 ms to 5 ms on 2 cores; a 20-token product took 2x)."""

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        tokens = args[0].shape[-1]  # (B, T)
        torch.set_num_threads(1 if tokens < in_kernels_below else threads)

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        torch.set_num_threads(threads)

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after, always_call=True)


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
