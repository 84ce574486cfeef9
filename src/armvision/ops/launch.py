"""Launch configuration of the Triton kernels, set for a block of code, never process-wide.

The scan's defaults were chosen with benchmarks/scan.py on an H100 (the backward's two channels per thread with
carried decays by benchmarks/compare.py on an H100, 2026-12-07: ARM-B pretraining 74.4 against 76.3 ms per
step); the conv's with ``benchmarks/conv.py --sweep`` on an H200 (2026-12-01: the backward's (256, 256, 2) was
best or tied at three of its four ARM shapes, 0.152 vs 0.167 ms at 256 x 144 x 1536; the forward's (64, 128, 1)
within 3% of the best at all four; benchmarks/results/2026-12-01_h200/conv_sweep.json). A ``with``
block changes them for the calls made inside it (scopes nest; the innermost wins) and the defaults are
back when it ends::

    with ops.scan_config(states="save"):      # keep the scan's chunk states from forward to backward
        loss = model(images); loss.backward()

Scan keys: ``BT`` chunk length (shared by the forward and the backward); ``fwd``, ``bwd``:
(BE channel block, num_warps, num_stages) of each kernel; ``states_block``: the same for the backward's
re-run of the forward that rebuilds the chunk states (None, the default: ``fwd``'s); ``states``: "recompute"
(default: the backward re-runs the forward scan to rebuild the chunk states, so only one call's states exist at
a time) or "save" (the forward keeps them: no recompute, but every layer's states stay alive until
its backward); ``seg``: chunks per saved state (1: every chunk's entering state is kept or
recomputed; k > 1: only every k-th, the backward rebuilds the others per segment -- less memory and traffic,
same values; with two channels per thread and k = 2 the odd chunks' states are rebuilt in registers, otherwise
through a per-program scratch); ``bwd_cpt``: channels per thread in the backward kernel (2, the default since
2026-12-07: half the cross-lane sums, docs/kernels.md; it runs where seg is 1 or 2 and the bwd BE even, elsewhere
the one-channel kernel with recomputed decays; 1: one channel per thread, the default before); ``bwd_decay``: how the
backward gets the next step's decay dA_{t+1} of its adjoint: "carry" (the default: this chunk's own decays one step
on, and the next chunk's first carried over from the previous iteration) or "recompute" (an exp2 per state element
more, from a second read of the next steps' delta; the default before; same values); ``bwd_maxnreg``: a cap on the
backward kernel's registers per thread (None: ``scan_triton.default_bwd_maxnreg``, for each kernel and decay choice
the cap ptxas fits without spilling); ``dbc_group``: how many of the backward's channel blocks add their dB and dC
partial sums into one shared (b, t, N) fp32 block with atomic adds (4, the default since 2026-12-07: a quarter of
the partial-sum traffic, but the order of the additions is no longer fixed, so dB and dC may differ from run to run
in their last bits, as with mamba-ssm's CUDA kernel; 1: every block stores its own and the sum over blocks is a
separate reduction, deterministic, and what runs while ``torch.use_deterministic_algorithms(True)`` is on; two
channels per thread only, docs/kernels.md); ``recurrence``: how a chunk's recurrences are solved in registers:
"scan" (the default: ``tl.associative_scan`` over (decay, input) pairs, then the entering state added) or "step"
(one multiply-add per step and element: the forward kernel and the states' recomputation step through the chunk's
states, the two-channel backward its adjoint; fewer instructions by ptxas's count, the same math rounded in another
order, docs/kernels.md). Conv keys:
``fwd``, ``bwd``: (BT, BE, num_warps) of each kernel, where one program walks a time chunk of at most BT steps
(t is cut into equal chunks) for BE channels of one batch element; each chunk re-reads a 3-step halo, and in the
backward writes one (1 + width, e) fp32 block of dw/db partial sums.

Both ops also take ``sums``: where the backward's partial sums (the scan's dA, dB, dC, dD, d(delta_bias); the
conv's dw, db) are added up: ``"graph"`` (default) in the autograd formula, as torch ops that ``torch.compile``
traces, so inductor fuses them with their casts and their consumers; ``"op"`` inside the custom op, as separate
kernels after the backward kernel (the behaviour before 2026-12-06). Eager calls add them up in the same torch
ops either way.

The kernels' entry points read the active scope once per call and hand the values to the launchers
and to the torch.library custom ops as arguments, so a ``torch.compile`` trace records them in its
graph (a scope active while tracing is baked into that compiled graph).

For A/B measurements through the command line, the environment variables ``ARMVISION_SCAN_CONFIG`` and
``ARMVISION_CONV_CONFIG`` (JSON objects, e.g. ``{"sums": "op"}``) replace defaults; they are read once, at the
first use of the defaults (or by :func:`check_environment`, which the ``armvision`` command calls before its work),
and a bad value is a one-line :class:`~armvision.errors.ConfigError` naming the variable and the key.
``ARMVISION_IN_PROJ`` and ``ARMVISION_SWIGLU`` ("split", the default, or "fused") choose how the layers form their
input products, ``ARMVISION_SWIGLU_GATE`` ("graph", the default, or "kernel": the gate's backward with its biases'
gradients in one kernel, :mod:`armvision.ops.swiglu`) how the SwiGLU's backward runs (:func:`layer_switch`);
any other value is such an error too.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from ..configtree import env_json_object
from ..errors import ConfigError

__all__ = ["scan_config", "conv_config", "current_scan_config", "current_conv_config", "check_environment",
           "layer_switch"]

# the built-in defaults; the environment's replacements are applied on first use (_defaults)
SCAN_DEFAULTS: dict[str, Any] = {"BT": 2, "fwd": (32, 1, 1), "bwd": (16, 1, 1), "states": "recompute", "seg": 1,
                                 "sums": "graph", "states_block": None, "bwd_cpt": 2,
                                 "bwd_maxnreg": None, "bwd_decay": "carry", "dbc_group": 4, "recurrence": "scan"}
CONV_DEFAULTS: dict[str, Any] = {"fwd": (64, 128, 1), "bwd": (256, 256, 2), "sums": "graph"}

# the active scopes, innermost last; empty outside every ``with`` block
_SCAN_SCOPES: list[dict[str, Any]] = []
_CONV_SCOPES: list[dict[str, Any]] = []


def current_scan_config() -> dict[str, Any]:
    """The scan's launch parameters in effect here (a copy)."""
    return dict(_SCAN_SCOPES[-1] if _SCAN_SCOPES else _defaults("scan"))


