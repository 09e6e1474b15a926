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

from rankclip_jax.losses import rowwise


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


def clip_row_sums(rows: dict, columns: dict, scale) -> tuple[dict, jax.Array, jax.Array]:
  """Row-block terms of the CLIP loss (see rowwise.py) -> (sums, L rows [R, N], L^T rows [R, N]).

  sums: over the block's rows, of i2t = logsumexp(L[i, :]) - L[i, i], t2i = logsumexp(L^T[i, :]) -
  L^T[i, i], and the number of rows whose own pair is strictly best. The logit blocks are returned
  for the losses that add terms on them.
  """
  logits = clip_logits(rows["image"], columns["text"], scale)      # rows of L
  logits_t = clip_logits(rows["text"], columns["image"], scale)    # rows of L^T
  index = rows["index"]
  sums = {
      "i2t": jnp.sum(jax.nn.logsumexp(logits, axis=1) - rowwise.own_column(logits, index)),
      "t2i": jnp.sum(jax.nn.logsumexp(logits_t, axis=1) - rowwise.own_column(logits_t, index)),
      "i2t_top1": jnp.sum(rowwise.strictly_best(logits, index)),
      "t2i_top1": jnp.sum(rowwise.strictly_best(logits_t, index)),
  }
  return sums, logits, logits_t


def clip_metrics(sums: dict, n: int) -> dict:
  """Global row sums of clip_row_sums -> {clip_loss, i2t_top1, t2i_top1}."""
  return {"clip_loss": 0.5 * (sums["i2t"] + sums["t2i"]) / n,
          "i2t_top1": sums["i2t_top1"] / n, "t2i_top1": sums["t2i_top1"] / n}


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, *,
              axis_name: rowwise.AxisName = None, chunk_size: int | None = None) -> jax.Array:
  """Symmetric InfoNCE: [N, D] image rows, [N, D] text rows (pair i = row i), scalar scale.

  Returns a float32 (or wider) scalar; gradients reach both embeddings and `scale`.
  axis_name / chunk_size: the sharded and row-chunked strategies of rowwise.sum_rows (inside
  shard_map, the arrays are this device's rows).
  """
  return clip_loss_and_metrics(image_emb, text_emb, scale, axis_name=axis_name,
                               chunk_size=chunk_size)[0]


def clip_loss_and_metrics(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, *,
                          axis_name: rowwise.AxisName = None, chunk_size: int | None = None
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """clip_loss -> (scalar loss, metrics: loss, clip_loss, i2t_top1, t2i_top1)."""
  sums, n = rowwise.sum_rows(lambda r, c: clip_row_sums(r, c, scale)[0], image_emb, text_emb,
                             axis_name=axis_name, chunk_size=chunk_size)
  metrics = clip_metrics(sums, n)
  return metrics["clip_loss"], dict(metrics, loss=metrics["clip_loss"])
