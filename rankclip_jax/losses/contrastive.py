"""CLIP's symmetric InfoNCE on L2-normalised embeddings.

    L      = s * I @ T^T                                    [N, N], s = exp(logit_scale)
    L_clip = 0.5 * [ CE(L, diag) + CE(L^T, diag) ]
    CE(X, diag) = mean_i [ logsumexp_j X[i, j] - X[i, i] ]

Inputs may be bf16/fp16; the logits and the loss are computed in (at least) float32, because the
softmax and, downstream, the ranking terms are sensitive to rounding of logits of size up to 100.
The matmul runs at JAX's default precision for float32 (full on CPU; on TPU/GPU set
`jax_default_matmul_precision` if reduced-precision passes are a concern).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _compute_dtype(*xs) -> jnp.dtype:
  """float32, or wider if an input array already is (Python scalars are weak and do not widen)."""
  return jnp.result_type(jnp.float32, *xs)


def clip_logits(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array) -> jax.Array:
  """[N, D], [M, D], scalar -> [N, M] logits `scale * image_emb @ text_emb^T` (rows image i).

  Rows are assumed L2-normalised already; they are not renormalised here.
  """
  dtype = _compute_dtype(image_emb, text_emb, scale)
  image_emb = jnp.asarray(image_emb, dtype)
  text_emb = jnp.asarray(text_emb, dtype)
  return jnp.asarray(scale, dtype) * (image_emb @ text_emb.T)


def clip_loss_from_logits(logits: jax.Array) -> jax.Array:
  """[N, N] square logits, positives on the diagonal -> scalar symmetric cross-entropy."""
  if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
    raise ValueError(f"clip loss needs square [N, N] logits, got shape {logits.shape}.")
  diag = jnp.diagonal(logits)
  # logsumexp over texts (axis 1) is the image->text CE; over images (axis 0) the text->image CE.
  i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return 0.5 * (i2t + t2i)


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array) -> jax.Array:
  """Symmetric InfoNCE: [N, D] image rows, [N, D] text rows (pair i = row i), scalar scale.

  Returns a float32 (or wider) scalar; gradients reach both embeddings and `scale`.
  """
  return clip_loss_from_logits(clip_logits(image_emb, text_emb, scale))


def top1_accuracy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[N, N] logits -> (i2t_top1, t2i_top1): fraction of rows / columns whose own pair wins.

  A pair counts only if its logit is strictly above every other in its row (column), so ties are
  counted against the model (a collapsed model scores 0, not a lucky 1), matching evaluation.metrics.
  """
  n = logits.shape[0]
  diag = jnp.diagonal(logits)
  off = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits)
  i2t = jnp.mean((diag > jnp.max(off, axis=1)).astype(jnp.float32))
  t2i = jnp.mean((diag > jnp.max(off, axis=0)).astype(jnp.float32))
  return i2t, t2i
