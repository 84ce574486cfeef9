"""Functional ops of the Mamba mixer, each with a plain-PyTorch reference, behind a backend switch.

``backend`` names an implementation:

* ``"torch"`` -- vectorised PyTorch (:mod:`armvision.ops.scan`,
  :mod:`armvision.ops.conv`): runs everywhere; the CPU path.
* ``"triton"`` -- armvision's Triton kernels (:mod:`armvision.ops.scan_triton`,
  :mod:`armvision.ops.conv_triton`): CUDA GPUs (and the CPU under ``TRITON_INTERPRET=1``, for tests).
* ``"mamba_ssm"`` -- the official CUDA kernels of the ``mamba-ssm`` (and ``causal-conv1d``) packages,
  when they are installed; never a dependency, there to compare against.
* ``"auto"`` (default) -- the fastest implementation available for the tensors' device: Triton on
  CUDA, torch elsewhere.

Both ops take an optional ``index`` (t,) of token rows: the op then runs along the sequence
``x[:, index]`` (e.g. reversed, or column-major for the fine-tuning directions) and returns its
result in the input's token order, i.e. ``f(x[:, index])[:, argsort(index)]``. The Triton kernels
read and write through the index; the other backends gather and scatter.

The default can be changed globally with :func:`set_backend` or for a block of code with
:func:`use_backend`; a per-call ``backend=`` argument wins over both.

The Triton kernels' launch parameters (chunk length, blocks, whether the scan keeps its chunk
states for the backward) are set for a block of code with :func:`scan_config` / :func:`conv_config`
(:mod:`armvision.ops.launch`); nothing process-wide.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from torch import Tensor

from .conv import causal_conv1d_ref, causal_conv1d_torch
from .launch import conv_config, current_conv_config, current_scan_config, scan_config
from .scan import selective_scan_ref, selective_scan_torch

__all__ = [
    "selective_scan",
    "causal_conv1d",
    "selective_scan_ref",
    "causal_conv1d_ref",
    "selective_scan_torch",
    "causal_conv1d_torch",
    "set_backend",
    "get_backend",
    "use_backend",
    "available_backends",
    "resolve_backend",
    "check_backend",
    "backend_available",
    "register_backend",
    "scan_config",
    "conv_config",
    "current_scan_config",
    "current_conv_config",
]


@dataclass(frozen=True)
class Backend:
    """One implementation of the ops. ``available(device_type)`` says whether it can run there."""

    name: str
    selective_scan: Callable[..., Tensor]
    causal_conv1d: Callable[..., Tensor]
    available: Callable[[str], bool]
    # preference for "auto" on a device type: higher wins among the available ones
    priority: Callable[[str], int]


_BACKENDS: dict[str, Backend] = {}
_default = "auto"


def register_backend(backend: Backend) -> None:
    """Add (or replace) an implementation of the ops under ``backend.name``."""
    _BACKENDS[backend.name] = backend


def _gather(x: Tensor | None, index: Tensor | None) -> Tensor | None:
    return x if x is None or index is None else x.index_select(1, index)


def _scatter(x: Tensor, index: Tensor | None) -> Tensor:
    """Inverse of :func:`_gather` on the token axis."""
    return x if index is None else x.index_select(1, torch.argsort(index))


def _with_index(scan_fn: Callable[..., Tensor], conv_fn: Callable[..., Tensor]):
    """Wrap implementations that have no ``index`` support in a gather before and a scatter after."""

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, index=None):
        if index is not None:
            index = index.to(u.device, torch.long)
        g = [_gather(x, index) for x in (u, delta, B, C, z)]
        return _scatter(scan_fn(g[0], g[1], A, g[2], g[3], D, g[4], delta_bias, delta_softplus), index)

    def conv(x, weight, bias=None, activation=None, index=None):
        if index is not None:
            index = index.to(x.device, torch.long)
        return _scatter(conv_fn(_gather(x, index), weight, bias, activation), index)

    return scan, conv


register_backend(Backend("torch", *_with_index(selective_scan_torch, causal_conv1d_torch),
                         available=lambda device_type: True, priority=lambda device_type: 0))


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# looked up once: torch.compile cannot trace importlib, and backend resolution runs in forward()
_HAS = {name: _has_module(name) for name in ("triton", "mamba_ssm", "causal_conv1d")}


def _triton_available(device_type: str) -> bool:
    if not _HAS["triton"]:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    return os.environ.get("TRITON_INTERPRET") == "1"  # the interpreter runs the kernels on the CPU


def _triton_scan(*args, **kwargs):
    from .scan_triton import selective_scan_triton

    return selective_scan_triton(*args, **kwargs)


def _triton_conv(*args, **kwargs):
    from .conv_triton import causal_conv1d_triton

    return causal_conv1d_triton(*args, **kwargs)


register_backend(Backend("triton", _triton_scan, _triton_conv, available=_triton_available,
                         priority=lambda device_type: 10 if device_type == "cuda" else -1))


def _mamba_ssm_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # optional dependency

    def bet(x):
        return None if x is None else x.transpose(1, 2)  # the official kernel takes (b, e, t)

    out = selective_scan_fn(bet(u), bet(delta), A.float(), bet(B), bet(C), None if D is None else D.float(),
                            bet(z), None if delta_bias is None else delta_bias.float(), delta_softplus)
    return out.transpose(1, 2)


def _mamba_ssm_conv(x, weight, bias=None, activation=None):
    if not _HAS["causal_conv1d"]:
        return causal_conv1d_torch(x, weight, bias, activation)
    from causal_conv1d import causal_conv1d_fn  # optional dependency

    w = weight[:, 0, :] if weight.dim() == 3 else weight
    return causal_conv1d_fn(x.transpose(1, 2), w, bias, activation).transpose(1, 2)


register_backend(Backend("mamba_ssm", *_with_index(_mamba_ssm_scan, _mamba_ssm_conv),
                         available=lambda device_type: device_type == "cuda" and _HAS["mamba_ssm"],
                         priority=lambda device_type: -1))


def backend_available(name: str, device_type: str) -> bool:
    """Whether backend ``name`` can run on tensors of ``device_type`` ("cuda", "cpu") here."""
    return name == "auto" or check_backend(name) in _BACKENDS and _BACKENDS[name].available(device_type)


def available_backends() -> list[str]:
    """Names accepted by ``backend=`` arguments (whether or not they can run on this machine)."""
    return ["auto", *sorted(_BACKENDS)]


def check_backend(name: str) -> str:
    """Return ``name`` if it names a backend (or "auto"); else raise a ValueError listing them."""
    if name != "auto" and name not in _BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; choose one of {available_backends()}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``"auto"`` restores the automatic choice)."""
    global _default
    _default = check_backend(name)


