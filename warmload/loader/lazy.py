"""Lazy loading (LoadConfig.lazy): the model is ready at once, each module gets its weights the
first time it runs.

Every planned tensor belongs to an owner module: its decoder layer (`model.layers.{i}`) or, for
the others, the module that holds it (`model.embed_tokens`, `model.norm`, `lm_head`). Until
its owner runs, a parameter is a placeholder of the right shape, dtype and device that takes no
memory (one element, expanded with stride 0), so prepare(), new_cache() and shape checks work.
A forward pre-hook on the owner loads its tensors (through the loader's read/assign seams, on
the worker pool of pipeline.py), then removes itself; tied parameters (lm_head ->
embed_tokens) are re-tied when their owner runs. Loading is serialised by a lock, so
concurrent first calls load once. The idea is accelerate's hook-based offloading
(AlignDevicesHook), without its generality.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from warmload.loader.pipeline import load_in_order
from warmload.loader.plan import TensorLoad


def owner_of(target: str) -> str:
    """The module whose first run loads parameter `target`."""
    parts = target.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        return ".".join(parts[:3])
    return target.rpartition(".")[0]


def placeholder(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of `shape` that holds one element (stride 0 everywhere): no memory."""
    return torch.zeros((1,) * len(shape), dtype=dtype, device=device).expand(*shape)


class LazyWeights:
    """Forward pre-hooks that load each owner module's tensors on its first run."""

    def __init__(
        self,
        model: nn.Module,
        loads: Sequence[TensorLoad],
        read: Callable[[TensorLoad], Any],
        assign: Callable[[TensorLoad, Any], None],
        tied: Mapping[str, str],
        dtype: torch.dtype,
        device: torch.device,
        workers: int = 1,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._model, self._tied, self._on_done = model, dict(tied), on_done
        self._read, self._assign, self._workers = read, assign, workers
        self._lock = threading.Lock()
        self._groups: dict[str, list[TensorLoad]] = defaultdict(list)
        for load in loads:
            self._groups[owner_of(load.target)].append(load)
            _set_parameter(model, load.target, placeholder(load.shape, dtype, device))
        self._aliases: dict[str, list[str]] = defaultdict(list)
        for alias in self._tied:
            self._aliases[owner_of(alias)].append(alias)
        self._handles: dict[str, Any] = {}
        owners = [*self._groups, *(o for o in self._aliases if o not in self._groups)]
        for owner in owners:  # file order: load_all() reads forward
            module = model.get_submodule(owner)
            self._handles[owner] = module.register_forward_pre_hook(self._hook(owner))

    def _hook(self, owner: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.materialize(owner)

        return hook

    @property
    def pending(self) -> list[str]:
        """Owner modules whose weights are not loaded yet (sorted)."""
        return sorted(self._handles)

    def materialize(self, owner: str) -> None:
        """Load `owner`'s tensors (and the sources of its tied aliases) if not done yet."""
        with self._lock:
            self._materialize(owner)

    def _materialize(self, owner: str) -> None:
        if owner not in self._handles:
            return  # loaded already; a failed load leaves the hook in place to try again
        for alias in self._aliases.get(owner, ()):
            self._materialize(owner_of(self._tied[alias]))
        group = self._groups.get(owner, ())
        load_in_order(group, lambda t: t.nbytes, self._read, self._assign, self._workers)
        for alias in self._aliases.get(owner, ()):
            _set_parameter(self._model, alias, self._model.get_parameter(self._tied[alias]))
        self._handles.pop(owner).remove()
        if not self._handles and self._on_done is not None:
            self._on_done()

    def load_all(self) -> None:
        """Load everything still pending, in plan (file) order."""
        with self._lock:
            for owner in list(self._handles):
                self._materialize(owner)


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    value = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, False)
    setattr(module, leaf, value)
