"""The Mamba (Mamba-1) token mixer, in one direction (pretraining), two (Vim) or four (ARM fine-tuning).

Parameter names follow the ARM reference code, so official checkpoints map onto this module by
name: ``in_proj``, ``out_proj`` are shared; each direction has its own causal ``conv1d``,
``x_proj``, ``dt_proj``, ``A_log`` and ``D``, with the reference's suffixes::

    direction          suffix    sequence it scans
    forward            ""        tokens in row-major order (class token where the model put it)
    backward           "_b"      the same sequence reversed
    column             "_c"      column-major order (class token out, grid transposed, put back
                                 at the same index), forward
    column_backward    "_c_b"    the column-major sequence reversed

Every direction's output is mapped back to row-major order; the mixer returns
``out_proj(mean of the directions)``. Two directions are the first two (forward and backward over the
sequence as given: Vim's "bimamba v2" with its divide-out by 2); they need no token layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..ops.launch import layer_switch

__all__ = ["Mamba", "TokenLayout", "DIRECTIONS", "direction_index"]

# (name, parameter suffix); the order is the reference's
DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("forward", ""),
    ("backward", "_b"),
    ("column", "_c"),
    ("column_backward", "_c_b"),
)


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of a sequence sit: a (rows, cols) patch grid in row-major order, with one
    class token inserted at ``cls_index`` (``None``: no class token)."""

    grid: tuple[int, int]
    cls_index: int | None = None

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + (self.cls_index is not None)


@lru_cache(maxsize=256)
def _direction_sequence(layout: TokenLayout, direction: str) -> tuple[int, ...]:
    rows, cols = layout.grid
    n = layout.num_tokens
    if direction in ("forward", "backward"):
        seq = list(range(n))
    elif direction in ("column", "column_backward"):
        # patch p (row-major) sits at sequence position p, or p + 1 after the class token
        c = layout.cls_index

        def pos(p: int) -> int:
            return p if c is None or p < c else p + 1

        seq = [pos(r * cols + j) for j in range(cols) for r in range(rows)]
        if c is not None:
            seq.insert(c, c)
    else:
        raise ValueError(f"unknown direction {direction!r}; choose from {[d for d, _ in DIRECTIONS]}")
    if direction.endswith("backward"):
        seq.reverse()
    return tuple(seq)


@lru_cache(maxsize=256)
def _direction_index_cached(layout: TokenLayout, direction: str, device: torch.device) -> tuple[Tensor, Tensor]:
    # made as ordinary tensors even when the first call comes under torch.inference_mode() (feature
    # extraction): a cached inference tensor would break every later call that autograd records
    with torch.inference_mode(False):
        index = torch.tensor(_direction_sequence(layout, direction), dtype=torch.long, device=device)
        return index, torch.argsort(index)


def direction_index(layout: TokenLayout, direction: str, device=None) -> tuple[Tensor, Tensor]:
    """Index map of a direction and its inverse, as (t,) long tensors on ``device``.

    The direction scans ``x[:, index]`` for row-major tokens x; ``out[:, inverse]`` puts its
    outputs back in row-major order.
    """
    device = torch.device(device or "cpu")
    if torch.compiler.is_compiling():  # traced: the maps become constants of the graph, no cache needed
        index = torch.tensor(_direction_sequence.__wrapped__(layout, direction), dtype=torch.long, device=device)
        return index, torch.argsort(index)
    return _direction_index_cached(layout, direction, device)


