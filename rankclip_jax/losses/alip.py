"""ALIP (Yang et al. 2023, "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption"),
on the same API and the same row engine as the other losses (rowwise.py).

Every example has an image I_k, its raw text T_k and a synthetic caption C_k of the image (the
authors' came from OFA); both texts go through the one text tower; all are L2-normalised. With the
cosines s_tc = T_k . C_k, s_it = I_k . T_k, s_ic = I_k . C_k of each pair and three running means
m_tc, m_it, m_ic (the loss state: 1 at step 0), computed without gradient over the global batch:

    m       <- momentum * m + (1 - momentum) * mean_k(s)          (each of tc, it, ic; this batch in)
    g_k      = exp(tau * (s_tc,k - m_tc))
    w_s,k    = min(g_k, 1)                                        (language consistency gate)
    w_raw,k  = exp(tau * (s_it,k - m_it)) if g_k < 1 else 1      (description consistency gate,
    w_cap,k  = exp(tau * (s_ic,k - m_ic)) if g_k < 1 else 1       not capped at 1)

    l_k(X)   = 0.5 * [CE(row k of s I X^T) + CE(row k of s X I^T)]   (CLIP's two directions, pair k)
    loss     = mean_k(w_s,k w_raw,k l_k(T)) + mean_k(w_s,k w_cap,k l_k(C))

with momentum 0.99 and tau = 2 in the authors' code. The gates are computed first from the row dot
products (their sums psum'ed when sharded), then the weighted per-row terms run on the row engine:
plain, sharded or row-chunked with the same value and gradient. The running means are passed in and
returned, never hidden state: the trainer keeps them in the TrainState (checkpointed, replicated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankclip_jax.losses import contrastive
from rankclip_jax.losses import rowwise

# The loss state: the running mean cosine of (raw text, caption), (image, raw text), (image, caption).
MEANS = ("mean_tc", "mean_it", "mean_ic")


def alip_initial_state() -> dict[str, jax.Array]:
  """The running means at step 0: 1 each, as in the authors' code."""
  return {k: jnp.ones((), jnp.float32) for k in MEANS}


def alip_gates(image_emb, text_emb, caption_emb, means: dict, *, momentum, temperature,
               axis_name: rowwise.AxisName = None) -> tuple[dict, dict, dict]:
  """The consistency gates of the local rows, without gradient.

  -> (weights {"sample", "raw", "caption"}: [n] each, the updated running means (the MEANS keys,
  in the dtype of `means`), this global batch's mean cosines {"tc", "it", "ic"}).
  """
  dtype = jnp.result_type(jnp.float32, image_emb, text_emb, caption_emb)  # as the logits'
  i, t, c = (jax.lax.stop_gradient(jnp.asarray(x, dtype))
             for x in (image_emb, text_emb, caption_emb))
  sims = {"tc": jnp.sum(t * c, axis=1), "it": jnp.sum(i * t, axis=1), "ic": jnp.sum(i * c, axis=1)}
  sums = {k: jnp.sum(v) for k, v in sims.items()}
  count = jnp.asarray(i.shape[0], dtype)
  if axis_name is not None:
    sums, count = jax.lax.psum((sums, count), axis_name)
  batch_means = {k: v / count for k, v in sums.items()}
  new = {k: momentum * jnp.asarray(means[f"mean_{k}"], dtype) + (1.0 - momentum) * batch_means[k]
         for k in sims}
  g = jnp.exp(temperature * (sims["tc"] - new["tc"]))
  gated = g < 1
  weights = {
      "sample": jnp.minimum(g, 1.0),
      "raw": jnp.where(gated, jnp.exp(temperature * (sims["it"] - new["it"])), 1.0),
      "caption": jnp.where(gated, jnp.exp(temperature * (sims["ic"] - new["ic"])), 1.0),
  }
  new_means = {f"mean_{k}": v.astype(jnp.asarray(means[f"mean_{k}"]).dtype) for k, v in new.items()}
  return weights, new_means, batch_means


