"""SigLIP (Zhai et al. 2023), a baseline of docs/method.md, on the same API and the same row engine
as rankclip_loss (axis_name / chunk_size: see rowwise.py). Every pair is an independent binary
classification,

    loss = -(1/N) sum_{i,j} log sigmoid(z_ij * (s * I_i . T_j + b)),   z_ij = +1 if i == j else -1

with a learnable scale s and bias b (initialised at 10 and -10 in the paper).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankclip_jax.losses import contrastive
from rankclip_jax.losses import rowwise


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, bias: jax.Array, *,
                axis_name: rowwise.AxisName = None, chunk_size: int | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SigLIP's pairwise sigmoid loss -> (scalar loss, metrics: loss, sigmoid_loss, bias,
  i2t_top1, t2i_top1)."""

  def row_fn(rows, columns):
    logits = contrastive.clip_logits(rows["image"], columns["text"], scale)
    logits = logits + jnp.asarray(bias, logits.dtype)
    index = rows["index"]
    own = jnp.arange(logits.shape[1])[None, :] == index[:, None]
    signs = jnp.where(own, 1.0, -1.0).astype(logits.dtype)
    logits_t = contrastive.clip_logits(rows["text"], columns["image"], scale)
    return {
        "nll": -jnp.sum(jax.nn.log_sigmoid(signs * logits)),
        "i2t_top1": jnp.sum(rowwise.strictly_best(logits, index)),
        "t2i_top1": jnp.sum(rowwise.strictly_best(logits_t, index)),
    }

  sums, n = rowwise.sum_rows(row_fn, image_emb, text_emb, axis_name=axis_name,
                             chunk_size=chunk_size)
  loss = sums["nll"] / n
  metrics = {"loss": loss, "sigmoid_loss": loss, "bias": jnp.asarray(bias, loss.dtype),
             "i2t_top1": sums["i2t_top1"] / n, "t2i_top1": sums["t2i_top1"] / n}
  return loss, metrics
