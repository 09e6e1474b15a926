"""CyCLIP (Goel et al. 2022), a baseline of docs/method.md, on the same API and the same row engine
as rankclip_loss (axis_name / chunk_size: see rowwise.py). On cosine similarities, scaled by the
batch size as in the CyCLIP code:

    loss = L_clip + cross_weight   * N * mean((L - L^T)^2) / s^2        (cross-modal cyclic)
                  + inmodal_weight * N * mean((S_I - S_T)^2) / s^2      (in-modal cyclic)

with L, S_I, S_T as in rankclip.py; dividing by s^2 makes both terms functions of the cosines alone.
The CyCLIP paper uses both weights 0.25 (its lambda_2 and lambda_1: config.loss.cross_weight and
inmodal_weight, the fields that weigh RankCLIP's ranking terms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankclip_jax.losses import contrastive
from rankclip_jax.losses import rowwise


def cyclip_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, *,
                cross_weight=0.25, inmodal_weight=0.25, axis_name: rowwise.AxisName = None,
                chunk_size: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CLIP + CyCLIP's cyclic terms -> (scalar loss, metrics).

  Metrics: loss, clip_loss, cross_cyclic_loss and inmodal_cyclic_loss (unweighted:
  N * mean(squared difference of cosines)), cross_weight, inmodal_weight, i2t_top1, t2i_top1.
  """

  def row_fn(rows, columns):
    sums, logits, logits_t = contrastive.clip_row_sums(rows, columns, scale)
    cross = (logits - logits_t) / scale  # rows of (L - L^T) / s, from the CLIP term's logits
    cos = lambda a, b: contrastive.clip_logits(a, b, 1.0)
    inmodal = cos(rows["image"], columns["image"]) - cos(rows["text"], columns["text"])
    return dict(sums, cross=jnp.sum(cross * cross), inmodal=jnp.sum(inmodal * inmodal))

  sums, n = rowwise.sum_rows(row_fn, image_emb, text_emb, axis_name=axis_name,
                             chunk_size=chunk_size)
  metrics = contrastive.clip_metrics(sums, n)
  clip = metrics["clip_loss"]
  # N * mean over the N^2 entries = sum / N.
  cross, inmodal = sums["cross"] / n, sums["inmodal"] / n
  cross_weight = jnp.asarray(cross_weight, clip.dtype)
  inmodal_weight = jnp.asarray(inmodal_weight, clip.dtype)
  loss = clip + cross_weight * cross + inmodal_weight * inmodal
  metrics.update(loss=loss, cross_cyclic_loss=cross, inmodal_cyclic_loss=inmodal,
                 cross_weight=cross_weight, inmodal_weight=inmodal_weight)
  return loss, metrics
