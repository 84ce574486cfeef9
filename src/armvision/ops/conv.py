"""Depthwise causal 1-D convolution over the token axis, channels-last, in plain PyTorch.

For every channel e and time t, with a kernel of width k (4 in Mamba)::

    out[t, e] = bias[e] + sum_{j=0}^{k-1} weight[e, j] * x[t - (k - 1) + j, e]    (x[<0] = 0)

optionally followed by SiLU. This is ``nn.Conv1d(e, e, k, groups=e, padding=k-1)`` cut to the
first t outputs, computed without transposing (b, t, e) to (b, e, t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d_ref", "causal_conv1d_torch"]

_ACTIVATIONS = (None, "silu")


def _check(x: Tensor, weight: Tensor, activation: str | None) -> Tensor:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if weight.dim() == 3:  # nn.Conv1d layout (e, 1, k)
        weight = weight[:, 0, :]
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"causal_conv1d: expected x (b, t, e) and weight (e, k) or (e, 1, k), "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    return weight


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                      activation: str | None = None) -> Tensor:
    """Reference: an explicit loop over output time steps. x (b, t, e); weight (e, k) or (e, 1, k)."""
    weight = _check(x, weight, activation)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc, w = x.to(cdt), weight.to(cdt)
    k = w.shape[1]
    outs = []
    for t in range(x.shape[1]):
        acc = torch.zeros_like(xc[:, 0]) if bias is None else bias.to(cdt).expand_as(xc[:, 0])
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                acc = acc + w[:, j] * xc[:, src]
        outs.append(acc)
    out = torch.stack(outs, dim=1)
    if activation == "silu":
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d_torch(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                        activation: str | None = None) -> Tensor:
    """Vectorised causal depthwise conv: k shifted multiply-adds in fp32, result in x's dtype."""
    weight = _check(x, weight, activation)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    k = weight.shape[1]
    t = x.shape[1]
    xp = F.pad(x.to(cdt), (0, 0, k - 1, 0))  # zeros before the first step: (b, t + k - 1, e)
    w = weight.to(cdt)
    out = xp[:, k - 1:] * w[:, k - 1]
    for j in range(k - 1):
        out = torch.addcmul(out, xp[:, j:j + t], w[:, j])
    if bias is not None:
        out = out + bias.to(cdt)
    if activation == "silu":
        out = F.silu(out)
    return out.to(x.dtype)
