"""The MambaMLP block: pre-norm Mamba token mixer, then a pre-norm SwiGLU channel mixer."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor

from .mamba import Mamba, TokenLayout

__all__ = ["SwiGLU", "MambaMLPBlock", "swiglu_hidden_dim"]


def swiglu_hidden_dim(dim: int) -> int:
    """Hidden width of ARM's SwiGLU: dim * 4 * 2 // 3 (2048 for 768, 2730 for 1024, 4096 for 1536)."""
    return dim * 4 * 2 // 3


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x), biases on (names as the reference: w1, w2, w3)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or swiglu_hidden_dim(dim)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


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
