"""An independent re-implementation of the ARM reference code, for testing conversions.

The functions here follow the structure of the reference repository (OliverRensu/ARM:
``models_pretrain.py``, ``models_finetune.py``, ``mamba_simple.py``, ``main_finetune.py``,
``utils/pos_embed.py``) step by step -- its channel-first ``(b, d, l)`` mixer layout, its flips, its
class-token juggling at ``L // 2``, its cluster rearrangement, its additive decoder mask, its loss --
working directly on a state dict in the official key layout. They use plain torch, plus armvision's
loop references ``selective_scan_ref`` and ``causal_conv1d_ref`` for the recurrence and the causal
convolution themselves (tested against closed forms and ``nn.Conv1d`` in test_ops.py), and nothing
of armvision's model classes, layers or converters: a converted armvision model that computes what
these functions compute is a faithful conversion.

It also builds random checkpoints in the official layout (key names and shapes as the reference's
modules create them), with values scaled so that deep random networks stay numerically tame.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from armvision.ops import causal_conv1d_ref, selective_scan_ref

CLUSTER = 4  # the reference hard-codes clusters of 4x4 patches (rearrange p1=4, p2=4)


# ---------------------------------------------------------------------------------------------
# random official-layout checkpoints
# ---------------------------------------------------------------------------------------------
class _Filler:
    """Random tensors; with ``meta`` only their shapes (meta tensors), for checking the full-size layouts."""

    def __init__(self, gen: torch.Generator, dtype: torch.dtype, meta: bool = False):
        self.g, self.dtype, self.meta = gen, dtype, meta

    def randn(self, *shape, std=1.0):
        if self.meta:
            return torch.empty(*shape, dtype=self.dtype, device="meta")
        return (torch.randn(*shape, generator=self.g, dtype=torch.float64) * std).to(self.dtype)

    def linear(self, sd, name, out_f, in_f, bias=True):
        sd[f"{name}.weight"] = self.randn(out_f, in_f, std=in_f ** -0.5)
        if bias:
            sd[f"{name}.bias"] = self.randn(out_f, std=0.1)

    def norm(self, sd, name, dim):
        sd[f"{name}.weight"] = (1 + self.randn(dim, std=0.1)).to(self.dtype)
        sd[f"{name}.bias"] = self.randn(dim, std=0.1)

    def mixer_direction(self, sd, prefix, suffix, e, d_state, dt_rank, d_conv=4):
        sd[f"{prefix}conv1d{suffix}.weight"] = self.randn(e, 1, d_conv, std=0.5)
        sd[f"{prefix}conv1d{suffix}.bias"] = self.randn(e, std=0.1)
        sd[f"{prefix}x_proj{suffix}.weight"] = self.randn(dt_rank + 2 * d_state, e, std=e ** -0.5)
        sd[f"{prefix}dt_proj{suffix}.weight"] = self.randn(e, dt_rank, std=dt_rank ** -0.5)
        if self.meta:
            shapes = {f"dt_proj{suffix}.bias": (e,), f"A{suffix}_log": (e, d_state), f"D{suffix}": (e,)}
            for name, shape in shapes.items():
                sd[prefix + name] = self.randn(*shape)
            return
        dt = torch.exp(torch.rand(e, generator=self.g, dtype=torch.float64) * (math.log(0.1) - math.log(1e-3))
                       + math.log(1e-3))
        sd[f"{prefix}dt_proj{suffix}.bias"] = (dt + torch.log(-torch.expm1(-dt))).to(self.dtype)
        sd[f"{prefix}A{suffix}_log"] = (torch.log(torch.arange(1, d_state + 1, dtype=torch.float64)).expand(e, -1)
                                   + self.randn(e, d_state, std=0.1).double()).to(self.dtype)
        sd[f"{prefix}D{suffix}"] = (1 + self.randn(e, std=0.1)).to(self.dtype)

    def block(self, sd, i, dim, d_state, suffixes):
        p = f"layers.{i}."
        e, dt_rank, hidden = dim, math.ceil(dim / 16), dim * 4 * 2 // 3
        self.norm(sd, p + "norm1", dim)
        sd[p + "mixer.in_proj.weight"] = self.randn(2 * e, dim, std=dim ** -0.5)
        for s in suffixes:
            self.mixer_direction(sd, p + "mixer.", s, e, d_state, dt_rank)
        sd[p + "mixer.out_proj.weight"] = self.randn(dim, e, std=e ** -0.5 / 2)
        self.norm(sd, p + "norm2", dim)
        self.linear(sd, p + "mlp.w1", hidden, dim)
        self.linear(sd, p + "mlp.w2", hidden, dim)
        sd[p + "mlp.w3.weight"] = self.randn(dim, hidden, std=hidden ** -0.5 / 2)
        sd[p + "mlp.w3.bias"] = self.randn(dim, std=0.1)


def reference_mask(segments: int, tokens_per_segment: int) -> Tensor:
    """``mask_generate`` of models_pretrain.py: block lower-triangular, 0 / -inf, float32."""
    mask = torch.tril(torch.ones((segments, segments), dtype=torch.float))
    mask = mask.masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0)
    mask = torch.repeat_interleave(mask, repeats=tokens_per_segment, dim=0)
    return torch.repeat_interleave(mask, repeats=tokens_per_segment, dim=1)


def make_official_pretrain_state_dict(embed_dim=32, depth=12, d_state=8, dec_dim=128, patch=2, in_chans=3,
                                      grid=12, levels=4, seed=0, dtype=torch.float32,
                                      meta=False) -> dict[str, Tensor]:
    """Random weights with the names and shapes of the reference's pretraining ``VisionMamba``
    (``bimamba_type="None"``: one direction), including the persistent ``mask`` buffer (always real).
    ``meta``: shapes only."""
    f = _Filler(torch.Generator().manual_seed(seed), dtype, meta)
    sd: dict[str, Tensor] = {}
    n = grid * grid
    f.linear(sd, "patch_embed.proj", embed_dim, in_chans * patch * patch)
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(embed_dim, in_chans, patch, patch)
    sd["pos_embed"] = f.randn(1, n, embed_dim, std=0.1)
    for i in range(depth):
        f.block(sd, i, embed_dim, d_state, [""])
    sd["ar_token"] = f.randn(1, 1, dec_dim, std=0.02)
    sd["dec_pos_embed"] = f.randn(1, n, dec_dim, std=0.1)
    f.linear(sd, "enc2dec", dec_dim * levels, embed_dim * levels)
    for k in range(levels):
        p = f"dec_block.{k}."
        f.linear(sd, p + "attn2.q", dec_dim, dec_dim)
        f.linear(sd, p + "attn2.kv", dec_dim * 2, dec_dim)
        f.linear(sd, p + "attn2.proj", dec_dim, dec_dim)
        f.norm(sd, p + "norm2_1", dec_dim)
        f.norm(sd, p + "norm2_2", dec_dim)
        f.norm(sd, p + "norm2", dec_dim)
        f.linear(sd, p + "mlp.fc1", dec_dim * 4, dec_dim)
        f.linear(sd, p + "mlp.fc2", dec_dim, dec_dim * 4)
    for k in range(1, levels + 1):
        f.norm(sd, f"norm_{k}", embed_dim)
    f.norm(sd, "ar_norm", dec_dim)
    f.linear(sd, "ar_pred", patch * patch * in_chans, dec_dim)
    per_cluster = CLUSTER * CLUSTER
    sd["mask"] = reference_mask(n // per_cluster - 1, per_cluster)
    return sd


def make_official_finetune_state_dict(embed_dim=32, depth=2, d_state=8, patch=4, in_chans=3, grid=8,
                                      num_classes=10, seed=0, dtype=torch.float32, meta=False) -> dict[str, Tensor]:
    """Random weights with the names and shapes of the reference's fine-tuning ``VisionMamba``
    (``bimamba_type="v3"``, class token, absolute position embedding of patches + 1 tokens).
    ``meta``: shapes only."""
    f = _Filler(torch.Generator().manual_seed(seed), dtype, meta)
    sd: dict[str, Tensor] = {}
    f.linear(sd, "patch_embed.proj", embed_dim, in_chans * patch * patch)
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(embed_dim, in_chans, patch, patch)
    sd["cls_token"] = f.randn(1, 1, embed_dim, std=0.02)
    sd["pos_embed"] = f.randn(1, grid * grid + 1, embed_dim, std=0.1)
    if num_classes > 0:
        f.linear(sd, "head", num_classes, embed_dim)
    for i in range(depth):
        f.block(sd, i, embed_dim, d_state, ["", "_b", "_c", "_c_b"])
    f.norm(sd, "norm_f", embed_dim)
    return sd


def official_pickle(state_dict, kind: str, **extra) -> dict:
    """What the reference's ``misc.save_model`` / ``misc.finetune_save_model`` write."""
    if kind == "pretraining":
        args = argparse.Namespace(model="arm_base_pz16", input_size=192, norm_pix_loss=True, batch_size=256,
                                  epochs=1600, blr=1.5e-4, output_dir="./out_b/", distributed=True, gpu=0)
        out = {"model": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95),
                                                                                  "params": [0, 1]}]},
               "epoch": 1599, "scaler": {"scale": 65536.0, "_growth_tracker": 3}, "args": args}
    else:
        args = argparse.Namespace(model="arm_base_pz16", input_size=224, nb_classes=1000, global_pool=True,
                                  drop_path=0.1, cutmix_minmax=None, ema_decay=0.99992)
        out = {"model": state_dict, "optimizer": {"state": {}, "param_groups": []}, "epoch": 99,
               "scaler": {"scale": 1.0}, "args": args, "model_ema": state_dict, "max_accuracy": 83.2,
               "ema_max_accuracy": 83.3}
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# forward computations
# ---------------------------------------------------------------------------------------------
def _ln(x: Tensor, sd, name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _lin(x: Tensor, sd, name: str) -> Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _at_least_fp32(t: Tensor) -> Tensor:
    """The reference's ``.float()`` on the scan's A, D and dt bias, which upcast half precision; a float64 run
    stays in float64 so that a comparison in float64 is one."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _inner_no_out_proj(xz: Tensor, sd, p: str, s: str) -> Tensor:
    """``mamba_inner_fn_no_out_proj``: xz (b, 2e, l) -> gated scan output (b, e, l)."""
    x, z = xz.chunk(2, dim=1)
    # the reference's depthwise causal conv (conv1d with left padding d_conv - 1, cut to the sequence) + SiLU
    x = causal_conv1d_ref(x.transpose(1, 2), sd[f"{p}conv1d{s}.weight"], sd[f"{p}conv1d{s}.bias"], "silu")
    x = x.transpose(1, 2)  # (b, e, l)
    x_dbl = F.linear(x.transpose(1, 2), sd[f"{p}x_proj{s}.weight"])  # (b, l, dt_rank + 2n)
    d_state = sd[f"{p}A{s}_log"].shape[1]
    dt_rank = x_dbl.shape[-1] - 2 * d_state
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = F.linear(dt, sd[f"{p}dt_proj{s}.weight"])  # (b, l, e), bias applied inside the scan
    # as the reference: A, D and the dt bias enter the scan in float32 (``.float()``); float64 runs keep float64
    A = -torch.exp(_at_least_fp32(sd[f"{p}A{s}_log"]))
    y = selective_scan_ref(x.transpose(1, 2), dt, A, B, C, _at_least_fp32(sd[f"{p}D{s}"]), z.transpose(1, 2),
                           _at_least_fp32(sd[f"{p}dt_proj{s}.bias"]), delta_softplus=True)
    return y.transpose(1, 2)


def reference_mixer(h: Tensor, sd, p: str, four_directions: bool) -> Tensor:
    """``Mamba.forward`` of mamba_simple.py on the fast path: h (b, l, d) -> (b, l, d)."""
    b, seqlen, d = h.shape
    w = sd[f"{p}in_proj.weight"]
    xz = (w @ h.reshape(b * seqlen, d).t()).reshape(w.shape[0], b, seqlen).permute(1, 0, 2)  # b d l
    if not four_directions:
        out = _inner_no_out_proj(xz, sd, p, "")
        return F.linear(out.transpose(1, 2), sd[f"{p}out_proj.weight"])
    out = _inner_no_out_proj(xz, sd, p, "")
    out_b = _inner_no_out_proj(xz.flip([-1]), sd, p, "_b")
    B, D, L = xz.shape
    tp = L // 2
    side = int(math.sqrt(L))
    cls, xc = xz[:, :, tp:tp + 1], torch.cat([xz[:, :, :tp], xz[:, :, tp + 1:]], dim=-1)
    xc = xc.reshape(B, D, side, side).permute(0, 1, 3, 2).reshape(B, D, -1)
    xc = torch.cat((xc[:, :, :tp], cls, xc[:, :, tp:]), dim=-1)
    out_c = _inner_no_out_proj(xc, sd, p, "_c")
    out_c_b = _inner_no_out_proj(xc.flip([-1]), sd, p, "_c_b")
    out_c = out_c + out_c_b.flip([-1])
    e = out_c.shape[1]
    cls, out_c = out_c[:, :, tp:tp + 1], torch.cat([out_c[:, :, :tp], out_c[:, :, tp + 1:]], dim=-1)
    out_c = out_c.reshape(B, e, side, side).permute(0, 1, 3, 2).reshape(B, e, -1)
    out_c = torch.cat((out_c[:, :, :tp], cls, out_c[:, :, tp:]), dim=-1)
    out = out + out_b.flip([-1])
    return F.linear(((out + out_c) / 4.0).transpose(1, 2), sd[f"{p}out_proj.weight"])


def reference_block(h: Tensor, sd, i: int, four_directions: bool) -> Tensor:
    p = f"layers.{i}."
    h = h + reference_mixer(_ln(h, sd, p + "norm1"), sd, p + "mixer.", four_directions)
    y = _ln(h, sd, p + "norm2")
    return h + _lin(F.silu(_lin(y, sd, p + "mlp.w1")) * _lin(y, sd, p + "mlp.w2"), sd, p + "mlp.w3")


def _depth(sd) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))


def reference_finetune_logits(sd, images: Tensor, global_pool: bool) -> Tensor:
    """``VisionMamba.forward`` of models_finetune.py: logits (b, classes), or the pooled feature when
    the state dict has no head."""
    p = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    B, M, _ = x.shape
    tp = M // 2
    x = torch.cat((x[:, :tp, :], sd["cls_token"].expand(B, -1, -1), x[:, tp:, :]), dim=1)
    h = x + sd["pos_embed"]
    for i in range(_depth(sd)):
        h = reference_block(h, sd, i, four_directions=True)
    h = _ln(h, sd, "norm_f")
    if global_pool:
        feat = (h[:, :tp, :].mean(1) + h[:, tp + 1:, :].mean(1)) / 2.0
    else:
        feat = h[:, tp, :]
    return _lin(feat, sd, "head") if "head.weight" in sd else feat


def _clusters(x: Tensor) -> Tensor:
    """rearrange "b (h p1) (w p2) c -> b (h w) (p1 p2) c", p1 = p2 = 4."""
    b, H, W, c = x.shape
    x = x.reshape(b, H // CLUSTER, CLUSTER, W // CLUSTER, CLUSTER, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (H // CLUSTER) * (W // CLUSTER), CLUSTER * CLUSTER, c)


def reference_pretrain(sd, images: Tensor) -> dict[str, Tensor]:
    """models_pretrain.py ``VisionMamba.forward`` (and engine_pretrain's ``.mean()``).

    Returns pred and target (b, 128, p*p*c), the per-token loss the model returns (128,), the scalar
    loss the training loop uses, and the decoder memory (b, 128, dec, 4).
    """
    p = sd["patch_embed.proj.weight"].shape[-1]
    depth = _depth(sd)
    skip = {12: [6, 8, 10, 12], 24: [12, 16, 20, 24]}[depth]
    # forward_features
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    B, N, C = x.shape
    x = x + sd["pos_embed"]
    side = int(math.sqrt(N))
    x = _clusters(x.reshape(B, side, side, C))
    h = x[:, :-1].reshape(B, -1, C)
    features = []
    for count in range(1, depth + 1):
        h = reference_block(h, sd, count - 1, four_directions=False)
        if count in skip:
            features.append(h)
    features = [_ln(f, sd, f"norm_{k + 1}") for k, f in enumerate(features)]
    features = _lin(torch.cat(features, dim=-1), sd, "enc2dec")
    B, n_tok, Cd = features.shape
    latent = features.reshape(B, 8, n_tok // 8, Cd).reshape(B, -1, Cd).reshape(B, n_tok, Cd // 4, 4)
    # forward_decoder
    Cq = latent.shape[2]
    ar = sd["ar_token"] + sd["dec_pos_embed"]
    ar = _clusters(ar.reshape(ar.shape[0], side, side, Cq))
    ar = ar[:, 1:].reshape(1, -1, Cq).repeat(B, 1, 1)
    heads = Cq // 64
    mask = sd["mask"].to(images.dtype)
    for k in range(4):
        bp = f"dec_block.{k}."
        qn = _ln(ar, sd, bp + "norm2_1")
        kvn = _ln(latent[:, :, :, k], sd, bp + "norm2_2")
        Bq, Nq, _ = qn.shape
        q = _lin(qn, sd, bp + "attn2.q").reshape(Bq, Nq, 1, heads, Cq // heads).permute(2, 0, 3, 1, 4)
        kv = _lin(kvn, sd, bp + "attn2.kv").reshape(Bq, Nq, 2, heads, Cq // heads).permute(2, 0, 3, 1, 4)
        q, kk, v = q[0], kv[0], kv[1]
        attn = (q @ kk.transpose(-2, -1)) * (Cq // heads) ** -0.5
        attn = (attn + mask).softmax(dim=-1)
        a = _lin((attn @ v).transpose(1, 2).reshape(Bq, Nq, Cq), sd, bp + "attn2.proj")
        ar = ar + a
        y = _ln(ar, sd, bp + "norm2")
        ar = ar + _lin(F.gelu(_lin(y, sd, bp + "mlp.fc1")), sd, bp + "mlp.fc2")
    pred = _lin(_ln(ar, sd, "ar_norm"), sd, "ar_pred")
    # forward_loss (the reference normalizes the target unconditionally)
    c = images.shape[1]
    hh = images.shape[2] // p
    t = images.reshape(images.shape[0], c, hh, p, hh, p)
    t = torch.einsum("nchpwq->nhwpqc", t).reshape(images.shape[0], hh * hh, p * p * c)
    mean = t.mean(dim=-1, keepdim=True)
    var = t.var(dim=-1, keepdim=True)
    t = (t - mean) / (var + 1.0e-6) ** 0.5
    Bt, Nt, Ct = t.shape
    t = _clusters(t.reshape(Bt, side, side, Ct))
    target = t[:, 1:].reshape(Bt, -1, Ct)
    per_token = ((pred - target) ** 2).mean(-1).mean(0)
    return dict(pred=pred, target=target, per_token=per_token, loss=per_token.mean(), memory=latent)


def reference_finetune_init(pretrain_sd, num_patches: int) -> dict[str, Tensor]:
    """main_finetune.py's loading of a pretraining checkpoint: each key with "conv1d", "dt_proj",
    "x_proj", "A", "D" copied to its _b, _c, _c_b variants, then ``interpolate_pos_embed`` (bicubic
    to the fine-tuning grid, a zero class-token slot inserted at N // 2)."""
    new = {}
    for k, v in pretrain_sd.items():
        for word in ("conv1d", "dt_proj", "x_proj", "A", "D"):
            if word in k:
                for s in ("_b", "_c", "_c_b"):
                    new[k.replace(word, word + s)] = v
        new[k] = v
    pos = new["pos_embed"]
    dim = pos.shape[-1]
    orig, size = int(pos.shape[-2] ** 0.5), int(num_patches ** 0.5)
    if orig != size:
        tok = pos.reshape(-1, orig, orig, dim).permute(0, 3, 1, 2)
        tok = F.interpolate(tok, size=(size, size), mode="bicubic", align_corners=False)
        pos = tok.permute(0, 2, 3, 1).flatten(1, 2)
    B, N, C = pos.shape
    new["pos_embed"] = torch.cat((pos[:, :N // 2, :], torch.zeros((1, 1, dim)), pos[:, N // 2:, :]), dim=1)
    return new
