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
  head_dim, width], bias [width]}, so checkpoints and the OpenCLIP converter see no difference,
  whichever `attention` computes it. The three projections are one matrix multiply, written straight
  into the layout the attention reads. The softmax runs in float32 whatever the model's dtype.

  attention: how softmax(q k^T / sqrt(d)) v is computed (platform_defaults.py resolves
  model.attention's "auto" to one of these):
    "einsum": two batched products and a softmax written here, q, k, v in [batch, heads, tokens,
      head_dim], the layout those products read without a transpose (on a 2-core CPU the tiny
      towers' training step is ~6% shorter than with flax's module; docs/performance.md,
      "Attention on a CPU");
    "xla": jax.nn.dot_product_attention with XLA's implementation ([batch, tokens, heads, head_dim]);
    "cudnn": the same function with cuDNN's fused (flash) kernel: GPU and 16-bit dtypes only. A
      single pooled query (query_index below) has no T x T product to fuse: it goes through XLA's.
  causal: each token attends to itself and the tokens before it only (the text tower).
  query_index: int [batch] or None. Given, only that token of each row is a query: the output is
  [batch, 1, width], that token's attention over the row's tokens (the keys and values are still
  every token's; with `causal`, those up to it), what the full computation gives at that position.
  """

  num_heads: int
  causal: bool = False
  attention: str = "einsum"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, query_index: Optional[jax.Array] = None):
    width, tokens = x.shape[-1], x.shape[-2]
    heads = self.num_heads
    if width % heads:
      raise ValueError(f"Attention width {width} is not divisible by num_heads={heads}.")
    if self.attention not in ("einsum", "xla", "cudnn"):
      raise ValueError(f"SelfAttention.attention={self.attention!r}; choose einsum, xla or cudnn "
                       "(config.model.attention='auto' is resolved before the model is built).")
    head_dim = width // heads
    qkv = [_Projection((width, heads, head_dim), (heads, head_dim), 1, name=n)()
           for n in ("query", "key", "value")]
    out_kernel, out_bias = _Projection((heads, head_dim, width), (width,), 2, name="out")()
    kernel = jnp.stack([k for k, _ in qkv], axis=1).astype(self.dtype)  # [W, 3, H, D]
    bias = jnp.stack([b for _, b in qkv]).astype(self.dtype)  # [3, H, D]
    x = x.astype(self.dtype)
    # q, k, v: [batch, heads, tokens, head_dim] for the hand-written products ("einsum"),
    # [batch, tokens, heads, head_dim] for jax.nn.dot_product_attention.
    layout = "bhtd" if self.attention == "einsum" else "bthd"
    # The biases [.., heads, head_dim] broadcast over the tokens axis of that layout.
    bias = bias[..., None, :, :] if layout == "bthd" else bias[..., :, None, :]
    if query_index is None:
      q, k, v = jnp.einsum(f"btw,wshd->s{layout}", x, kernel) + bias[:, None]
    else:
      k, v = jnp.einsum(f"btw,wshd->s{layout}", x, kernel[:, 1:]) + bias[1:, None]
      q = jnp.einsum(f"btw,whd->{layout}", take_tokens(x, query_index), kernel[:, 0]) + bias[0]
    if self.attention == "einsum":
      out = self._attend(q, k, v, head_dim, tokens, query_index)
      return (jnp.einsum("bhqd,hdw->bqw", out, out_kernel.astype(self.dtype))
              + out_bias.astype(self.dtype))
    kv_lengths = None
    if self.causal and query_index is not None:  # the pooled token sees the tokens up to it
      kv_lengths = (query_index + 1).astype(jnp.int32)
    implementation = "xla" if query_index is not None else self.attention
    out = jax.nn.dot_product_attention(
        q, k, v, scale=head_dim ** -0.5, is_causal=self.causal and query_index is None,
        key_value_seq_lengths=kv_lengths, implementation=implementation)
    return (jnp.einsum("bqhd,hdw->bqw", out, out_kernel.astype(self.dtype))
            + out_bias.astype(self.dtype))

  def _attend(self, q, k, v, head_dim: int, tokens: int, query_index):
    """The hand-written attention: q, k, v [batch, heads, tokens, head_dim]."""
    q = q * np.asarray(head_dim ** -0.5, self.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    if self.causal:
      keys = jnp.arange(tokens)
      if query_index is None:  # [1, 1, T, T]
        allowed = (keys[None, :] <= keys[:, None])[None, None]
      else:  # [B, 1, 1, T]: the row of the pooled token
        allowed = (keys[None, :] <= query_index[:, None])[:, None, None, :]
      logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


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
  shorter; docs/performance.md, "recompute_elementwise"). Independent of `remat`, which recomputes
  whole blocks.

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
  causal: bool = False  # SelfAttention
  attention: str = "einsum"  # SelfAttention
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, query_index: Optional[jax.Array] = None):
    norm = nn.remat(nn.LayerNorm) if self.recompute_elementwise else nn.LayerNorm
    y = norm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_1")(x)
    y = SelfAttention(num_heads=self.num_heads, causal=self.causal, attention=self.attention,
                      dtype=self.dtype, name="attn")(y, query_index)
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
  def __call__(self, x):  # pylint: disable=arguments-differ
    return super().__call__(x), None


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
  causal: bool = False  # SelfAttention
  attention: str = "einsum"  # SelfAttention
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pool_index: Optional[jax.Array] = None):
    kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, act=self.act, ln_eps=self.ln_eps,
              recompute_elementwise=self.recompute_elementwise, causal=self.causal,
              attention=self.attention, dtype=self.dtype)
    policy = get_remat_policy(self.remat_policy)
    if self.scan:
      block_cls = (nn.remat(_ScannedBlock, prevent_cse=False, policy=policy) if self.remat
                   else _ScannedBlock)
      scanned = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=self.depth)
      x, _ = scanned(**kw, name="blocks")(x)
      pruned = False
    else:
      block_cls = nn.remat(EncoderBlock, policy=policy) if self.remat else EncoderBlock
      pruned = pool_index is not None and self.last_block_pooled_only and self.depth > 0
      for i in range(self.depth):
        query_index = pool_index if pruned and i == self.depth - 1 else None
        x = block_cls(**kw, name=f"block_{i}")(x, query_index)
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