def current_conv_config() -> dict[str, Any]:
    """The causal conv's launch parameters in effect here (a copy)."""
    return dict(_CONV_SCOPES[-1] if _CONV_SCOPES else _defaults("conv"))


def _checked(current: dict[str, Any], updates: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = set(updates) - set(current)
    if unknown:
        raise KeyError(f"unknown {what} launch parameters {sorted(unknown)}; known: {sorted(current)}")
    out = dict(current)
    for key, value in updates.items():
        if key == "states":
            if value not in ("save", "recompute"):
                raise ValueError(f"states must be 'save' or 'recompute', got {value!r}")
        elif key == "bwd_decay":
            if value not in ("recompute", "carry"):
                raise ValueError(f"bwd_decay must be 'recompute' or 'carry', got {value!r}")
        elif key == "recurrence":
            if value not in ("scan", "step"):
                raise ValueError(f"recurrence must be 'scan' or 'step', got {value!r}")
        elif key == "sums":
            if value not in ("graph", "op"):
                raise ValueError(f"sums must be 'graph' or 'op', got {value!r}")
        elif key == "bwd_cpt":
            if value not in (1, 2) or isinstance(value, bool):
                raise ValueError(f"bwd_cpt (channels per thread in the backward) must be 1 or 2, got {value!r}")
        elif key == "bwd_maxnreg":
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 24 <= value <= 255):
                raise ValueError(f"bwd_maxnreg must be None or registers per thread in 24..255, got {value!r}")
        elif key == "states_block" and value is None:
            pass
        elif key == "states_block":
            value = tuple(value)
            if len(value) != 3 or not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(f"states_block must be None or 3 positive integers, got {value!r}")
        elif key in ("BT", "seg", "dbc_group"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
            if key == "BT" and value & (value - 1):
                raise ValueError(f"BT (the chunk length, a tile axis) must be a power of two, got {value!r}")
        else:
            value = tuple(value)
            if len(value) != len(current[key]) or not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(f"{key} must be {len(current[key])} positive integers, got {value!r}")
        out[key] = value
    return out


def _scope(stack: list[dict[str, Any]], cfg: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Push ``cfg`` for the length of a ``with`` block (the body of scan_config / conv_config)."""
    stack.append(cfg)
    try:
        yield dict(cfg)
    finally:
        stack.pop()


@contextlib.contextmanager
def scan_config(**updates) -> Iterator[dict[str, Any]]:
    """Scan launch parameters for the calls inside the ``with`` block (keys: see the module docstring);
    yields the resulting configuration."""
    yield from _scope(_SCAN_SCOPES, _checked(current_scan_config(), updates, "scan"))


@contextlib.contextmanager
def conv_config(**updates) -> Iterator[dict[str, Any]]:
    """Causal-conv launch parameters (``fwd``/``bwd`` = (BT, BE, num_warps), see the module docstring)
    inside the ``with`` block."""
    yield from _scope(_CONV_SCOPES, _checked(current_conv_config(), updates, "conv"))


def _from_environment(defaults: dict[str, Any], variable: str, what: str) -> dict[str, Any]:
    """``defaults`` updated from the JSON object in environment variable ``variable`` (unset or empty: unchanged);
    a bad key or value is a :class:`ConfigError` naming the variable."""
    updates = env_json_object(variable, f"{what} launch parameters")
    if updates is None:
        return defaults
    try:
        return _checked(defaults, updates, what)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{variable}: {e.args[0] if e.args else e}") from None


_ENVIRONMENT = {"scan": (SCAN_DEFAULTS, "ARMVISION_SCAN_CONFIG"), "conv": (CONV_DEFAULTS, "ARMVISION_CONV_CONFIG")}
_DEFAULTS: dict[str, dict[str, Any]] = {}  # "scan" / "conv": the defaults in effect, read once


def _defaults(what: str) -> dict[str, Any]:
    if what not in _DEFAULTS:
        builtin, variable = _ENVIRONMENT[what]
        _DEFAULTS[what] = _from_environment(builtin, variable, what)
    return _DEFAULTS[what]


def check_environment() -> None:
    """Read ``ARMVISION_SCAN_CONFIG``, ``ARMVISION_CONV_CONFIG`` and the layer switches now: a bad value is a
    one-line :class:`ConfigError` here rather than at the first kernel launch or model build."""
    _defaults("scan")
    _defaults("conv")
    for variable in _LAYER_SWITCHES:
        layer_switch(variable)


# A/B switches of the layers' input products (Mamba's in_proj, the SwiGLU's w1/w2): the first choice is the default
_LAYER_SWITCHES = {"ARMVISION_IN_PROJ": ("split", "fused"), "ARMVISION_SWIGLU": ("split", "fused"),
                   "ARMVISION_SWIGLU_GATE": ("graph", "kernel")}


def layer_switch(variable: str) -> str:
    """The value of layer switch ``variable`` in the environment (unset or empty: its default, the first of its
    choices); a value outside its choices is a :class:`ConfigError` naming the variable and the choices."""
    choices = _LAYER_SWITCHES[variable]
    value = os.environ.get(variable, "").strip() or choices[0]
    if value not in choices:
        raise ConfigError(f"{variable}={value!r}: expected one of {', '.join(map(repr, choices))} (or unset)")
    return value
