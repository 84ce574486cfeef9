"""torch.compile of the module a training step calls, with one fallback to eager.

``compile: auto`` (the default) compiles on a GPU and runs eager on the CPU; ``true``/``false`` force
it. torch compiles lazily: the forward at the first call, the backward at the first backward, so a
failure shows up inside the first training step, not here. :class:`CompiledModule` runs the first
step(s) under :meth:`CompiledModule.guard`: if compiling fails it logs one warning and every later
call runs the eager module (the failed step is redone eagerly by the caller).

Only the training module is compiled (``dynamic=False``: training batches all have one shape).

``ARMVISION_INDUCTOR`` (environment; a JSON object of inductor options such as ``{"combo_kernels": true}``) adds
options to the mode's own (``torch._inductor.list_mode_options``), for A/B measurements of inductor settings
through the commands; unset, torch.compile gets the mode alone.
The eager module stays the owner of the weights: checkpoints, EMA and evaluation use it, so saved
state dicts have no ``_orig_mod.`` prefixes and load into eager models. Evaluation runs eager (its
last batch is partial, which would cost a second compile).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..configtree import env_json_object
from ..errors import UserError

__all__ = ["compile_enabled", "compile_mode", "CompiledModule"]

_logger = logging.getLogger("armvision.train")
T = TypeVar("T")


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """The ``compile`` config value for ``device``: auto = on for CUDA, off elsewhere."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_mode(setting: str, device: torch.device, world_size: int) -> str:
    """The ``compile_mode`` config value: auto = CUDA graphs (reduce-overhead) for one process on a GPU, else
    torch's default (several processes: DDP's and FSDP's communication hooks are not captured in graphs)."""
    if setting != "auto":
        return setting
    return "reduce-overhead" if device.type == "cuda" and world_size == 1 else "default"


def inductor_options(mode: str, environ: dict | None = None) -> dict[str, Any] | None:
    """The inductor options for ``mode`` plus those of ``ARMVISION_INDUCTOR`` (a JSON object), or None when that
    variable is unset (torch.compile then takes ``mode`` itself). A bad value is a :class:`UserError`."""
    extra = env_json_object("ARMVISION_INDUCTOR", "inductor options", environ)
    if extra is None:
        return None
    from torch._inductor import list_mode_options

    return {**list_mode_options(mode), **extra}


class CompiledModule:
    """``module`` compiled with ``backend`` (when ``enabled``); :attr:`module` is what to call."""

    def __init__(self, module: nn.Module, enabled: bool, backend: str = "inductor", mode: str = "default"):
        self.eager = module
        self.compiled: nn.Module | None = None
        self.verified = False  # a step ran compiled: compiling worked
        self.cudagraphs = mode in ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs
        if enabled:
            _logger.info("torch.compile (%s, mode %s): the first training step compiles the model, which can take "
                         "minutes", backend, mode)
            options = inductor_options(mode) if backend == "inductor" else None
            if options is not None:
                _logger.info("inductor options: %s", options)
                self.cudagraphs = bool(options.get("triton.cudagraphs", False))
            try:
                if options is not None:
                    self.compiled = torch.compile(module, backend=backend, dynamic=False, options=options)
                else:
                    self.compiled = torch.compile(module, backend=backend, dynamic=False,
                                                  mode=None if mode == "default" else mode)
            except Exception as e:  # noqa: BLE001 -- any compiler failure means: run eager
                self._fall_back(e)

    @property
    def module(self) -> nn.Module:
        return self.compiled if self.compiled is not None else self.eager

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def _fall_back(self, error: BaseException) -> None:
        self.compiled = None
        first = (str(error).strip().splitlines() or [""])[0][:300]
        _logger.warning("torch.compile failed (%s: %s); training continues without compiling (slower). Set "
                        "compile: false (--compile false) to skip the attempt", type(error).__name__, first)

    def begin_step(self) -> None:
        """Called at the start of each optimizer step. With CUDA graphs it tells torch that no output of an
        earlier step is used any more, so the graphs replay in the same memory. Not per micro-batch: the
        gradients accumulated over a step's micro-batches stay alive, and each micro-batch's graph keeps them."""
        if self.compiled is not None and self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()

    def guard(self, step: Callable[[], T], reset: Callable[[], None]) -> T:
        """Run ``step`` (a forward and backward through :attr:`module`). Until one compiled step has
        worked, a compiler error (not an armvision user error) switches to eager: ``reset()`` undoes
        what the failed step left (its gradients) and ``step`` runs again, eagerly."""
        if self.compiled is None or self.verified:
            return step()
        try:
            out = step()
        except (UserError, torch.OutOfMemoryError):  # not the compiler's failure
            raise
        except Exception as e:  # noqa: BLE001 -- compile errors have many types (dynamo, inductor, triton)
            self._fall_back(e)
            reset()
            return step()
        self.verified = True
        return out
