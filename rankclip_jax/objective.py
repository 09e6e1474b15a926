"""The training objective: the loss named by config.loss.name, its ranking/cyclic weights on their
schedule, run over the device mesh by one of the strategies of config.loss.strategy.

- "sharded": shard_map over the batch axes of the mesh, each device its own rows against the
  gathered other side ((N/P) x N memory; see losses/rowwise.py);
- "plain": the full N x N matrices, left to XLA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rankclip_jax import sharding as shd
from rankclip_jax.losses import LOSSES, loss_fields as all_loss_fields, ranking_weight_multiplier
from rankclip_jax.registry import Registry

# config.loss.strategy: (objective(..., *, axis_name), mesh) -> objective over the global batch.
STRATEGIES = Registry("config.loss.strategy")


@STRATEGIES.register("sharded")
def _sharded(objective, mesh):
  batch = P(shd.DATA_AXES)
  return jax.shard_map(functools.partial(objective, axis_name=shd.DATA_AXES), mesh=mesh,
                       in_specs=(batch, P(), P(), P(), P()), out_specs=(P(), P(), P()))


@STRATEGIES.register("plain")
def _plain(objective, mesh):
  del mesh
  return functools.partial(objective, axis_name=None)


def make_objective(mesh, *, name: str, cross_weight: float, inmodal_weight: float,
                   weight_schedule: str, strategy: str, chunk_size: int, total_steps: int,
                   **loss_fields: float):
  """-> objective(embeddings, logit_scale, logit_bias, loss_state, step) -> (loss, metrics,
  new loss_state), the one interface of every loss (losses.Loss).

  embeddings: {"image", "text", and the loss's other caption fields (ALIP: "synthetic_text")}, each
  [N, D] over the global batch; loss_state: the loss's running quantities (TrainState.loss_state).
  The keyword arguments are config.loss's fields (and config.total_steps, for the schedule):
  loss_fields, every loss's own (losses.loss_fields()), of which the chosen loss reads its own, at
  their defaults where not given.
  """
  loss = LOSSES.get(name)
  chunk = chunk_size or None
  unknown = sorted(set(loss_fields) - set(all_loss_fields()))
  if unknown:
    raise TypeError(f"make_objective: no loss has the fields {unknown}.")
  own = {k: float(loss_fields.get(k, spec.default)) for k, spec in loss.fields.items()}

  def objective(embeddings, logit_scale, logit_bias, multiplier, loss_state, *, axis_name):
    hp = dict(own, cross_weight=cross_weight * multiplier,
              inmodal_weight=inmodal_weight * multiplier)
    return loss.fn(embeddings, jnp.exp(logit_scale), logit_bias, loss_state, hp,
                   axis_name=axis_name, chunk_size=chunk)

  run = STRATEGIES.get(strategy)(objective, mesh)

  def objective_at_step(embeddings, logit_scale, logit_bias, loss_state, step):
    missing = [k for k in ("image",) + loss.texts if k not in embeddings]
    if missing:
      raise ValueError(f"config.loss.name={name!r} needs the embeddings {missing}; got "
                       f"{sorted(embeddings)}.")
    embeddings = {k: embeddings[k] for k in ("image",) + loss.texts}
    multiplier = ranking_weight_multiplier(step, total_steps, weight_schedule)
    if logit_bias is None:
      logit_bias = jnp.zeros((), jnp.float32)
    value, metrics, new_state = run(embeddings, logit_scale, logit_bias, multiplier, loss_state)
    return value, dict(metrics, logit_scale=logit_scale, scale=jnp.exp(logit_scale)), new_state

  return objective_at_step
