"""ARM models: the autoregressive pretraining model and the four-direction classifier.

Both share the encoder: MambaMLP blocks (:class:`~armvision.layers.MambaMLPBlock`, ARM's, the default) or Vim
blocks (:class:`~armvision.layers.VimBlock`, ``block="vim"``: the Vim family of :mod:`armvision.models.vim`).
Parameter names follow the reference code (OliverRensu/ARM, hustvl/Vim) so that its checkpoints map onto these
modules by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import lecun_normal_, trunc_normal_
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .. import ops
from .config import saved_config
from ..layers import (
    DEFAULT_EXPAND,
    ENCODER_BLOCKS,
    DecoderBlock,
    PatchEmbed,
    TokenLayout,
    insert_token_slot,
    resize_classifier_pos_embed,
    resize_pos_embed,
    sincos_pos_embed_2d,
)

__all__ = [
    "Geometry",
    "ARMPretrain",
    "ARMClassifier",
    "default_memory_layers",
]


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"expected an int or a (height, width) pair, got {x}")
    return x


@dataclass(frozen=True)
class Geometry:
    """How an image is cut: into patches of ``patch_size`` pixels, and the patch grid into clusters
    of ``cluster_size`` x ``cluster_size`` patches (ARM's prediction unit), visited in ``order``:
    "row" (clusters row-major, patches row-major inside each: the paper's), "column" (the transpose:
    clusters column-major, patches column-major inside each) or "random" (a fixed permutation of the
    clusters drawn from ``order_seed``, patches row-major inside each)."""

    img_size: tuple[int, int]
    patch_size: int
    cluster_size: int = 1
    in_chans: int = 3
    order: str = "row"
    order_seed: int = 0

    def __post_init__(self):
        h, w = self.img_size
        p, c = self.patch_size, self.cluster_size
        if min(h, w, p, c, self.in_chans) < 1:
            raise ValueError(f"image size, patch size, cluster size and channels must be positive: {self}")
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {p}; "
                f"use an image size that is a multiple of {p} (e.g. {(h // p or 1) * p})"
            )
        if self.order not in CLUSTER_ORDERS:
            raise ValueError(f"cluster order {self.order!r}: expected one of {', '.join(CLUSTER_ORDERS)}")
        gh, gw = h // p, w // p
        if gh % c or gw % c:
            raise ValueError(
                f"the {gh}x{gw} patch grid (image {h}x{w}, patch {p}) is not divisible into clusters of "
                f"{c}x{c} patches; choose a cluster size that divides {math.gcd(gh, gw)}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols)."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def cluster_grid(self) -> tuple[int, int]:
        """Cluster grid (rows, cols)."""
        return (self.grid[0] // self.cluster_size, self.grid[1] // self.cluster_size)

    @property
    def num_clusters(self) -> int:
        return self.cluster_grid[0] * self.cluster_grid[1]

    @property
    def patches_per_cluster(self) -> int:
        return self.cluster_size**2

    @property
    def patch_dim(self) -> int:
        """Pixel values in one patch: patch * patch * channels."""
        return self.patch_size**2 * self.in_chans

    def cluster_permutation(self) -> Tensor:
        """(num_clusters,) row-major index of the cluster visited at each step (identity for "row")."""
        (ch, cw), k = self.cluster_grid, self.num_clusters
        if self.order == "column":
            return torch.arange(k).view(ch, cw).T.reshape(-1)
        if self.order == "random":
            return torch.randperm(k, generator=torch.Generator().manual_seed(self.order_seed))
        return torch.arange(k)

    def cluster_order(self) -> Tensor:
        """(num_patches,) row-major patch index of each position in cluster order (see ``order``)."""
        (gh, gw), c = self.grid, self.cluster_size
        idx = torch.arange(gh * gw).view(gh // c, c, gw // c, c)  # (cluster row, row in cluster, ...)
        if self.order == "column":
            return idx.permute(2, 0, 3, 1).reshape(-1)
        by_cluster = idx.permute(0, 2, 1, 3).reshape(self.num_clusters, c * c)  # row-major clusters
        return by_cluster[self.cluster_permutation()].reshape(-1)


CLUSTER_ORDERS = ("row", "column", "random")
PRETRAIN_TARGETS = ("norm_pix", "pix")


def default_memory_layers(depth: int, levels: int = 4) -> tuple[int, ...]:
    """Encoder blocks (1-based) whose outputs feed the decoder: every depth/6 blocks, ending at the
    last (the reference's 6, 8, 10, 12 for depth 12 and 12, 16, 20, 24 for depth 24)."""
    layers = tuple(round(depth - k * depth / 6) for k in reversed(range(levels)))
    if len(set(layers)) != levels or layers[0] < 1:
        raise ValueError(
            f"cannot space {levels} decoder memory levels over {depth} encoder blocks; "
            f"pass memory_layers explicitly (1-based block indices ending at {depth})"
        )
    return layers


def _init_encoder_(layers: nn.ModuleList, depth: int) -> None:
    """The reference's encoder init: Linear biases zero (except dt_proj's), out_proj re-drawn
    kaiming-uniform and divided by sqrt(depth) (GPT-2 rule, one residual per layer)."""
    for m in layers.modules():
        if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
            nn.init.zeros_(m.bias)
    for layer in layers:
        w = layer.mixer.out_proj.weight
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        with torch.no_grad():
            w /= math.sqrt(depth)


def _init_patch_embed_(patch_embed: PatchEmbed) -> None:
    lecun_normal_(patch_embed.proj.weight)
    if patch_embed.proj.bias is not None:
        nn.init.zeros_(patch_embed.proj.bias)


def _drop_path_rates(rate: float, depth: int, block: str = "mambamlp") -> list[float]:
    """Stochastic depth rate of each block's residual branches, as the reference of the block family applies
    them: linear from 0 to ``rate`` over depth; ARM's shifted by one block (block 0 and block 1 get 0, the
    last gets rate * (depth - 2) / (depth - 1)), Vim's not (block i's mixer output is dropped at
    rate * i / (depth - 1), the last block's at ``rate``; see :class:`~armvision.layers.VimBlock`)."""
    linear = [rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0]
    return linear if block == "vim" else [0.0] + linear[:-1]


def _resolve_block(block: str, expand: int | None) -> int:
    """Check the encoder block family; the mixer's expansion (``None``: the family's, 1 for MambaMLP, 2 for Vim)."""
    if block not in ENCODER_BLOCKS:
        raise ValueError(f"block {block!r}: expected one of {', '.join(ENCODER_BLOCKS)}")
    if expand is not None and int(expand) < 1:
        raise ValueError(f"expand must be a positive integer, got {expand}")
    return DEFAULT_EXPAND[block] if expand is None else int(expand)


def _encoder_blocks(block: str, dim: int, depth: int, directions: int, drop_path_rate: float,
                    **mamba_kwargs) -> nn.ModuleList:
    """``depth`` encoder blocks of the family ``block`` (:data:`~armvision.layers.ENCODER_BLOCKS`)."""
    dpr = _drop_path_rates(drop_path_rate, depth, block)
    cls = ENCODER_BLOCKS[block]
    return nn.ModuleList(cls(dim, directions=directions, drop_path=dpr[i], **mamba_kwargs) for i in range(depth))


def feature_take_indices(num_blocks: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute block indices selected by ``indices`` (timm's convention) and the largest of them.

    None: all blocks; an int n: the last n; a sequence: those indices, negative ones counting from the end.
    """
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"cannot take the last {indices} of {num_blocks} blocks (1 to {num_blocks})")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = []
        for i in indices:
            j = num_blocks + i if i < 0 else i
            if not 0 <= j < num_blocks:
                raise ValueError(f"block index {i} is out of range for {num_blocks} blocks "
                                 f"(0 to {num_blocks - 1}, or negative from the end)")
            take.append(j)
        if not take:
            raise ValueError("no block indices given")
    return take, max(take)


class _Encoder(nn.Module):
    """Shared pieces of both models: patch embedding, blocks, backend switch, no-decay names."""

    layers: nn.ModuleList

    def set_backend(self, backend: str) -> None:
        """Select the ops backend of every Mamba mixer ("auto", "torch", ...)."""
        ops.check_backend(backend)
        for m in self.modules():
            if hasattr(m, "scan_direction"):
                m.backend = backend

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters trained without weight decay beyond the 1-D ones, as the reference models
        list them: the position embedding and the class token (frozen in pretraining). ``A_log`` and
        ``ar_token`` are decayed there; Mamba's ``_no_weight_decay`` marks on ``A_log`` and ``D`` are read
        only by the training's ``optim.no_decay: mamba`` rule."""
        return {n for n in ("pos_embed", "cls_token") if hasattr(self, n)}


class ARMPretrain(_Encoder):
    """ARM pretraining model: predict the next cluster of patches from the previous ones.

    ``model(images)`` returns the scalar loss; ``model.predict(images)`` returns ``(pred, target)``,
    both (b, predicted tokens, patch * patch * channels), tokens in cluster order from cluster 2 on.

    Args:
        img_size, patch_size, in_chans: input geometry (192, 16, 3 in the paper).
        cluster_size: side of a cluster in patches (4: clusters of 4x4 patches).
        embed_dim, depth, d_state: encoder width, blocks, and SSM state size.
        decoder_dim, decoder_mlp_ratio, decoder_heads: decoder width (512), MLP ratio (4), heads
            (decoder_dim // 64 when None).
        memory_layers: 1-based encoder blocks feeding the decoder, one per decoder block
            (default: :func:`default_memory_layers` for 4 levels).
        cluster_order: order of the clusters (:class:`Geometry`): "row" (the paper's), "column", or
            "random" (a fixed permutation from ``order_seed``). The encoder reads and the decoder predicts
            in that order; the block-causal mask and the query position embeddings follow it.
        order_seed: seed of the "random" order (stored in the config, so the order is reproducible).
        target: "norm_pix" (each target patch normalized by its own mean and std, the paper's) or "pix"
            (the input pixels as they are, i.e. after the data mean/std normalization).
        norm_pix_loss: the older spelling of ``target`` (True: "norm_pix", False: "pix"); None follows ``target``.
        drop_path_rate: stochastic depth of the encoder (0 in the paper's pretraining).
        backend: ops backend of the Mamba mixers.
        block: the encoder's blocks: "mambamlp" (ARM's MambaMLP, the paper's) or "vim" (Vim's, scanning
            forward only: the causal encoder that autoregression needs; see docs/method.md).
        expand: the Mamba mixer's inner width, expand * embed_dim (None: 1 for "mambamlp", 2 for "vim").
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 192,
        patch_size: int = 16,
        in_chans: int = 3,
        cluster_size: int = 4,
        embed_dim: int = 768,
        depth: int = 12,
        d_state: int = 16,
        decoder_dim: int = 512,
        decoder_mlp_ratio: float = 4.0,
        decoder_heads: int | None = None,
        memory_layers: Sequence[int] | None = None,
        norm_pix_loss: bool | None = None,
        drop_path_rate: float = 0.0,
        backend: str = "auto",
        cluster_order: str = "row",
        order_seed: int = 0,
        target: str | None = None,
        block: str = "mambamlp",
        expand: int | None = None,
    ):
        super().__init__()
        expand = _resolve_block(block, expand)
        if target is not None and target not in PRETRAIN_TARGETS:
            raise ValueError(f"target {target!r}: expected one of {', '.join(PRETRAIN_TARGETS)}")
        if target is not None and norm_pix_loss is not None and norm_pix_loss != (target == "norm_pix"):
            raise ValueError(f"norm_pix_loss={norm_pix_loss} contradicts target={target!r}; give only target")
        target = target or ("pix" if norm_pix_loss is False else "norm_pix")
        norm_pix_loss = target == "norm_pix"
        geo = Geometry(_pair(img_size), patch_size, cluster_size, in_chans, cluster_order, order_seed)
        if geo.num_clusters < 2:
            raise ValueError(
                f"a {geo.grid[0]}x{geo.grid[1]} patch grid holds only one cluster of {cluster_size}x{cluster_size} "
                "patches; autoregressive pretraining needs at least two (use a smaller cluster size)"
            )
        memory_layers = tuple(memory_layers) if memory_layers is not None else default_memory_layers(depth)
        if list(memory_layers) != sorted(set(memory_layers)) or memory_layers[0] < 1 or memory_layers[-1] != depth:
            raise ValueError(
                f"memory_layers must be increasing 1-based block indices ending at the last block ({depth}), "
                f"got {memory_layers}"
            )
        ops.check_backend(backend)
        self.geometry = geo
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.memory_layers = memory_layers
        self.decoder_dim = decoder_dim
        self.norm_pix_loss = norm_pix_loss
        self.target = target
        self.config = saved_config(True, {**locals(), "img_size": geo.img_size})
        self.block = block
        levels = len(memory_layers)

        self.patch_embed = PatchEmbed(geo.img_size, patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, geo.grid)[None], requires_grad=False)
        self.layers = _encoder_blocks(block, embed_dim, depth, 1, drop_path_rate, d_state=d_state, expand=expand,
                                      backend=backend)
        for k in range(levels):  # names as the reference: norm_1 .. norm_4
            self.add_module(f"norm_{k + 1}", nn.LayerNorm(embed_dim))
        self.enc2dec = nn.Linear(levels * embed_dim, levels * decoder_dim)
        self.ar_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.dec_pos_embed = nn.Parameter(sincos_pos_embed_2d(decoder_dim, geo.grid)[None], requires_grad=False)
        heads = decoder_heads or max(1, decoder_dim // 64)
        self.dec_block = nn.ModuleList(DecoderBlock(decoder_dim, heads, decoder_mlp_ratio) for _ in range(levels))
        self.ar_norm = nn.LayerNorm(decoder_dim)
        self.ar_pred = nn.Linear(decoder_dim, geo.patch_dim)

        s = geo.patches_per_cluster
        n_in = geo.num_patches - s  # the last cluster is never input
        self.register_buffer("cluster_order", geo.cluster_order(), persistent=False)
        pos = torch.arange(n_in) // s  # cluster of each encoder token / of each query's context
        # query for cluster j+1 (0-based row i // s) attends to encoder tokens of clusters 0..j
        self.register_buffer("decoder_mask", pos[None, :] <= pos[:, None], persistent=False)
        self.init_weights()

    @property
    def num_input_tokens(self) -> int:
        """Encoder tokens: every cluster but the last."""
        return self.geometry.num_patches - self.geometry.patches_per_cluster

    def init_weights(self) -> None:
        """The reference initialisation (docs/method.md)."""
        _init_patch_embed_(self.patch_embed)
        trunc_normal_(self.ar_token, std=0.02)
        for layer in self.layers:
            layer.mixer.reset_parameters()
        _init_encoder_(self.layers, self.depth)
        for lin in (self.enc2dec, self.ar_pred):
            lin.reset_parameters()
            nn.init.zeros_(lin.bias)
        for m in self.dec_block.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- encoder / decoder ----------------------------------------------------------------------
    def forward_encoder(self, images: Tensor) -> Tensor:
        """Encode clusters 1..K-1; returns the decoder memory (b, tokens, decoder_dim, levels).

        Level k is channels k, k + levels, k + 2 * levels, ... of enc2dec's output, as the reference
        reshapes (..., levels * decoder_dim) to (..., decoder_dim, levels).
        """
        self._check_input(images)
        x = self.patch_embed(images) + self.pos_embed  # (b, n, c), row-major
        x = x[:, self.cluster_order[: self.num_input_tokens]]  # cluster order, last cluster dropped
        feats = []
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if i in self.memory_layers:
                feats.append(getattr(self, f"norm_{len(feats) + 1}")(x))
        memory = self.enc2dec(torch.cat(feats, dim=-1))
        b, t, _ = memory.shape
        return memory.view(b, t, self.decoder_dim, len(self.memory_layers))

    def forward_intermediates(
        self,
        images: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The causal encoder over *every* cluster of ``images``, with timm's conventions (as the classifier's).

        The clusters are read in the model's order (the position embedding resized bicubically when the patch
        grid differs from the model's; the grid must divide into clusters); maps and final tokens are put back
        in row-major grid order.

        Args:
            images: (b, in_chans, h, w).
            indices: blocks to return (0-based): an int n takes the last n, a sequence those indices (negative
                from the end), None all.
            norm: pass each returned block output through the last memory norm (``norm_{levels}``, the norm
                pretraining applies to the last block).
            stop_early: do not run the blocks after the last requested one.
            output_fmt: "NCHW" -> (b, c, gh, gw), "NHWC" -> (b, gh, gw, c), "NLC" -> (b, gh * gw, c).
            intermediates_only: return only the list of maps.

        Returns:
            the list of maps (in block order), or (the last block run's tokens after the last memory norm,
            (b, gh * gw, c), that list).
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        geo = self.geometry
        if images.dim() != 4 or images.shape[1] != geo.in_chans:
            raise ValueError(f"expected images (batch, {geo.in_chans}, height, width), got {tuple(images.shape)}")
        try:
            new = Geometry(tuple(images.shape[-2:]), geo.patch_size, geo.cluster_size, geo.in_chans, geo.order,
                           geo.order_seed)
        except ValueError as e:
            raise ValueError(f"the pretraining encoder reads whole clusters of {geo.cluster_size}x{geo.cluster_size} "
                             f"patches: {e}") from e
        take, max_index = feature_take_indices(len(self.layers), indices)
        pe = self.patch_embed
        x = pe.norm(pe.proj(images).flatten(2).transpose(1, 2))  # (b, n, c) row-major, any grid
        x = x + resize_pos_embed(self.pos_embed, geo.grid, new.grid).to(x.dtype)
        order = new.cluster_order().to(x.device)
        inverse = torch.argsort(order)
        x = x[:, order]
        final_norm = getattr(self, f"norm_{len(self.memory_layers)}")
        layers = self.layers[: max_index + 1] if stop_early else self.layers
        maps = []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i in take:
                y = (final_norm(x) if norm else x)[:, inverse]
                if output_fmt != "NLC":
                    y = y.reshape(y.shape[0], *new.grid, y.shape[-1])
                    if output_fmt == "NCHW":
                        y = y.permute(0, 3, 1, 2).contiguous()
                maps.append(y)
        if intermediates_only:
            return maps
        return final_norm(x)[:, inverse], maps

    def forward_decoder(self, memory: Tensor) -> Tensor:
        """Predict clusters 2..K from the memory; returns (b, tokens, patch * patch * channels)."""
        s = self.geometry.patches_per_cluster
        queries = (self.ar_token + self.dec_pos_embed)[:, self.cluster_order[s:]]  # clusters 2..K
        q = queries.expand(memory.shape[0], -1, -1).to(memory.dtype)
        for k, blk in enumerate(self.dec_block):
            q = blk(q, memory[..., k], self.decoder_mask)
        return self.ar_pred(self.ar_norm(q))

    # -- targets --------------------------------------------------------------------------------
    def patchify(self, images: Tensor) -> Tensor:
        """(b, c, h, w) -> (b, patches, p * p * c), patches row-major, pixels (row, column, channel)."""
        b, c, h, w = images.shape
        p = self.geometry.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Inverse of :meth:`patchify`: (b, patches, p * p * c) row-major -> (b, c, h, w)."""
        (gh, gw), p, c = self.geometry.grid, self.geometry.patch_size, self.geometry.in_chans
        x = patches.reshape(patches.shape[0], gh, gw, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], c, gh * p, gw * p)

    def targets(self, images: Tensor) -> Tensor:
        """Prediction targets of clusters 2..K in cluster order: (b, tokens, p * p * c), fp32."""
        t = self.patchify(images.float())
        if self.norm_pix_loss:
            mean = t.mean(dim=-1, keepdim=True)
            var = t.var(dim=-1, keepdim=True)  # unbiased, as the reference
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t[:, self.cluster_order[self.geometry.patches_per_cluster:]]

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(pred, target), both (b, tokens, patch * patch * channels), for clusters 2..K."""
        pred = self.forward_decoder(self.forward_encoder(images))
        return pred, self.targets(images)

    def forward(self, images: Tensor) -> Tensor:
        """Mean squared error of the next-cluster prediction (mean over pixels, tokens and batch)."""
        pred, target = self.predict(images)
        return (pred.float() - target).pow(2).mean()

    def _check_input(self, images: Tensor) -> None:
        geo = self.geometry
        expected = (geo.in_chans, *geo.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"ARM pretraining model expects images of shape (batch, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(images.shape)}; resize/crop the input or build the model "
                f"with img_size={tuple(images.shape[-2:])}"
            )


class ARMClassifier(_Encoder):
    """Four-direction MambaMLP classifier with a class token in the middle of the sequence; with
    ``block="vim"``, the Vim classifier (the ``vim_*`` names of :mod:`armvision.models.vim` set Vim's
    defaults: 2 directions, the class token pooled, head init std 0.02).

    timm conventions: ``model(images)`` gives logits, ``forward_features`` the normed token
    sequence (b, tokens, width), ``forward_head(tokens, pre_logits=True)`` the pooled feature.

    Args:
        img_size, patch_size, in_chans: input geometry (224, 16, 3).
        num_classes: classes of the head (0: no head, features only).
        embed_dim, depth, d_state: encoder width, blocks and SSM state size.
        global_pool: "avg" (mean over patch tokens, class token excluded; the paper's) or "token"
            (the middle class token).
        drop_rate: dropout after the position embedding.
        drop_path_rate: stochastic depth, linear over the blocks (for MambaMLP blocks shifted by one block).
        directions: 4 (the paper's fine-tuning), 2 (forward and backward: Vim) or 1 (causal, as in pretraining).
        dynamic_img_size: accept other input sizes, resizing the position embedding on the fly.
        head_init_std: std of the head's truncated-normal init (2e-5, as MAE/ARM fine-tuning).
        backend: ops backend of the Mamba mixers.
        block: the encoder's blocks: "mambamlp" (ARM's MambaMLP; final LayerNorm) or "vim" (Vim's; final RMSNorm).
        expand: the Mamba mixer's inner width, expand * embed_dim (None: 1 for "mambamlp", 2 for "vim").
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        d_state: int = 16,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        directions: int = 4,
        dynamic_img_size: bool = False,
        head_init_std: float = 2e-5,
        backend: str = "auto",
        block: str = "mambamlp",
        expand: int | None = None,
    ):
        super().__init__()
        expand = _resolve_block(block, expand)
        geo = Geometry(_pair(img_size), patch_size, 1, in_chans)
        self._check_pool(global_pool)
        ops.check_backend(backend)
        self.geometry = geo
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.depth = depth
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size
        self.head_init_std = head_init_std
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.config = saved_config(False, {**locals(), "img_size": geo.img_size})
        self.block = block

        self.patch_embed = PatchEmbed(geo.img_size, patch_size, in_chans, embed_dim,
                                      strict_img_size=not dynamic_img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, geo.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.layers = _encoder_blocks(block, embed_dim, depth, directions, drop_path_rate, d_state=d_state,
                                      expand=expand, backend=backend)
        self.norm_f = nn.RMSNorm(embed_dim, eps=1e-5) if block == "vim" else nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # timm's feature metadata: every block's output is a token map at stride patch_size
        self.feature_info = [dict(module=f"layers.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.init_weights()

    @property
    def cls_index(self) -> int:
        """Position of the class token at the model's own resolution (the middle: patches // 2)."""
        return self.geometry.num_patches // 2

    def init_weights(self) -> None:
        _init_patch_embed_(self.patch_embed)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        for layer in self.layers:
            layer.mixer.reset_parameters()
        _init_encoder_(self.layers, self.depth)
        self.norm_f.reset_parameters()
        self._init_head()

    def _init_head(self) -> None:
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=self.head_init_std)
            nn.init.zeros_(self.head.bias)

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool must be 'avg' (mean of patch tokens) or 'token' (class token), "
                             f"got {global_pool!r}")

    # -- timm conventions -----------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm's ``param_groups_layer_decay``)."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            # norm_f is left unmatched: timm then groups it with the head (lr scale 1), as the reference
            # fine-tuning does (its layer id for everything after the blocks is num_layers)
            blocks=[(r"^layers\.(\d+)", None)],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (timm's ``--grad-checkpointing``)."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.config.update(num_classes=num_classes, global_pool=self.global_pool)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head.to(self.cls_token.device)
        self._init_head()

    # -- forward --------------------------------------------------------------------------------
    def token_layout(self, grid: tuple[int, int]) -> TokenLayout:
        """Layout of the token sequence for a patch grid: class token in the middle."""
        return TokenLayout(tuple(grid), (grid[0] * grid[1]) // 2)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """Position embedding (1, grid tokens + 1, c) for a patch grid, resized bicubically if needed."""
        return resize_classifier_pos_embed(self.pos_embed, self.geometry.grid, grid)

    def embed(self, images: Tensor) -> tuple[Tensor, TokenLayout]:
        """Patch tokens + class token + position embedding: ((b, tokens, c), layout)."""
        self._check_input(images)
        x = self.patch_embed(images)  # (b, n, c) row-major
        p = self.geometry.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        layout = self.token_layout(grid)
        x = insert_token_slot(x, layout.cls_index, self.cls_token.to(x.dtype))
        x = self.pos_drop(x + self.pos_embed_for(grid))
        return x, layout

    def _run_layer(self, layer: nn.Module, x: Tensor, layout: TokenLayout) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(layer, x, layout, use_reentrant=False)
        return layer(x, layout)

    def forward_features(self, images: Tensor) -> Tensor:
        """Normed token sequence (b, patches + 1, width), class token at index patches // 2."""
        x, layout = self.embed(images)
        for layer in self.layers:
            x = self._run_layer(layer, x, layout)
        return self.norm_f(x)

    def forward_intermediates(
        self,
        images: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Block outputs as patch-token maps, with timm's conventions (as its ViT).

        Args:
            images: (b, in_chans, h, w); any size that divides into patches when ``dynamic_img_size``.
            indices: blocks to return (0-based): an int n takes the last n blocks, a sequence takes those
                indices (negative ones count from the end), None takes all.
            norm: pass each returned block output through the final norm (norm_f).
            stop_early: do not run the blocks after the last requested one (the final features are then
                those of the last block run).
            output_fmt: "NCHW" -> (b, c, gh, gw), "NHWC" -> (b, gh, gw, c), "NLC" -> (b, gh * gw, c);
                patch tokens in row-major grid order, the class token removed.
            intermediates_only: return only the list of maps.
            return_prefix_tokens: return (map, class token (b, 1, c)) pairs instead of maps.

        Returns:
            the list of maps (in block order), or (normed final token sequence (b, tokens, c), that list).
        """
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        x, layout = self.embed(images)
        layers = self.layers[: max_index + 1] if stop_early else self.layers
        intermediates = []
        for i, layer in enumerate(layers):
            x = self._run_layer(layer, x, layout)
            if i in take:
                intermediates.append(self.norm_f(x) if norm else x)
        c, (gh, gw) = layout.cls_index, layout.grid
        prefix = [y[:, c:c + 1] for y in intermediates]
        maps = []
        for y in intermediates:
            y = torch.cat([y[:, :c], y[:, c + 1:]], dim=1)  # (b, gh * gw, c) row-major
            if output_fmt != "NLC":
                y = y.reshape(y.shape[0], gh, gw, y.shape[-1])
                if output_fmt == "NCHW":
                    y = y.permute(0, 3, 1, 2).contiguous()
            maps.append(y)
        out = list(zip(maps, prefix)) if return_prefix_tokens else maps
        if intermediates_only:
            return out
        return self.norm_f(x), out

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and optionally norm_f and the head), as timm's
        feature wrappers expect. Returns the absolute block indices kept for ``forward_intermediates``."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def pool(self, tokens: Tensor) -> Tensor:
        """(b, tokens, c) -> (b, c): mean of the patch tokens, or the class token."""
        c = (tokens.shape[1] - 1) // 2
        if self.global_pool == "token":
            return tokens[:, c]
        return torch.cat([tokens[:, :c], tokens[:, c + 1:]], dim=1).mean(dim=1)

    def forward_head(self, tokens: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(tokens)
        return x if pre_logits else self.head(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def _check_input(self, images: Tensor) -> None:
        geo = self.geometry
        if images.dim() != 4 or images.shape[1] != geo.in_chans:
            raise ValueError(f"expected images (batch, {geo.in_chans}, height, width), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if self.dynamic_img_size:
            if h % geo.patch_size or w % geo.patch_size:
                raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {geo.patch_size}")
        elif (h, w) != geo.img_size:
            raise ValueError(
                f"model expects {geo.img_size[0]}x{geo.img_size[1]} images, got {h}x{w}; resize the input, "
                f"or create the model with img_size={h} or dynamic_img_size=True"
            )
