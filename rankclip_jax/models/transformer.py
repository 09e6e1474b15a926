"""Pre-LN transformer encoder shared by the image and text towers (CLIP layout)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def quick_gelu(x):
  """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
}


def get_activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


class MlpBlock(nn.Module):
  mlp_dim: int
  act: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
    x = get_activation(self.act)(x)
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class EncoderBlock(nn.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None):
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, name="attn")(y, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_2")(x)
    y = MlpBlock(self.mlp_dim, act=self.act, dtype=self.dtype, name="mlp")(y)
    return x + y


class Encoder(nn.Module):
  """A stack of `depth` EncoderBlocks named block_0..block_{depth-1}.

  remat=True recomputes each block's activations in the backward pass (less memory, ~1/3 more
  compute), which is what lets large batches fit.
  """

  depth: int
  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None):
    block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_dim, act=self.act, ln_eps=self.ln_eps,
                    dtype=self.dtype, name=f"block_{i}")(x, mask)
    return x