def get_backend() -> str:
    """The process-wide default backend name."""
    return _default


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use ``name`` as the default backend inside a ``with`` block."""
    global _default
    previous, _default = _default, check_backend(name)
    try:
        yield
    finally:
        _default = previous


def resolve_backend(name: str | None, device_type: str) -> Backend:
    """The implementation that ``name`` (``None``: the default) means for tensors on ``device_type``."""
    name = check_backend(_default if name is None else name)
    if name == "auto" and device_type == "meta":
        return _BACKENDS["torch"]
    if name == "auto":
        best = None
        for b in _BACKENDS.values():  # a plain loop: torch.compile traces it (max(key=...) it does not)
            if b.available(device_type) and (best is None or b.priority(device_type) > best.priority(device_type)):
                best = b
        return best
    backend = _BACKENDS[name]
    if not backend.available(device_type):
        hint = {"triton": "it needs a CUDA GPU and the triton package (or TRITON_INTERPRET=1 on the CPU)",
                "mamba_ssm": "it needs a CUDA GPU and the mamba-ssm package"}.get(name, "")
        raise RuntimeError(
            f"ops backend {name!r} cannot run on {device_type!r} tensors here; {hint}; "
            f"use backend='auto' or 'torch'"
        )
    return backend


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    index: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Mamba-1 selective scan; see :func:`armvision.ops.scan.selective_scan_ref`.

    u, delta, z: (b, t, e); A: (e, n) fp32; B, C: (b, t, n); D, delta_bias: (e,); index: (t,)
    token order to scan in (see the module docstring). Returns (b, t, e) in u's dtype.
    """
    impl = resolve_backend(backend, u.device.type)
    return impl.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, index=index)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
                  index: Tensor | None = None, backend: str | None = None) -> Tensor:
    """Depthwise causal conv over time; x (b, t, e), weight (e, k) or (e, 1, k), bias (e,);
    index (t,): token order to convolve along (see the module docstring)."""
    impl = resolve_backend(backend, x.device.type)
    return impl.causal_conv1d(x, weight, bias, activation, index=index)
