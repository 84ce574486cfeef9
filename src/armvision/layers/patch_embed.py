"""Patch embedding: timm's ``PatchEmbed`` (same parameters, names and input checks) computed as one matrix
product of the flattened patches instead of a strided convolution.

A p x p convolution with stride p over non-overlapping patches is a linear map of each patch's
c * p * p pixels; as a matrix product it runs on the GPU's matrix units at full speed, while cuDNN
runs the strided convolution through layout transposes and a slow kernel (about 2 ms of a 78 ms ARM-B
pretraining step on an H200, benchmarks/results/2026-12-01_h200/profile_pretrain_b.json). The weight
stays the convolution's (embed_dim, c, p, p) tensor, so checkpoints and interop are unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.layers import PatchEmbed as _TimmPatchEmbed
from timm.layers.format import Format
from torch import Tensor

__all__ = ["PatchEmbed"]


class PatchEmbed(_TimmPatchEmbed):
    """(b, c, h, w) images -> (b, n, embed_dim) patch tokens, row-major, n = (h / p) * (w / p)."""

    def _as_matmul(self) -> bool:
        conv = self.proj
        return (self.flatten and not self.dynamic_img_pad and self.output_fmt == Format.NCHW
                and tuple(conv.kernel_size) == tuple(conv.stride) and tuple(conv.padding) == (0, 0)
                and tuple(conv.dilation) == (1, 1) and conv.groups == 1)

    def forward(self, x: Tensor) -> Tensor:
        if not self._as_matmul():
            return super().forward(x)
        b, c, h, w = x.shape
        ph, pw = self.patch_size
        if self.img_size is not None and self.strict_img_size:
            if (h, w) != tuple(self.img_size):
                raise ValueError(f"input images are {h}x{w}, the model takes {self.img_size[0]}x{self.img_size[1]}")
        elif h % ph or w % pw:
            raise ValueError(f"input images are {h}x{w}, not a multiple of the patch size {ph}x{pw}")
        gh, gw = h // ph, w // pw
        patches = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # (d, c, p, p) -> (d, c * p * p)
        return self.norm(F.linear(patches, weight, self.proj.bias))
