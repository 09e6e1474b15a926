"""Vision Transformer image tower, CLIP layout.

patchify (conv, no bias) -> [cls] + tokens + learned position embedding -> ln_pre -> pre-LN encoder
-> ln_post on the pooled token -> linear projection (no bias) to the shared embedding width.
"""

from __future__ import annotations

from typing import Any

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankclip_jax.models.transformer import Encoder

Dtype = Any


class VisionTransformer(nn.Module):
  patch_size: int
  width: int
  depth: int
  num_heads: int
  embed_dim: int
  mlp_ratio: float = 4.0
  pool: str = "cls"  # "cls" (CLIP) or "gap" (mean over patch tokens)
  # "patch": one linear projection per patch (CLIP). "conv": log2(patch_size) 3x3 stride-2
  # convolutions then a 1x1 projection (Xiao et al. 2021, "Early convolutions help transformers see
  # better"): same token grid, much faster to learn shape from little data (the CPU demo uses it).
  stem: str = "patch"
  act: str = "gelu"
  ln_eps: float = 1e-6  # flax's default; torch's (OpenCLIP weights) is 1e-5
  remat: bool = False
  remat_policy: str = "nothing_saveable"  # transformer.REMAT_POLICIES
  scan: bool = False  # nn.scan over the blocks (transformer.Encoder)
  recompute_elementwise: bool = True  # transformer.EncoderBlock
  last_block_pooled_only: bool = True  # transformer.Encoder (pool "cls" only)
  attention: str = "einsum"  # transformer.SelfAttention
  # FLIP (Li et al. 2023): in training, drop this fraction of the patch tokens of each image at
  # random before the encoder (the class token is always kept), so a step costs about that much less
  # of the image tower. Never at evaluation (train=False), so loading and export are unaffected.
  patch_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """images: float [B, H, W, 3] (already normalised) -> features [B, embed_dim] (not normalised).

    train=True with patch_dropout > 0 draws the dropped patches from the "patch_dropout" rng stream
    (model.apply(..., rngs={"patch_dropout": key})): a different subset for every image.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"VisionTransformer expects images [B, H, W, 3], got {images.shape}.")
    _, h, w, _ = images.shape
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(
          f"Image size {h}x{w} is not divisible by patch_size={self.patch_size}; "
          "change config.image_size or the model size.")
    x = self._stem(images.astype(self.dtype))
    b, gh, gw, c = x.shape
    x = x.reshape(b, gh * gw, c)
    scale = self.width ** -0.5
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"Unknown pool {self.pool!r}; choose 'cls' or 'gap'.")
    with_cls = self.pool == "cls"
    if with_cls:
      cls = self.param("cls", nn.initializers.normal(scale), (self.width,))
    pos = self.param("pos_embedding", nn.initializers.normal(scale),
                     (gh * gw + with_cls, self.width))
    if train and self.patch_dropout > 0:
      # Position embeddings first, so each kept token keeps its place in the image.
      x = _keep_random_tokens(x + pos[with_cls:].astype(x.dtype), self.patch_dropout,
                              self.make_rng("patch_dropout"))
      if with_cls:
        first = (cls + pos[0]).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(first, (b, 1, c)), x], axis=1)
    else:
      if with_cls:
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, c)), x], axis=1)
      x = x + pos.astype(x.dtype)
    x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_pre")(x)
    encoder = Encoder(self.depth, self.num_heads, int(self.width * self.mlp_ratio), act=self.act,
                      ln_eps=self.ln_eps, remat=self.remat, remat_policy=self.remat_policy,
                      scan=self.scan, recompute_elementwise=self.recompute_elementwise,
                      last_block_pooled_only=self.last_block_pooled_only,
                      attention=self.attention, dtype=self.dtype, name="encoder")
    if self.pool == "cls":  # the class token's output only (Encoder.last_block_pooled_only)
      pooled = encoder(x, pool_index=jnp.zeros((b,), jnp.int32))
    else:
      pooled = encoder(x).mean(axis=1)
    pooled = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_post")(pooled)
    return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, name="proj")(pooled)

  def _stem(self, x):
    if self.stem == "patch":
      return nn.Conv(self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
                     padding="VALID", use_bias=False, dtype=self.dtype, name="patch_embed")(x)
    if self.stem != "conv":
      raise ValueError(f"Unknown stem {self.stem!r}; choose 'patch' or 'conv'.")
    levels = int(math.log2(self.patch_size))
    if 2 ** levels != self.patch_size:
      raise ValueError(f"stem='conv' needs a power-of-two patch_size, got {self.patch_size}.")
    for i in range(levels):
      channels = max(self.width // 2 ** (levels - 1 - i), 32)
      x = nn.Conv(channels, (3, 3), strides=2, padding="SAME", dtype=self.dtype,
                  name=f"stem_conv_{i}")(x)
      x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name=f"stem_ln_{i}")(x)
      x = nn.gelu(x)
    return nn.Conv(self.width, (1, 1), dtype=self.dtype, name="patch_embed")(x)


def kept_tokens(num_patches: int, patch_dropout: float) -> int:
  """How many of `num_patches` patch tokens an image keeps under patch dropout (at least one)."""
  if not 0.0 <= patch_dropout < 1.0:
    raise ValueError(f"patch_dropout={patch_dropout} must be in [0, 1).")
  return max(1, int(round(num_patches * (1.0 - patch_dropout))))


def _keep_random_tokens(x, patch_dropout: float, rng):
  """[B, N, C] -> [B, K, C]: for each row, K = kept_tokens(N) tokens chosen uniformly at random
  without replacement (the K largest of N uniform draws), kept in their original order."""
  b, n, _ = x.shape
  k = kept_tokens(n, patch_dropout)
  _, keep = jax.lax.top_k(jax.random.uniform(rng, (b, n)), k)
  keep = jnp.sort(keep, axis=1)
  return jnp.take_along_axis(x, keep[:, :, None], axis=1)
