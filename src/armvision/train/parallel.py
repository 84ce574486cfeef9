"""How a model is spread over the processes of a run: DDP or FSDP2, and activation checkpointing.

:func:`parallelize` applies the config's choice to a freshly built model, in place, before the
optimizer is built (FSDP2 replaces the parameters by sharded DTensors):

1. ``activation_checkpointing``: each repeated block (the encoder's ``layers``, the pretraining
   decoder's ``dec_block``) is wrapped in torch's ``checkpoint_wrapper`` (non-reentrant
   ``torch.utils.checkpoint``), so its activations are recomputed in the backward pass. The wrapper's
   state-dict hooks keep the parameter names of checkpoints unchanged.
2. ``parallel: fsdp`` (several processes): ``fully_shard`` on every block, then on the root (the patch
   embedding, norms, heads), over a 1-D mesh of all processes; bf16 parameters with fp32 gradient
   reduction when the run computes in bf16 (``fsdp.mixed_precision``), optional ``CPUOffloadPolicy``.
   ``parallel: ddp`` (several processes): ``DistributedDataParallel``. One process: the plain model.

The training loop then only needs :func:`gradient_sync` (accumulation without reducing gradients),
:func:`clip_grad_norm` (a plain tensor whether the gradients are sharded or not) and, around evaluation,
:func:`gathered` (the processes' shares of the validation split differ by up to one batch, and a sharded
forward pass is a collective).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .config import RunConfig
from .distributed import DistInfo
from .evaluate import autocast_for

__all__ = ["Parallel", "parallelize", "repeated_blocks", "apply_activation_checkpointing", "apply_fsdp",
           "gradient_sync", "clip_grad_norm", "gathered", "is_sharded"]

BLOCK_LISTS = ("layers", "dec_block")  # the models' nn.ModuleLists of repeated blocks


@dataclass
class Parallel:
    """The result of :func:`parallelize`: ``model`` (the module whose parameters train and which is
    saved; FSDP-sharded in place when ``kind == "fsdp"``) and ``forward`` (what the loss calls: the
    DDP wrapper, or the model itself)."""

    kind: str  # "single", "ddp" or "fsdp"
    model: nn.Module
    forward: nn.Module
    reshard_after_forward: bool = True

    @property
    def sharded(self) -> bool:
        return self.kind == "fsdp"


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (encoder blocks, then decoder blocks), in order."""
    return [blk for name in BLOCK_LISTS for blk in getattr(model, name, ())]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap each repeated block in ``checkpoint_wrapper`` (in place; state-dict names unchanged)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name in BLOCK_LISTS:
        blocks = getattr(model, name, None)
        if blocks is None:
            continue
        for i, blk in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(blk)


def apply_fsdp(model: nn.Module, device: torch.device, bf16_params: bool, cpu_offload: bool = False,
               reshard_after_forward: bool = True) -> None:
    """``fully_shard`` every repeated block, then the root, over all processes (in place).

    Every process starts from rank 0's weights (broadcast first, as DDP does: the processes seed
    their RNGs differently). Parameters marked ``_no_weight_decay`` keep the mark (FSDP2 replaces the
    Parameter objects).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    no_wd = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw = dict(mesh=mesh)
    if bf16_params:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    for blk in repeated_blocks(model):
        fully_shard(blk, reshard_after_forward=reshard_after_forward, **kw)
    # the root's parameters (patch embedding, norms, enc2dec, prediction head) are small and used again
    # first thing in the backward pass: kept gathered between the two
    fully_shard(model, reshard_after_forward=False, **kw)
    for n, p in model.named_parameters():
        if n in no_wd:
            p._no_weight_decay = True


def parallelize(model: nn.Module, cfg: RunConfig, info: DistInfo) -> Parallel:
    """Apply ``cfg.activation_checkpointing`` and ``cfg.parallel`` to ``model`` (already on its device)."""
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if not info.distributed:
        return Parallel("single", model, model)
    if cfg.parallel == "fsdp":
        bf16 = cfg.fsdp.mixed_precision and not isinstance(autocast_for(info.device, cfg.precision),
                                                            contextlib.nullcontext)
        apply_fsdp(model, info.device, bf16, cfg.fsdp.cpu_offload, cfg.fsdp.reshard_after_forward)
        return Parallel("fsdp", model, model, cfg.fsdp.reshard_after_forward)
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return Parallel("ddp", model, ddp)


def gradient_sync(par: Parallel, sync: bool):
    """Context of one micro-batch's backward pass: gradients are reduced over the processes only when
    ``sync`` (the last micro-batch of an accumulated step); DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync``."""
    if par.kind == "ddp" and not sync:
        return par.forward.no_sync()
    if par.kind == "fsdp":
        par.model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over all processes' shards; the total norm as a plain tensor (). An infinite
    ``max_norm`` (no clipping) only measures the norm: no pass that multiplies every gradient by 1."""
    if math.isinf(max_norm) and hasattr(torch.nn.utils, "get_total_norm"):
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


@contextlib.contextmanager
def gathered(par: Parallel):
    """Every FSDP2 module's parameters all-gathered for the duration (then sharded again): forward passes
    inside issue no collectives, so the processes may run different numbers of them (evaluation). The
    memory of the whole model's parameters, as with DDP. A no-op for unsharded models."""
    if not par.sharded:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in par.model.modules() if isinstance(m, FSDPModule)]
    par.model.set_reshard_after_forward(False)
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
        for m in mods:  # as apply_fsdp set them (the root keeps its parameters between forward and backward)
            m.set_reshard_after_forward(par.reshard_after_forward and m is not par.model, recurse=False)


def is_sharded(model: nn.Module) -> bool:
    """The model's parameters are FSDP2 shards (DTensors)."""
    return any(isinstance(p, DTensor) for p in model.parameters())
