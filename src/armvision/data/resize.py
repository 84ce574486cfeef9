"""Batched resized crops: RandomResizedCrop's resize and flip for a whole batch of differently sized images in a
fixed number of kernel launches per chunk of the batch (the GPU path's, :mod:`armvision.data.gpu`).

Resizing is separable and linear: crop k (c, h_k, w_k) resized to (size, size) is ``Wy_k @ X_k @ Wx_k^T`` per
channel, with Wy_k (size, h_k) and Wx_k (size, w_k) the interpolation matrices of the crop's height and width.
:func:`interpolation_matrices` builds them for many crops at once with the filter of
``F.interpolate(..., antialias=True, align_corners=False)`` (PIL's too): output pixel i is centred at
``(i + 0.5) * scale`` in the input (scale = input / output length), the bicubic (a = -0.5) or triangle filter is
stretched by ``max(scale, 1)``, clipped to the crop and its weights normalised to sum 1. A horizontal flip reverses
Wx's rows. :func:`resized_crops` gathers the crops of a chunk into one padded (n, h, c, w) tensor (rows and columns
past a crop's end repeat its last one; their weights are zero) and applies the matrices with two batched matmuls.

The matmuls run in float64: on the GPU, float32 matmuls round their inputs to TF32 when
``torch.backends.cuda.matmul.allow_tf32`` is set, a process-wide flag the trainer sets and that this code (which may
run in a background thread) must not touch, and autocast would run them in bf16/fp16 (it leaves float64 alone);
float64 is exact enough that the 8-bit result is the per-image ``F.interpolate`` loop's (:func:`_crop_flip_loop`,
the specification) up to the rounding of pixels at x.5. (On GPUs with slow float64, such as consumer cards, this
costs more than on an H100/H200.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .feeder import copy_to_device

__all__ = ["interpolation_matrices", "resized_crops"]

_HALF_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}  # the filter's support radius at scale <= 1
CHUNK_ELEMENTS = 1 << 26  # float64 elements of a chunk's padded crops (512 MiB; the index as much again)


def _filter(x: Tensor, mode: str) -> Tensor:
    """The interpolation kernel at distances ``x`` (in input pixels divided by max(scale, 1))."""
    x = x.abs()
    if mode == "bilinear":
        return (1 - x).clamp_min(0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, 0.0))


def interpolation_matrices(lengths: Tensor, size: int, span: int, mode: str = "bicubic") -> Tensor:
    """Antialiased resize matrices: (n,) input lengths -> (n, size, span) float64, row i the weights of input pixels
    0..span-1 in output pixel i when a length ``lengths[k]`` is resized to ``size``; zero at and past ``lengths[k]``.

    The window of output pixel i in ``F.interpolate`` is the input pixels whose centres lie within ``support`` of its
    centre, clipped to [0, length); the filter is zero at and past ``support`` (after dividing by max(scale, 1)), so
    masking the pixels past the length gives the same window.
    """
    if mode not in _HALF_SUPPORT:
        raise ValueError(f"mode must be one of {sorted(_HALF_SUPPORT)}, got {mode!r}")
    length = lengths.to(torch.float64)[:, None, None]  # (n, 1, 1)
    scale = length / size
    invscale = scale.clamp_min(1).reciprocal()  # the filter stretched by the downscale factor
    center = scale * (torch.arange(size, dtype=torch.float64, device=lengths.device)[:, None] + 0.5)  # (n, size, 1)
    j = torch.arange(span, dtype=torch.float64, device=lengths.device)
    w = _filter((j - center + 0.5) * invscale, mode) * (j < length)  # (n, size, span)
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total != 0, total, 1.0)


def _chunks(crops: list[tuple[int, int]], order: list[int], c: int, size: int, budget: int):
    """Consecutive runs of ``order`` (crops sorted by area) whose padded crops fit ``budget`` elements:
    (start, end, max height, max width) each; a crop larger than the budget gets a chunk of its own."""
    out, start, b = [], 0, len(order)
    while start < b:
        hm, wm = crops[order[start]]
        end = start + 1
        while end < b:
            h2, w2 = max(hm, crops[order[end]][0]), max(wm, crops[order[end]][1])
            if (end + 1 - start) * c * max(h2, size) * max(w2, size) > budget:
                break
            hm, wm, end = h2, w2, end + 1
        out.append((start, end, hm, wm))
        start = end
    return out


def resized_crops(images: Sequence[Tensor], boxes: Tensor | Sequence, flips: Tensor | Sequence, size: int,
                  mode: str = "bicubic", chunk_elements: int = CHUNK_ELEMENTS, rounded: bool = True) -> Tensor:
    """Crop, resize and flip a batch: b (c, h_k, w_k) uint8 images on one device, ``boxes`` (b, 4) (top, left,
    height, width) inside each image, ``flips`` (b,) bool -> (b, c, size, size) float32 on that device, rounded to
    8-bit values in [0, 255] (PIL's result; ``rounded=False``: the values before that), as :func:`_crop_flip_loop`
    computes it one image at a time.

    Operations: about 60 per chunk (most of them on (n, size, span) weights), whatever the chunk's size; the batch is
    cut into chunks (crops of similar area together) of at most ``chunk_elements`` padded crop elements
    ((n, c, max(h, size), max(w, size)); a larger crop gets a chunk of its own).
    """
    if mode not in _HALF_SUPPORT:
        raise ValueError(f"mode must be one of {sorted(_HALF_SUPPORT)}, got {mode!r}")
    b = len(images)
    boxes = torch.as_tensor(boxes).tolist()
    flips = torch.as_tensor(flips).tolist()
    if b == 0 or len(boxes) != b or len(flips) != b:
        raise ValueError(f"need one box and one flip per image, got {b} images, {len(boxes)} boxes, {len(flips)} flips")
    c, device = images[0].shape[0], images[0].device
    if any(x.dim() != 3 or x.shape[0] != c for x in images):
        raise ValueError(f"images must be (c, h, w) with the same c, got {[tuple(x.shape) for x in images]}")
    flat = torch.cat([x.reshape(-1) for x in images])  # one copy kernel (a few for hundreds of images)
    offsets, table = 0, []
    for k, (x, (top, left, h, w), flip) in enumerate(zip(images, boxes, flips)):
        if not (0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= x.shape[1] and left + w <= x.shape[2]):
            raise ValueError(f"crop box {(top, left, h, w)} is not inside image {k} of shape {tuple(x.shape)}")
        table.append([offsets, x.shape[1], x.shape[2], top, left, h, w, int(bool(flip)), k])
        offsets += x.numel()
    crops = [(r[5], r[6]) for r in table]
    order = sorted(range(b), key=lambda k: crops[k][0] * crops[k][1])
    info = torch.tensor([table[k] for k in order], dtype=torch.long)  # (b, 9), in chunk order
    info = copy_to_device(info, device)
    out = torch.empty(b, c, size, size, dtype=torch.float32, device=device)
    chans = torch.arange(c, device=device)
    for start, end, hm, wm in _chunks(crops, order, c, size, chunk_elements):
        n = end - start
        off, hh, ww, top, left, h, w, flip, pos = info[start:end].unbind(1)
        rows = top[:, None] + torch.minimum(torch.arange(hm, device=device), h[:, None] - 1)  # (n, hm)
        cols = left[:, None] + torch.minimum(torch.arange(wm, device=device), w[:, None] - 1)  # (n, wm)
        base = (off[:, None] + rows * ww[:, None])[:, :, None] + (chans * (hh * ww)[:, None])[:, None, :]
        x = flat[base[..., None] + cols[:, None, None, :]].to(torch.float64)  # (n, hm, c, wm)
        m = interpolation_matrices(torch.cat([h, w]), size, max(hm, wm), mode)  # rows' and columns' at once
        wy, wx = m[:n, :, :hm], m[n:, :, :wm]  # (n, size, hm), (n, size, wm)
        wx = torch.where(flip.bool()[:, None, None], wx.flip(1), wx)
        if hm < wm:  # the longer side first: the second matmul is then the smaller one
            t = torch.bmm(x.view(n, hm * c, wm), wx.transpose(1, 2))  # (n, hm * c, size)
            r = torch.bmm(wy, t.view(n, hm, c * size))  # (n, size, c * size)
        else:
            t = torch.bmm(wy, x.view(n, hm, c * wm))  # (n, size, c * wm)
            r = torch.bmm(t.view(n, size * c, wm), wx.transpose(1, 2))  # (n, size * c, size)
        out.index_copy_(0, pos, r.view(n, size, c, size).permute(0, 2, 1, 3).to(torch.float32))
    return out.round_().clamp_(0, 255) if rounded else out


def _crop_flip_loop(images: Sequence[Tensor], boxes: Tensor | Sequence, flips: Tensor | Sequence, size: int,
                    mode: str = "bicubic", rounded: bool = True, dtype: torch.dtype = torch.float32) -> Tensor:
    """The specification of :func:`resized_crops`: one ``F.interpolate(antialias=True)`` per image, computed in
    ``dtype`` (float32: the GPU path's former code; float64: the exact values, for the tests)."""
    boxes, flips = torch.as_tensor(boxes).tolist(), torch.as_tensor(flips).tolist()
    out = torch.empty(len(images), images[0].shape[0], size, size, dtype=dtype, device=images[0].device)
    for k, (img, (top, left, h, w), flip) in enumerate(zip(images, boxes, flips)):
        crop = img[None, :, top:top + h, left:left + w].to(dtype)
        r = F.interpolate(crop, size=(size, size), mode=mode, align_corners=False, antialias=True)
        out[k] = r[0].flip(-1) if flip else r[0]
    return out.round_().clamp_(0, 255) if rounded else out  # 8-bit pixels, as PIL's resize gives them
