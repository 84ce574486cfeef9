"""Fixed 2-D sine-cosine position embeddings (MAE's formula) and position-embedding resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sincos_pos_embed_2d", "resize_pos_embed", "insert_token_slot", "resize_classifier_pos_embed"]


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """(m,) positions -> (m, dim): sin of pos * omega_k, then cos, omega_k = 10000^(-2k/dim)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed position embedding of a (rows, cols) grid, row-major: (rows * cols, dim), float32.

    As MAE (and the ARM reference) compute it: the first half of the channels encodes the column
    index, the second half the row index, each as [sin, cos] at geometric frequencies.
    """
    if dim % 4 != 0:
        raise ValueError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = grid
    row = torch.arange(rows).repeat_interleave(cols)  # row index of each token, row-major
    col = torch.arange(cols).repeat(rows)
    emb = torch.cat([_sincos_1d(dim // 2, col), _sincos_1d(dim // 2, row)], dim=1)
    return emb.float()


def resize_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of patch position embeddings (..., old_h * old_w, c) -> (..., new_h * new_w, c)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    lead, (n, c) = pos.shape[:-2], pos.shape[-2:]
    if n != old_grid[0] * old_grid[1]:
        raise ValueError(f"position embedding has {n} tokens, not a {old_grid[0]}x{old_grid[1]} grid")
    x = pos.reshape(-1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(new_grid), mode="bicubic", align_corners=False)
    x = x.permute(0, 2, 3, 1).reshape(*lead, new_grid[0] * new_grid[1], c)
    return x.to(pos.dtype)


def insert_token_slot(pos: Tensor, index: int, value: Tensor | None = None) -> Tensor:
    """Insert one token (zeros unless ``value``) at ``index`` of the token axis of (..., n, c)."""
    slot = torch.zeros_like(pos[..., :1, :]) if value is None else value.expand_as(pos[..., :1, :])
    return torch.cat([pos[..., :index, :], slot, pos[..., index:, :]], dim=-2)


def resize_classifier_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """(1, old patches + 1, c) with the class-token slot in the middle -> the same for ``new_grid``:
    the patch positions resized bicubically, the class-token slot kept and re-inserted in the middle."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    c = (old_grid[0] * old_grid[1]) // 2
    patches = torch.cat([pos[:, :c], pos[:, c + 1:]], dim=1)
    patches = resize_pos_embed(patches, old_grid, new_grid)
    return insert_token_slot(patches, (new_grid[0] * new_grid[1]) // 2, pos[:, c:c + 1])
