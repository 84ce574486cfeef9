"""The Vim family (Vision Mamba, Zhu et al., ICML 2024; reference code hustvl/Vim) in armvision's models.

A Vim is the classifier of :mod:`armvision.models.arm` with Vim's encoder blocks,
``ARMClassifier(block="vim", directions=2, global_pool="token", head_init_std=0.02)``:

- patch embedding (16x16, stride 16), a class token inserted in the middle of the patch sequence (index
  patches // 2), a learned absolute position embedding over patches + 1 tokens, dropout;
- ``depth`` Vim blocks (:class:`~armvision.layers.VimBlock`): x = x + drop_path(Mamba(RMSNorm(x))), the residual
  in float32, no MLP; the mixer has expand 2 and scans forward and backward with its own ``conv1d_b``,
  ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b`` and shared ``in_proj`` / ``out_proj``, which take the mean
  of the two scans (Vim's "bimamba v2" with its divide-out by 2);
- final RMSNorm ``norm_f``; the feature is the class token (the reference's registered configs say
  ``final_pool_type='mean'``, but with a class token their ``forward_features`` returns the class token before
  reaching the pooling), then the head.

The names below build the reference's three ``*_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_mid*``
models (:data:`REFERENCE_NAMES`) with their published sizes (7M, 26M, 98M parameters at 224 px and 1000
classes). Parameter names are the reference's, so its checkpoints map by name
(:mod:`armvision.interop.official_vim`).

ARM pretraining of a Vim encoder is ``ARMPretrain(block="vim")``: ARM's decoder and objective over Vim blocks
that scan forward only (autoregression needs a causal encoder); fine-tuning copies the forward direction into
the backward one, as ARM's fine-tuning does for its four directions (docs/method.md).
"""

from __future__ import annotations

from .config import family_classifier_args

__all__ = ["VIM_SIZES", "VIM_CLASSIFIER_ARGS", "REFERENCE_NAMES"]

# name -> encoder size (everything else as the reference: patch 16, d_state 16, expand 2)
VIM_SIZES: dict[str, dict] = {
    "vim_tiny_pz16": dict(embed_dim=192, depth=24, block="vim"),
    "vim_small_pz16": dict(embed_dim=384, depth=24, block="vim"),
    "vim_base_pz16": dict(embed_dim=768, depth=24, block="vim"),
}

# what makes the classifier a Vim (beyond the encoder blocks): two scan directions, the class token as the
# feature, the head initialised as Vim's (trunc-normal std 0.02, zero bias): the defaults in which
# armvision.models.config.VimClassifierConfig differs from ClassifierConfig
VIM_CLASSIFIER_ARGS: dict = family_classifier_args("vim")

# armvision name -> the reference's registered model name (hustvl/Vim vim/models_mamba.py)
REFERENCE_NAMES: dict[str, str] = {
    "vim_tiny_pz16": "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim_small_pz16": "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim_base_pz16": "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
}
