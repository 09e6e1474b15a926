"""The two-tower CLIP model: image tower, text tower, and one learnable logit scale.

`TwoTowers.__call__` returns L2-normalised image and text embeddings and the (clamped) logit scale;
the loss is computed outside the model (rankclip_jax.losses), from those arrays alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankclip_jax.data.tokenizer import EOT_ID, VOCAB_SIZE
from rankclip_jax.models import platform_defaults
from rankclip_jax.models.text import TextTransformer
from rankclip_jax.models.vit import VisionTransformer

Dtype = Any


@dataclasses.dataclass(frozen=True)
class TowerSizes:
  patch_size: int
  image_width: int
  image_depth: int
  image_heads: int
  text_width: int
  text_depth: int
  text_heads: int
  embed_dim: int


# Named sizes. B/32, B/16 and L/14 are CLIP's (text tower: 12 layers, width 512, 8 heads for B;
# 768/12 for L). "micro" is for unit tests, "tiny" for the CPU demo.
SIZES: dict[str, TowerSizes] = {
    "micro": TowerSizes(8, 32, 2, 2, 32, 2, 2, 32),
    "tiny": TowerSizes(8, 128, 4, 4, 128, 4, 4, 128),
    "S/16": TowerSizes(16, 384, 12, 6, 384, 12, 6, 384),
    "B/32": TowerSizes(32, 768, 12, 12, 512, 12, 8, 512),
    "B/16": TowerSizes(16, 768, 12, 12, 512, 12, 8, 512),
    "L/14": TowerSizes(14, 1024, 24, 16, 768, 12, 12, 768),
}

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def l2_normalize(x, axis=-1, eps=1e-6):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def clamp_logit_scale(logit_scale, max_value=LOGIT_SCALE_MAX):
  # `where` rather than `minimum`: at exactly the maximum the gradient must reach the parameter
  # whole (jnp.minimum splits it between its two arguments on a tie).
  return jnp.where(logit_scale > max_value, max_value, logit_scale)


class TwoTowers(nn.Module):
  sizes: TowerSizes
  context_length: int
  vocab_size: int = VOCAB_SIZE
  eot_id: int = EOT_ID
  act: str = "gelu"
  ln_eps: float = 1e-6
  pool: str = "cls"
  stem: str = "patch"
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan: bool = False
  recompute_elementwise: bool = True  # transformer.EncoderBlock
  last_block_pooled_only: bool = True  # transformer.Encoder
  # einsum | xla | cudnn (transformer.SelfAttention); build_model resolves config.model.attention's
  # "auto" for the platform (platform_defaults.py).
  attention: str = "einsum"
  patch_dropout: float = 0.0  # FLIP's share of image patch tokens dropped in training (vit.py)
  dtype: Dtype = jnp.float32
  logit_scale_init: float = LOGIT_SCALE_INIT
  logit_scale_max: float = LOGIT_SCALE_MAX
  # A learnable logit bias (SigLIP's b), a scalar parameter "logit_bias"; None: no such parameter.
  # The loss reads it from the parameters (it is not part of __call__'s outputs).
  logit_bias_init: Optional[float] = None

  def setup(self):
    s = self.sizes
    self.image = VisionTransformer(
        patch_size=s.patch_size, width=s.image_width, depth=s.image_depth,
        num_heads=s.image_heads, embed_dim=s.embed_dim, pool=self.pool, stem=self.stem, act=self.act,
        ln_eps=self.ln_eps, remat=self.remat, remat_policy=self.remat_policy, scan=self.scan,
        recompute_elementwise=self.recompute_elementwise,
        last_block_pooled_only=self.last_block_pooled_only, attention=self.attention,
        patch_dropout=self.patch_dropout, dtype=self.dtype)
    self.text = TextTransformer(
        vocab_size=self.vocab_size, context_length=self.context_length, width=s.text_width,
        depth=s.text_depth, num_heads=s.text_heads, embed_dim=s.embed_dim, eot_id=self.eot_id,
        act=self.act, ln_eps=self.ln_eps, remat=self.remat, remat_policy=self.remat_policy,
        scan=self.scan, recompute_elementwise=self.recompute_elementwise,
        last_block_pooled_only=self.last_block_pooled_only, attention=self.attention,
        dtype=self.dtype)
    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32)
    if self.logit_bias_init is not None:
      self.logit_bias = self.param(
          "logit_bias", nn.initializers.constant(self.logit_bias_init), (), jnp.float32)

  def encode_image(self, images, *, train: bool = False):
    """[B, H, W, 3] -> L2-normalised float32 [B, embed_dim]. train: patch dropout, if any (its
    "patch_dropout" rng is then needed)."""
    return l2_normalize(self.image(images, train=train))

  def encode_text(self, tokens):
    """int [B, L] -> L2-normalised float32 [B, embed_dim]."""
    return l2_normalize(self.text(tokens))

  def __call__(self, images: Optional[jax.Array], tokens: Optional[jax.Array], *,
               train: bool = False):
    """Returns (image_emb, text_emb, logit_scale); either input may be None (its output is None).
    train=True applies training-only behaviour (patch dropout)."""
    image_emb = None if images is None else self.encode_image(images, train=train)
    text_emb = None if tokens is None else self.encode_text(tokens)
    return image_emb, text_emb, clamp_logit_scale(self.logit_scale, self.logit_scale_max)


def tower_sizes(model_config) -> TowerSizes:
  """config.model.size by name, or config.model.custom's fields for size "custom" (a converted
  OpenCLIP model whose towers are none of the named sizes)."""
  if model_config.size == "custom":
    fields = {f.name: int(model_config.custom[f.name]) for f in dataclasses.fields(TowerSizes)}
    bad = [k for k, v in fields.items() if v <= 0]
    if bad:
      raise ValueError(f"config.model.size='custom' needs config.model.custom.{bad[0]} > 0 "
                       f"(got {fields}).")
    return TowerSizes(**fields)
  if model_config.size not in SIZES:
    raise ValueError(
        f"config.model.size={model_config.size!r} is not a known size; choose one of "
        f"{sorted(SIZES)} or 'custom' (with config.model.custom).")
  return SIZES[model_config.size]


def build_model(model_config, *, context_length: int, logit_bias: bool = False,
                platform: Optional[str] = None) -> TwoTowers:
  """Builds TwoTowers from `config.model` (fields: size, custom, act, ln_eps, pool, stem, remat,
  remat_policy, scan_layers, recompute_elementwise, last_block_pooled_only, attention,
  patch_dropout, dtype, init_scale, init_bias). `logit_bias`: give the model a learnable logit bias
  initialised at init_bias (the trainer asks for it when the loss has one: SigLIP). The fields that
  depend on the platform (platform_defaults.py) are resolved for `platform` (default: JAX's
  default backend)."""
  sizes = tower_sizes(model_config)
  chosen = platform_defaults.resolve(model_config, platform)
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if model_config.dtype not in dtypes:
    raise ValueError(f"config.model.dtype={model_config.dtype!r}; choose one of {sorted(dtypes)}.")
  return TwoTowers(
      sizes=sizes, context_length=context_length, act=model_config.act,
      ln_eps=float(model_config.get("ln_eps", 1e-6)),
      pool=model_config.pool, stem=model_config.stem, remat=model_config.remat,
      remat_policy=model_config.get("remat_policy", "nothing_saveable"),
      scan=bool(model_config.get("scan_layers", False)),
      recompute_elementwise=chosen["recompute_elementwise"],
      last_block_pooled_only=chosen["last_block_pooled_only"], attention=chosen["attention"],
      patch_dropout=float(model_config.get("patch_dropout", 0.0)),
      dtype=dtypes[model_config.dtype], logit_scale_init=math.log(model_config.init_scale),
      logit_bias_init=float(model_config.init_bias) if logit_bias else None)
