"""An independent re-implementation of the Vim reference code (hustvl/Vim), for testing armvision's Vim.

It follows the reference step by step on a state dict in the official key layout, as official_reference.py does
for ARM: ``vim/models_mamba.py`` (``VisionMamba.forward_features``: the class token inserted at M // 2 of the
M patches, the absolute position embedding, blocks that add the previous mixer output to the residual, then
RMS-normalise, then mix, and return both; the final add and RMS norm; the class token as the feature) and the
``bimamba_type="v2"`` branch of ``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`` (the channel-first (b, d, l)
projection, the forward scan and the scan of the flipped sequence, flipped back, summed, divided by 2, then
out_proj). The scan and the causal convolution are official_reference's (armvision's loop references
``selective_scan_ref`` and ``causal_conv1d_ref``, tested against closed forms in test_ops.py); nothing of
armvision's model classes, layers or converters is used.

It also builds random checkpoints in the official layout (names and shapes as the reference's modules create
them), with values scaled so that deep random networks stay numerically tame.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from official_reference import _Filler, _inner_no_out_proj
from torch import Tensor

TINY = "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"


def make_official_vim_state_dict(embed_dim=32, depth=2, d_state=8, patch=4, in_chans=3, grid=8, num_classes=10,
                                 expand=2, seed=0, dtype=torch.float32, meta=False) -> dict[str, Tensor]:
    """Random weights with the names and shapes of the reference's ``VisionMamba`` (``rms_norm``, ``bimamba_type
    ="v2"``, a middle class token, an absolute position embedding of patches + 1 tokens). ``meta``: shapes only."""
    f = _Filler(torch.Generator().manual_seed(seed), dtype, meta)
    sd: dict[str, Tensor] = {}
    e, dt_rank = expand * embed_dim, math.ceil(embed_dim / 16)
    f.linear(sd, "patch_embed.proj", embed_dim, in_chans * patch * patch)
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(embed_dim, in_chans, patch, patch)
    sd["cls_token"] = f.randn(1, 1, embed_dim, std=0.02)
    sd["pos_embed"] = f.randn(1, grid * grid + 1, embed_dim, std=0.1)
    if num_classes > 0:
        f.linear(sd, "head", num_classes, embed_dim)
    for i in range(depth):
        p = f"layers.{i}."
        sd[p + "mixer.in_proj.weight"] = f.randn(2 * e, embed_dim, std=embed_dim ** -0.5)
        for s in ("", "_b"):
            f.mixer_direction(sd, p + "mixer.", s, e, d_state, dt_rank)
        sd[p + "mixer.out_proj.weight"] = f.randn(embed_dim, e, std=e ** -0.5 / 2)
        sd[p + "norm.weight"] = (1 + f.randn(embed_dim, std=0.1)).to(dtype)
    sd["norm_f.weight"] = (1 + f.randn(embed_dim, std=0.1)).to(dtype)
    return sd


def official_vim_pickle(state_dict, model: str | None = TINY, **extra) -> dict:
    """What the reference's ``main.py`` saves (DeiT's layout): model, optimizer, lr_scheduler, epoch, model_ema,
    scaler, args."""
    args = argparse.Namespace(model=model, input_size=224, nb_classes=1000, drop_path=0.0, weight_decay=0.1,
                              batch_size=128, lr=5e-4, model_ema=True)
    out = {"model": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
           "lr_scheduler": {"last_epoch": 299}, "epoch": 299, "model_ema": {k: v + 1 for k, v in state_dict.items()},
           "scaler": "none", "args": args}
    out.update(extra)
    return out


def _rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """``rms_norm_ref`` of mamba_ssm/ops/triton/layer_norm.py (no bias)."""
    return x * (1 / torch.sqrt(x.square().mean(dim=-1, keepdim=True) + eps)) * weight


def reference_vim_mixer(h: Tensor, sd, p: str) -> Tensor:
    """``Mamba.forward`` with ``bimamba_type="v2"``, ``if_divide_out=True`` on the fast path: (b, l, d) -> (b, l, d)."""
    b, seqlen, d = h.shape
    w = sd[f"{p}in_proj.weight"]
    xz = (w @ h.reshape(b * seqlen, d).t()).reshape(w.shape[0], b, seqlen).permute(1, 0, 2)  # b d l
    out = _inner_no_out_proj(xz, sd, p, "")
    out_b = _inner_no_out_proj(xz.flip([-1]), sd, p, "_b")
    return F.linear((out + out_b.flip([-1])).transpose(1, 2) / 2, sd[f"{p}out_proj.weight"])


def _depth(sd) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))


def reference_vim_features(sd, images: Tensor) -> tuple[Tensor, int]:
    """``VisionMamba.forward_features`` up to the final norm: ((b, M + 1, d) normed tokens, class token index)."""
    p = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    B, M, _ = x.shape
    token_position = M // 2
    x = torch.cat((x[:, :token_position], sd["cls_token"].expand(B, -1, -1), x[:, token_position:]), dim=1)
    x = x + sd["pos_embed"]
    residual, hidden = None, x
    for i in range(_depth(sd)):  # Block.forward, fused add + RMSNorm (prenorm=True), then the mixer
        residual = hidden if residual is None else residual + hidden
        hidden = reference_vim_mixer(_rms_norm(residual, sd[f"layers.{i}.norm.weight"]), sd, f"layers.{i}.mixer.")
    return _rms_norm(residual + hidden, sd["norm_f.weight"]), token_position


def reference_vim_logits(sd, images: Tensor) -> Tensor:
    """``VisionMamba.forward``: the class token's logits (b, classes), or the class token when there is no head."""
    tokens, c = reference_vim_features(sd, images)
    feat = tokens[:, c]
    return F.linear(feat, sd["head.weight"], sd["head.bias"]) if "head.weight" in sd else feat
