"""Pre-LN transformer encoder shared by the image and text towers (CLIP layout)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def gelu(x):
  """The exact GELU, x * Phi(x), written with erf: 0.5 x (1 + erf(x / sqrt 2)), as PyTorch computes
  it. jax.nn.gelu's exact form uses erfc, whose XLA CPU expansion (exponentials and branches)
  does not fuse with the neighbouring ops of the step. The two agree to 1e-6 everywhere."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


def quick_gelu(x):
  """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
}


# Which intermediates of a block the backward pass keeps when model.remat is on (the rest are
# recomputed): names of jax.checkpoint_policies.
REMAT_POLICIES: dict[str, Callable[..., bool]] = {
    # Only each block's input: the least memory, the whole block's forward recomputed.
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    # Also the outputs of matrix multiplies without batch dimensions (the projections and MLP
    # layers, not attention's batched QK^T and AV): no projection recomputed, attention and
    # elementwise ops are.
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Every matrix-multiply output, attention's included: only elementwise work is recomputed.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def get_remat_policy(name: str):
  if name not in REMAT_POLICIES:
    raise ValueError(f"Unknown rematerialisation policy {name!r}; choose one of "
                     f"{sorted(REMAT_POLICIES)}.")
  return REMAT_POLICIES[name]


def get_activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


class _Projection(nn.Module):
  """The kernel and bias of one of attention's projections, made as flax's nn.DenseGeneral makes
  them (names, shapes, initial values: LeCun normal over the `fan_in_axes` leading axes, zero
  bias), for SelfAttention to multiply by itself."""

  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  fan_in_axes: int

  @nn.compact
  def __call__(self):
    def init(rng, shape, dtype=jnp.float32):
      fan_in = int(np.prod(shape[:self.fan_in_axes]))
      flat = nn.initializers.lecun_normal()(rng, (fan_in, int(np.prod(shape)) // fan_in), dtype)
      return flat.reshape(shape)

    return (self.param("kernel", init, self.kernel_shape),
            self.param("bias", nn.initializers.zeros, self.bias_shape))


class SelfAttention(nn.Module):
  """Multi-head self-attention.

  Its parameters are those of flax's nn.MultiHeadDotProductAttention, initial values included:
  query/key/value {kernel [width, heads, head_dim], bias [heads, head_dim]} and out {kernel [heads,
  head_dim, width], bias [width]}, so checkpoints and the OpenCLIP converter see no difference. The
  computation differs in layout only: the three projections are one matrix multiply, written
  straight into [3, batch, heads, tokens, head_dim], the layout attention's two batched products
  read without a transpose (on a 2-core CPU the tiny demo's training step is ~6% shorter than with
  flax's module; docs/benchmarks.md). The softmax runs in float32 whatever the model's dtype.

  mask: boolean, broadcastable to [batch, heads, tokens, tokens]; False where a query may not attend.
  query_index: int [batch] or None. Given, only that token of each row is a query: the output is
  [batch, 1, width], that token's attention over all the row's tokens (the keys and values are
  still every token's), what the full computation gives at that position.
  """

  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None,
               query_index: Optional[jax.Array] = None):
    width = x.shape[-1]
    heads = self.num_heads
    if width % heads:
      raise ValueError(f"Attention width {width} is not divisible by num_heads={heads}.")
    head_dim = width // heads
    qkv = [_Projection((width, heads, head_dim), (heads, head_dim), 1, name=n)()
           for n in ("query", "key", "value")]
    out_kernel, out_bias = _Projection((heads, head_dim, width), (width,), 2, name="out")()
    kernel = jnp.stack([k for k, _ in qkv], axis=1).astype(self.dtype)  # [W, 3, H, D]
    bias = jnp.stack([b for _, b in qkv]).astype(self.dtype)  # [3, H, D]
    x = x.astype(self.dtype)
    if query_index is None:
      q, k, v = jnp.einsum("btw,wshd->sbhtd", x, kernel) + bias[:, None, :, None, :]
    else:
      k, v = jnp.einsum("btw,wshd->sbhtd", x, kernel[:, 1:]) + bias[1:, None, :, None, :]
      q = (jnp.einsum("btw,whd->bhtd", take_tokens(x, query_index), kernel[:, 0])
           + bias[0, None, :, None, :])
      if mask is not None and mask.shape[-2] > 1:  # the query rows of the mask
        mask = jnp.broadcast_to(mask, (x.shape[0],) + mask.shape[1:])
        mask = jnp.take_along_axis(mask, query_index[:, None, None, None], axis=2)
    q = q * np.asarray(head_dim ** -0.5, self.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
    return (jnp.einsum("bhqd,hdw->bqw", out, out_kernel.astype(self.dtype))
            + out_bias.astype(self.dtype))


def take_tokens(x, index):
  """x [batch, tokens, width], index int [batch] -> [batch, 1, width]: token index[b] of row b."""
  return jnp.take_along_axis(x, index[:, None, None], axis=1)


class MlpBlock(nn.Module):
  """fc1 -> activation -> fc2. recompute_act: the backward pass recomputes the activation from fc1's
  output instead of keeping its own output too (see EncoderBlock)."""

  mlp_dim: int
  act: str = "gelu"
  recompute_act: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
    act = get_activation(self.act)
    x = jax.checkpoint(act)(x) if self.recompute_act else act(x)
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class EncoderBlock(nn.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x)).

  recompute_elementwise: the backward pass recomputes the two LayerNorms' outputs and the MLP's
  activation from their inputs instead of keeping them from the forward pass (jax.checkpoint around
  each): the same numbers up to round-off, three [tokens, width]-sized tensors (one of them 4x
  wider) fewer per block in the step's working memory, for a few elementwise ops more. On a CPU the
  smaller working memory more than pays for them (the tiny towers' step: 426 -> 348 MiB, ~10%
  shorter; docs/benchmarks.md). Independent of `remat`, which recomputes whole blocks.

  query_index: int [batch] or None. Given, the block computes only that token of each row (its
  attention over all the row's tokens, then the MLP) and returns [batch, 1, width]: what the full
  block gives at that position, for a fraction of the work (Encoder's last block when a tower
  pools one token).
  """

  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  recompute_elementwise: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None,
               query_index: Optional[jax.Array] = None):
    norm = nn.remat(nn.LayerNorm) if self.recompute_elementwise else nn.LayerNorm
    y = norm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_1")(x)
    y = SelfAttention(num_heads=self.num_heads, dtype=self.dtype, name="attn")(
        y, mask, query_index)
    if query_index is not None:
      x = take_tokens(x, query_index)
    x = x + y
    y = norm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_2")(x)
    y = MlpBlock(self.mlp_dim, act=self.act, recompute_act=self.recompute_elementwise,
                 dtype=self.dtype, name="mlp")(y)
    return x + y


class _ScannedBlock(EncoderBlock):
  """EncoderBlock with nn.scan's (carry, output) signature."""

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None):  # pylint: disable=arguments-renamed
    return super().__call__(x, mask), None


