"""Causal transformer text tower, CLIP layout.

token + learned position embedding -> pre-LN encoder with a causal mask -> ln_final -> the feature at
the end-of-text token -> linear projection (no bias) to the shared embedding width.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rankclip_jax.models.transformer import Encoder

Dtype = Any


class TextTransformer(nn.Module):
  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  embed_dim: int
  eot_id: int
  mlp_ratio: float = 4.0
  act: str = "gelu"
  ln_eps: float = 1e-6  # flax's default; torch's (OpenCLIP weights) is 1e-5
  remat: bool = False
  remat_policy: str = "nothing_saveable"  # transformer.REMAT_POLICIES
  scan: bool = False  # nn.scan over the blocks (transformer.Encoder)
  recompute_elementwise: bool = True  # transformer.EncoderBlock
  last_block_pooled_only: bool = True  # transformer.Encoder
  attention: str = "einsum"  # transformer.SelfAttention
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    """tokens: int [B, L] with L <= context_length -> features [B, embed_dim] (not normalised)."""
    if tokens.ndim != 2:
      raise ValueError(f"TextTransformer expects tokens [B, L], got {tokens.shape}.")
    length = tokens.shape[1]
    if length > self.context_length:
      raise ValueError(
          f"Token sequences have length {length} > context_length={self.context_length}.")
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding")(tokens).astype(self.dtype)
    pos = self.param("pos_embedding", nn.initializers.normal(0.01),
                     (self.context_length, self.width))
    x = x + pos[:length].astype(self.dtype)
    # Pool at the first end-of-text token. The tokenizer's truncation always keeps it; a row with
    # none (hand-made input) falls back to the last position. The encoder returns that token's
    # output only (and computes only it in its last block: Encoder.last_block_pooled_only).
    is_eot = tokens == self.eot_id
    eot_pos = jnp.where(is_eot.any(axis=-1), jnp.argmax(is_eot, axis=-1), length - 1)
    x = Encoder(self.depth, self.num_heads, int(self.width * self.mlp_ratio), act=self.act,
                ln_eps=self.ln_eps, remat=self.remat, remat_policy=self.remat_policy,
                scan=self.scan, recompute_elementwise=self.recompute_elementwise,
                last_block_pooled_only=self.last_block_pooled_only, causal=True,
                attention=self.attention, dtype=self.dtype, name="encoder")(
                    x, eot_pos.astype(jnp.int32))
    pooled = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_final")(x)
    return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, name="proj")(pooled)