def _pair_terms(rows: dict, columns: dict, key: str, scale) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-row CLIP terms of the (image, rows[key]) path: (l [R], rows of L [R, N], of L^T [R, N]),
  l = 0.5 * (image -> texts CE + text -> images CE) of each row's own pair."""
  index = rows["index"]
  logits = contrastive.clip_logits(rows["image"], columns[key], scale)
  logits_t = contrastive.clip_logits(rows[key], columns["image"], scale)
  i2t = jax.nn.logsumexp(logits, axis=1) - rowwise.own_column(logits, index)
  t2i = jax.nn.logsumexp(logits_t, axis=1) - rowwise.own_column(logits_t, index)
  return 0.5 * (i2t + t2i), logits, logits_t


def alip_loss(image_emb: jax.Array, text_emb: jax.Array, caption_emb: jax.Array, scale: jax.Array,
              means: dict, *, momentum=0.99, temperature=2.0, axis_name: rowwise.AxisName = None,
              chunk_size: int | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """[N, D] images, raw texts and synthetic captions (pair k = row k), scalar scale, the running
  means {"mean_tc", "mean_it", "mean_ic"} -> (scalar loss, metrics, updated running means).

  Gradients reach the three embeddings and `scale` through the CE terms only (the gates are
  stop_gradient'ed). axis_name / chunk_size: the strategies of rowwise.sum_rows, as in every loss.

  Metrics: loss, raw_loss and caption_loss (the two weighted means), clip_loss and
  caption_clip_loss (the same paths unweighted: CLIP's loss on each caption), i2t_top1 and
  t2i_top1 (raw-text path), alip_mean_{tc,it,ic} (the updated running means),
  alip_batch_{tc,it,ic} (this batch's mean cosines) and alip_weight_{sample,raw,caption} (the
  gates' batch means).
  """
  weights, new_means, batch_means = alip_gates(
      image_emb, text_emb, caption_emb, means, momentum=momentum, temperature=temperature,
      axis_name=axis_name)

  def row_fn(rows, columns):
    raw, logits, logits_t = _pair_terms(rows, columns, "text", scale)
    cap, _, _ = _pair_terms(rows, columns, "caption", scale)
    w_s = rows["w_sample"].astype(raw.dtype)
    return {
        "raw": jnp.sum(w_s * rows["w_raw"].astype(raw.dtype) * raw),
        "caption": jnp.sum(w_s * rows["w_caption"].astype(cap.dtype) * cap),
        "raw_plain": jnp.sum(raw),
        "caption_plain": jnp.sum(cap),
        "i2t_top1": jnp.sum(rowwise.strictly_best(logits, rows["index"])),
        "t2i_top1": jnp.sum(rowwise.strictly_best(logits_t, rows["index"])),
        "w_sample": jnp.sum(rows["w_sample"]),
        "w_raw": jnp.sum(rows["w_raw"]),
        "w_caption": jnp.sum(rows["w_caption"]),
    }

  extra = {"caption": caption_emb, "w_sample": weights["sample"], "w_raw": weights["raw"],
           "w_caption": weights["caption"]}
  sums, n = rowwise.sum_rows(row_fn, image_emb, text_emb, axis_name=axis_name,
                             chunk_size=chunk_size, extra=extra, gathered=("caption",))
  raw_loss, caption_loss = sums["raw"] / n, sums["caption"] / n
  loss = raw_loss + caption_loss
  metrics = {
      "loss": loss, "raw_loss": raw_loss, "caption_loss": caption_loss,
      "clip_loss": sums["raw_plain"] / n, "caption_clip_loss": sums["caption_plain"] / n,
      "i2t_top1": sums["i2t_top1"] / n, "t2i_top1": sums["t2i_top1"] / n,
  }
  metrics.update({f"alip_{k}": v for k, v in new_means.items()})
  metrics.update({f"alip_batch_{k}": v for k, v in batch_means.items()})
  metrics.update({f"alip_weight_{k}": sums[f"w_{k}"] / n for k in ("sample", "raw", "caption")})
  return loss, metrics, new_means
