"""The RankCLIP objective (see docs/method.md) and its ranking-weight schedule.

With I, T the [N, D] L2-normalised embeddings and s = exp(logit_scale):

    L = s I T^T,   S_I = s I I^T,   S_T = s T T^T                              (all [N, N])
    loss = L_clip
         + w_cross   * 0.5 * [ PL(L; L^T) + PL(L^T; L) ] / N        (cross-modal consistency)
         + w_inmodal * 0.5 * [ PL(S_I; S_T) + PL(S_T; S_I) ] / N    (in-modal consistency)

PL(X; K) is the row-mean Plackett-Luce NLL of X's rows under the order of K's rows (ranking.py); the
division by N turns each ranking term into a mean over the N*N position terms, as in the authors' code.
Gradients reach I, T and s through the scored matrices only (keys are stop_gradient'ed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankclip_jax.losses import contrastive
from rankclip_jax.losses import ranking
from rankclip_jax.losses import rowwise
from rankclip_jax.registry import Registry

# The ranking-weight schedules (config.loss.weight_schedule): (step, total_steps) -> multiplier.
SCHEDULES = Registry("config.loss.weight_schedule")


def rankclip_loss(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, *,
                  cross_weight, inmodal_weight, axis_name: rowwise.AxisName = None,
                  chunk_size: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """[N, D] images, [N, D] texts (pair i = row i), scalar scale -> (scalar loss, metrics).

  `cross_weight` and `inmodal_weight` are floats or scalar arrays (possibly traced, e.g. from
  `ranking_weight_multiplier` inside jit); they are never inspected in Python. Both ranking terms are
  always computed, even at weight 0, so the metrics always report their true unweighted values;
  with both weights 0 the loss equals `clip_loss` exactly (clip + 0 * finite + 0 * finite).

  Execution (rowwise.py; same value and gradient in every case):
    axis_name=None:   the arrays are the whole batch;
    axis_name="data": inside shard_map, the arrays are this device's rows; the other side's
                      embeddings are gathered and each device computes only its rows of the four
                      matrices ((N/P) x N each), then the sums are psum'ed;
    chunk_size=R:     rows are processed R at a time, rematerialised: peak memory O(R x N).

  Metrics (all scalars): loss, clip_loss, cross_rank_loss and inmodal_rank_loss (unweighted, i.e.
  0.5*[..]/N), cross_weight, inmodal_weight, i2t_top1, t2i_top1 (own pair strictly best).
  """

  def row_fn(rows, columns):
    sums, logits, logits_t = contrastive.clip_row_sums(rows, columns, scale)   # rows of L, L^T
    sim_image = contrastive.clip_logits(rows["image"], columns["image"], scale)  # rows of S_I
    sim_text = contrastive.clip_logits(rows["text"], columns["text"], scale)     # rows of S_T
    # The four ranking terms in one batched sort: row i of L ranked by row i of L^T and back
    # (cross-modal), S_I by S_T and back (in-modal).
    scores = jnp.stack([logits, logits_t, sim_image, sim_text])
    keys = jnp.stack([logits_t, logits, sim_text, sim_image])
    r, n = logits.shape
    pl = ranking.plackett_luce_nll_rows(scores.reshape(4 * r, n), keys.reshape(4 * r, n))
    pl = jnp.sum(pl.reshape(4, r), axis=1)
    return dict(sums, cross=pl[0] + pl[1], inmodal=pl[2] + pl[3])

  sums, n = rowwise.sum_rows(row_fn, image_emb, text_emb, axis_name=axis_name,
                             chunk_size=chunk_size)
  metrics = contrastive.clip_metrics(sums, n)
  clip = metrics["clip_loss"]
  # Row-mean of each PL term, halved over the two directions, divided by N (docs/method.md).
  cross = 0.5 * sums["cross"] / n / n
  inmodal = 0.5 * sums["inmodal"] / n / n

  dtype = clip.dtype
  cross_weight = jnp.asarray(cross_weight, dtype)
  inmodal_weight = jnp.asarray(inmodal_weight, dtype)
  loss = clip + cross_weight * cross + inmodal_weight * inmodal
  metrics.update(loss=loss, cross_rank_loss=cross, inmodal_rank_loss=inmodal,
                 cross_weight=cross_weight, inmodal_weight=inmodal_weight)
  return loss, metrics


def ranking_weight_multiplier(step, total_steps, schedule: str) -> jax.Array:
  """Multiplier for the ranking weights at `step` (int or traced array) -> float32 scalar.

  'ramp':     clip(3 * step / total_steps, 0, 2): 0 at step 0, 1 at a third, 2 from two thirds on
              (docs/method.md's epoch ramp r(t), expressed on steps).
  'constant': 1.
  The trainer uses weight = config_weight * multiplier; config_weight = 1/16 with 'ramp' reproduces
  the authors' r(t) / 16.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown ranking weight schedule {schedule!r}; allowed: {SCHEDULES.names()}.")
  return SCHEDULES.get(schedule)(step, total_steps)


@SCHEDULES.register("ramp")
def _ramp(step, total_steps) -> jax.Array:
  if isinstance(total_steps, (int, float)) and total_steps <= 0:
    raise ValueError(f"total_steps must be positive for the 'ramp' schedule, got {total_steps}.")
  step = jnp.asarray(step, jnp.float32)
  # (3 * step) / total rather than 3 * (step / total): exact at step = total/3 and 2*total/3
  # whenever those are integers.
  return jnp.clip(3.0 * step / jnp.asarray(total_steps, jnp.float32), 0.0, 2.0)


@SCHEDULES.register("constant")
def _constant(step, total_steps) -> jax.Array:
  del step, total_steps
  return jnp.ones((), jnp.float32)
