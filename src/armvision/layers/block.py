"""The encoder blocks: ARM's MambaMLP block (a pre-norm Mamba token mixer, then a pre-norm SwiGLU channel
mixer) and Vim's block (an RMS-normed Mamba token mixer with its residual in float32, no channel mixer).

Both take ``(x, layout)`` and return the residual stream after the block, so a model builds either from
:data:`ENCODER_BLOCKS` by name.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor

from ..ops.launch import layer_switch
from ..ops.swiglu import swiglu_gate
from .mamba import Mamba, TokenLayout

__all__ = ["SwiGLU", "MambaMLPBlock", "VimBlock", "ENCODER_BLOCKS", "DEFAULT_EXPAND", "swiglu_hidden_dim"]


def swiglu_hidden_dim(dim: int) -> int:
    """Hidden width of ARM's SwiGLU: dim * 4 * 2 // 3 (2048 for 768, 2730 for 1024, 4096 for 1536)."""
    return dim * 4 * 2 // 3


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x), biases on (names as the reference: w1, w2, w3).

    ``fused`` (attribute; default off, ``ARMVISION_SWIGLU=fused`` in the environment for A/B runs): w1 x and
    w2 x as one matrix product with the two weights stacked, split into views. Same parameters, same values up
    to the products' rounding.

    ``gate_kernel`` (attribute; default off, ``ARMVISION_SWIGLU_GATE=kernel`` for A/B runs): the gate's backward
    forms the gradients of w1 x + b1 and w2 x + b2 and the biases' gradients (their column sums) in one kernel
    (:func:`armvision.ops.swiglu.swiglu_gate`) instead of summing the two gradients again in kernels of their
    own. The products keep their biases (detached: the gate returns their gradients), so the values are the same.
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or swiglu_hidden_dim(dim)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)
        self.fused = layer_switch("ARMVISION_SWIGLU") == "fused"
        self.gate_kernel = layer_switch("ARMVISION_SWIGLU_GATE") == "kernel"

    def forward(self, x: Tensor) -> Tensor:
        if not (self.fused or self.gate_kernel):
            return self.w3(F.silu(self.w1(x)) * self.w2(x))
        b1, b2 = self.w1.bias, self.w2.bias
        if self.gate_kernel:  # the biases' gradients come from the gate's backward kernel
            b1, b2 = (b if b is None else b.detach() for b in (b1, b2))
        if self.fused:
            w = torch.cat([self.w1.weight, self.w2.weight])
            a, g = F.linear(x, w, None if b1 is None else torch.cat([b1, b2])).chunk(2, dim=-1)
        else:
            a, g = F.linear(x, self.w1.weight, b1), F.linear(x, self.w2.weight, b2)
        if self.gate_kernel:
            return self.w3(swiglu_gate(a, g, self.w1.bias, self.w2.bias))
        return self.w3(F.silu(a) * g)


class MambaMLPBlock(nn.Module):
    """x = x + drop_path(Mamba(LN1(x))); x = x + drop_path(SwiGLU(LN2(x))).

    Args:
        dim: width.
        directions: 1 (pretraining, causal) or 4 (fine-tuning).
        drop_path: stochastic depth rate of this block.
        mamba_kwargs: passed to :class:`~armvision.layers.mamba.Mamba` (d_state, backend, ...).
    """

    def __init__(self, dim: int, directions: int = 1, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 **mamba_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = Mamba(dim, directions=directions, **mamba_kwargs)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, layout: TokenLayout | None = None) -> Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x), layout))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VimBlock(nn.Module):
    """Vim's block (hustvl/Vim ``Block`` with ``rms_norm``, ``residual_in_fp32``, no MLP):
    x = x + drop_path(Mamba(RMSNorm(x))), the residual stream x kept in float32 (or wider).

    The reference writes the same block as add -> norm -> mix, handing (mixer output, residual) to the next
    block, which adds them before its norm; the final norm adds the last mixer output. Each sum is the same
    single addition here, so the outputs are the same; written pre-norm, the block has the interface of
    :class:`MambaMLPBlock`. The reference's drop-path modules sit one block later (block i drops block
    i - 1's mixer output, the final norm the last one's at the full rate): the rate that applies to block
    i's own output is ``drop_path`` here.

    Args:
        dim: width.
        directions: 1 (causal: ARM pretraining of a Vim encoder), 2 (Vim: forward and backward) or 4.
        drop_path: stochastic depth rate of this block's mixer output.
        norm_eps: RMSNorm epsilon (1e-5, as Vim).
        expand: inner width of the mixer, expand * dim (Vim: 2).
        mamba_kwargs: passed to :class:`~armvision.layers.mamba.Mamba` (d_state, backend, ...).
    """

    def __init__(self, dim: int, directions: int = 2, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 expand: int = 2, **mamba_kwargs):
        super().__init__()
        self.mixer = Mamba(dim, expand=expand, directions=directions, **mamba_kwargs)
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, layout: TokenLayout | None = None) -> Tensor:
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # the reference's residual_in_fp32
        return x + self.drop_path(self.mixer(self.norm(x), layout))


# encoder block families by name (a model's ``block`` argument) and their mixer's default expansion
ENCODER_BLOCKS: dict[str, type[nn.Module]] = {"mambamlp": MambaMLPBlock, "vim": VimBlock}
DEFAULT_EXPAND: dict[str, int] = {"mambamlp": 1, "vim": 2}
