"""ARM's decoder: blocks of cross-attention (queries -> encoder memory) and an MLP, no self-attention."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CrossAttention", "Mlp", "DecoderBlock"]


class CrossAttention(nn.Module):
    """Multi-head attention of queries over a memory sequence (names as the reference: q, kv, proj)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, memory: Tensor, mask: Tensor | None = None) -> Tensor:
        """q (b, tq, c), memory (b, tk, c), mask (tq, tk) bool, True where a query may look."""
        b, tq, c = q.shape
        h = self.num_heads
        q = self.q(q).view(b, tq, h, c // h).transpose(1, 2)  # (b, h, tq, d)
        k, v = self.kv(memory).view(b, memory.shape[1], 2, h, c // h).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(b, tq, c))


class Mlp(nn.Module):
    """fc2(gelu(fc1 x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DecoderBlock(nn.Module):
    """q = q + CrossAttn(LN_q(q), LN_kv(memory)); q = q + MLP(LN(q)).

    Names as the reference: attn2, norm2_1 (queries), norm2_2 (memory), norm2, mlp.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm2_1 = nn.LayerNorm(dim)
        self.norm2_2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, memory: Tensor, mask: Tensor | None = None) -> Tensor:
        q = q + self.attn2(self.norm2_1(q), self.norm2_2(memory), mask)
        return q + self.mlp(self.norm2(q))