class Encoder(nn.Module):
  """A stack of `depth` EncoderBlocks.

  scan=False: blocks named block_0..block_{depth-1}, each with its own parameters.
  scan=True: one block applied with nn.scan over parameters stacked on a leading [depth] axis
  ("blocks"): the step is traced and compiled once per tower instead of once per layer (compile
  time independent of depth), with the same numbers. stack_blocks / unstack_blocks convert between
  the two layouts.
  remat=True recomputes each block's activations in the backward pass (less memory, up to ~1/3
  more compute), which is what lets large batches fit; remat_policy (REMAT_POLICIES) says which
  intermediates are kept rather than recomputed.

  Called with pool_index (int [batch]: the one token of each row that the tower goes on with, its
  class or end-of-text token), it returns that token's output, [batch, width]. With
  last_block_pooled_only (and scan=False) the last block then computes only that token: every
  token's keys and values, one query and one MLP row per example; the same numbers up to round-off
  for a fraction of the last block's work. The scanned stack applies one body to every layer, so it
  computes every token and takes the pooled one after.
  """

  depth: int
  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan: bool = False
  recompute_elementwise: bool = True  # EncoderBlock
  last_block_pooled_only: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None,
               pool_index: Optional[jax.Array] = None):
    kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, act=self.act, ln_eps=self.ln_eps,
              recompute_elementwise=self.recompute_elementwise, dtype=self.dtype)
    policy = get_remat_policy(self.remat_policy)
    if self.scan:
      block_cls = (nn.remat(_ScannedBlock, prevent_cse=False, policy=policy) if self.remat
                   else _ScannedBlock)
      scanned = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,), length=self.depth)
      x, _ = scanned(**kw, name="blocks")(x, mask)
      pruned = False
    else:
      block_cls = nn.remat(EncoderBlock, policy=policy) if self.remat else EncoderBlock
      pruned = pool_index is not None and self.last_block_pooled_only and self.depth > 0
      for i in range(self.depth):
        query_index = pool_index if pruned and i == self.depth - 1 else None
        x = block_cls(**kw, name=f"block_{i}")(x, mask, query_index)
    if pool_index is None:
      return x
    return x[:, 0] if pruned else take_tokens(x, pool_index)[:, 0]


def stack_blocks(encoder: Mapping[str, Any]) -> dict:
  """{"block_0": p0, "block_1": p1, ...} -> {"blocks": p stacked on axis 0} (scan layout)."""
  if "blocks" in encoder:
    return dict(encoder)
  depth = len([k for k in encoder if k.startswith("block_")])
  layers = [encoder[f"block_{i}"] for i in range(depth)]
  return {"blocks": jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)}


def unstack_blocks(encoder: Mapping[str, Any]) -> dict:
  """The inverse of stack_blocks."""
  if "blocks" not in encoder:
    return dict(encoder)
  blocks = encoder["blocks"]
  depth = jax.tree.leaves(blocks)[0].shape[0]
  return {f"block_{i}": jax.tree.map(lambda x: np.asarray(x)[i], blocks) for i in range(depth)}


def with_layer_layout(params: Mapping[str, Any], scanned: bool) -> dict:
  """A two-tower parameter tree with both encoders in the scanned or per-layer layout."""
  convert = stack_blocks if scanned else unstack_blocks
  out = dict(params)
  for tower in ("image", "text"):
    if tower in out and "encoder" in out[tower]:
      out[tower] = dict(out[tower], encoder=convert(out[tower]["encoder"]))
  return out


def is_scanned(params: Mapping[str, Any]) -> bool:
  return "blocks" in params.get("image", {}).get("encoder", {})
