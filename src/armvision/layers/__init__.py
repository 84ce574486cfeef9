"""Building blocks of ARM models: the Mamba mixer, the MambaMLP and Vim blocks, the decoder, patch and position
embeddings."""

from .block import DEFAULT_EXPAND, ENCODER_BLOCKS, MambaMLPBlock, SwiGLU, VimBlock, swiglu_hidden_dim
from .decoder import CrossAttention, DecoderBlock, Mlp
from .mamba import DIRECTIONS, Mamba, TokenLayout, direction_index
from .patch_embed import PatchEmbed
from .pos_embed import insert_token_slot, resize_classifier_pos_embed, resize_pos_embed, sincos_pos_embed_2d

__all__ = [
    "Mamba",
    "TokenLayout",
    "DIRECTIONS",
    "direction_index",
    "MambaMLPBlock",
    "VimBlock",
    "ENCODER_BLOCKS",
    "DEFAULT_EXPAND",
    "SwiGLU",
    "swiglu_hidden_dim",
    "CrossAttention",
    "DecoderBlock",
    "Mlp",
    "PatchEmbed",
    "sincos_pos_embed_2d",
    "resize_pos_embed",
    "insert_token_slot",
    "resize_classifier_pos_embed",
]