class Mamba(nn.Module):
    """Mamba-1 mixer: (b, t, dim) -> (b, t, dim).

    Args:
        dim: model width.
        d_state: state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: inner width E = expand * dim (ARM uses 1, Vim 2).
        dt_rank: rank of the dt projection; "auto" is ceil(dim / 16).
        directions: 1 (causal, pretraining), 2 (forward and backward, Vim) or 4 (ARM fine-tuning; needs a
            ``TokenLayout``).
        backend: ops backend for the scan and the convolution (see :mod:`armvision.ops`).

    ``in_proj_split`` (attribute; default True, or ``ARMVISION_IN_PROJ=fused`` in the environment for A/B runs):
    x and z come from two matrix products on the halves of ``in_proj.weight`` instead of one product split into
    views, so the backward adds two products for the input's gradient instead of first concatenating dx and dz
    into one (b, t, 2e) tensor. Same parameters, same values up to the products' rounding.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 1,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        directions: int = 1,
        backend: str = "auto",
    ):
        super().__init__()
        if directions not in (1, 2, 4):
            raise ValueError(f"a Mamba mixer scans in 1, 2 or 4 directions, got directions={directions}")
        ops.check_backend(backend)
        self.dim = dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.num_directions = directions
        self.backend = backend
        self.in_proj_split = layer_switch("ARMVISION_IN_PROJ") == "split"
        e = self.d_inner
        self.in_proj = nn.Linear(dim, 2 * e, bias=False)
        for _, s in DIRECTIONS[:directions]:
            self.add_module("conv1d" + s, nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1, bias=True))
            self.add_module("x_proj" + s, nn.Linear(e, self.dt_rank + 2 * d_state, bias=False))
            self.add_module("dt_proj" + s, nn.Linear(self.dt_rank, e, bias=True))
            self.register_parameter(f"A{s}_log", nn.Parameter(torch.empty(e, d_state)))
            self.register_parameter("D" + s, nn.Parameter(torch.empty(e)))
        self.out_proj = nn.Linear(e, dim, bias=False)
        self.reset_parameters()

    # -- initialisation ------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Mamba's initialisation, for every direction (see docs/method.md).

        out_proj keeps PyTorch's default here; the model rescales it by 1/sqrt(depth).
        """
        for lin in (self.in_proj, self.out_proj):
            lin.reset_parameters()
        for _, s in DIRECTIONS[: self.num_directions]:
            getattr(self, "conv1d" + s).reset_parameters()
            getattr(self, "x_proj" + s).reset_parameters()
            self._init_dt_proj(getattr(self, "dt_proj" + s))
            with torch.no_grad():
                A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.in_proj.weight.device)
                getattr(self, f"A{s}_log").copy_(torch.log(A).expand(self.d_inner, -1))
                getattr(self, "D" + s).fill_(1.0)
            getattr(self, f"A{s}_log")._no_weight_decay = True
            getattr(self, "D" + s)._no_weight_decay = True

    def _init_dt_proj(self, dt_proj: nn.Linear) -> None:
        std = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        # bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], so softplus(bias) = dt
        dev = dt_proj.bias.device
        dt = torch.exp(torch.rand(self.d_inner, device=dev) * (math.log(self.dt_max) - math.log(self.dt_min))
                       + math.log(self.dt_min)).clamp(min=self.dt_init_floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True

    # -- forward -------------------------------------------------------------------------------
    def direction_params(self, index: int) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, Tensor, Tensor]:
        """(conv1d, x_proj, dt_proj, A_log, D) of direction ``index`` (0 .. directions - 1, in DIRECTIONS order)."""
        s = DIRECTIONS[index][1]
        return (getattr(self, "conv1d" + s), getattr(self, "x_proj" + s), getattr(self, "dt_proj" + s),
                getattr(self, f"A{s}_log"), getattr(self, "D" + s))

    def scan_direction(self, x: Tensor, z: Tensor, direction: int, order: Tensor | None = None) -> Tensor:
        """Conv, projections and selective scan of one direction over row-major (b, t, e) x, z.

        ``order`` (t,) is the direction's token order (None: as given); the conv and the scan run
        along it and the gated scan output (b, t, e) comes back in row-major order.
        """
        conv1d, x_proj, dt_proj, A_log, D = self.direction_params(direction)
        x = ops.causal_conv1d(x, conv1d.weight, conv1d.bias, activation="silu", index=order, backend=self.backend)
        x_dbl = x_proj(x)  # (b, t, dt_rank + 2N); position-wise, so the token order does not matter
        dt_low, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt_low, dt_proj.weight)  # bias goes into the scan, in fp32
        # A, D and the dt bias enter the scan in float32, or wider: a float64 model computes in float64
        wide = torch.promote_types(A_log.dtype, torch.float32)
        A = -torch.exp(A_log.to(wide))
        return ops.selective_scan(x, delta, A, B, C, D.to(wide), z, dt_proj.bias.to(wide), delta_softplus=True,
                                  index=order, backend=self.backend)

    def forward_directions(self, hidden: Tensor, layout: TokenLayout | None = None) -> list[Tensor]:
        """Each direction's gated scan output, in row-major token order: list of (b, t, e)."""
        if self.in_proj_split:
            w, bias = self.in_proj.weight, self.in_proj.bias
            e = self.d_inner
            x = F.linear(hidden, w[:e], None if bias is None else bias[:e])
            z = F.linear(hidden, w[e:], None if bias is None else bias[e:])
        else:
            x, z = self.in_proj(hidden).chunk(2, dim=-1)
        if self.num_directions == 1:
            return [self.scan_direction(x, z, 0)]
        if self.num_directions == 2:  # forward and backward over the sequence as given: no layout needed
            backward = direction_index(TokenLayout((1, hidden.shape[1])), "backward", hidden.device)[0]
            return [self.scan_direction(x, z, 0), self.scan_direction(x, z, 1, backward)]
        if layout is None:
            raise ValueError("a four-direction Mamba mixer needs the token layout (grid and class token index)")
        if layout.num_tokens != hidden.shape[1]:
            raise ValueError(f"token layout {layout} has {layout.num_tokens} tokens, the input {hidden.shape[1]}")
        outs = []
        for i, (name, _) in enumerate(DIRECTIONS):
            order = None if name == "forward" else direction_index(layout, name, hidden.device)[0]
            outs.append(self.scan_direction(x, z, i, order))
        return outs

    def forward(self, hidden: Tensor, layout: TokenLayout | None = None) -> Tensor:
        outs = self.forward_directions(hidden, layout)
        y = outs[0] if len(outs) == 1 else sum(outs) / len(outs)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, directions={self.num_directions}, backend={self.backend!r}")
