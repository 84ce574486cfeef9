"""Functional ops of the Mamba mixer, each with a plain-PyTorch reference, behind a backend switch.

``backend`` names an implementation:

* ``"torch"`` -- vectorised PyTorch (:mod:`armvision.ops.scan`,
  :mod:`armvision.ops.conv`): runs everywhere; the CPU path.
* ``"auto"`` (default) -- the fastest implementation available for the tensors' device.

The default can be changed globally with :func:`set_backend` or for a block of code with
:func:`use_backend`; a per-call ``backend=`` argument wins over both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

from torch import Tensor

from .conv import causal_conv1d_ref, causal_conv1d_torch
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
    "register_backend",
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


register_backend(Backend("torch", selective_scan_torch, causal_conv1d_torch,
                         available=lambda device_type: True, priority=lambda device_type: 0))


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
    if name == "auto":
        usable = [b for b in _BACKENDS.values() if b.available(device_type)]
        return max(usable, key=lambda b: b.priority(device_type))
    backend = _BACKENDS[name]
    if not backend.available(device_type):
        raise RuntimeError(
            f"ops backend {name!r} cannot run on {device_type!r} tensors here; "
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
    backend: str | None = None,
) -> Tensor:
    """Mamba-1 selective scan; see :func:`armvision.ops.scan.selective_scan_ref`.

    u, delta, z: (b, t, e); A: (e, n) fp32; B, C: (b, t, n); D, delta_bias: (e,). Returns (b, t, e).
    """
    impl = resolve_backend(backend, u.device.type)
    return impl.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  activation: str | None = None, backend: str | None = None) -> Tensor:
    """Depthwise causal conv over time; x (b, t, e), weight (e, k) or (e, 1, k), bias (e,)."""
    impl = resolve_backend(backend, x.device.type)
    return impl.causal_conv1d(x, weight, bias, activation)
