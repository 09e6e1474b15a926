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
from rankclip_jax.losses import LOSSES, ranking_weight_multiplier
from rankclip_jax.registry import Registry

# config.loss.strategy: (objective(..., *, axis_name), mesh) -> objective over the global batch.
STRATEGIES = Registry("config.loss.strategy")


@STRATEGIES.register("sharded")
def _sharded(objective, mesh):
  batch = P(shd.DATA_AXES)
  return jax.shard_map(functools.partial(objective, axis_name=shd.DATA_AXES), mesh=mesh,
                       in_specs=(batch, batch, P(), P(), P()), out_specs=(P(), P()))


@STRATEGIES.register("plain")
def _plain(objective, mesh):
  del mesh
  return functools.partial(objective, axis_name=None)


def make_objective(mesh, *, name: str, cross_weight: float, inmodal_weight: float,
                   weight_schedule: str, strategy: str, chunk_size: int, total_steps: int):
  """-> objective(image_emb, text_emb, logit_scale, logit_bias, step) -> (loss, metrics).

  The keyword arguments are config.loss's fields (and config.total_steps, for the schedule).
  """
  loss_fn = LOSSES.get(name).fn
  chunk = chunk_size or None

  def objective(image_emb, text_emb, logit_scale, logit_bias, multiplier, *, axis_name):
    return loss_fn(image_emb, text_emb, jnp.exp(logit_scale), logit_bias,
                   cross_weight * multiplier, inmodal_weight * multiplier,
                   axis_name=axis_name, chunk_size=chunk)

  run = STRATEGIES.get(strategy)(objective, mesh)

  def objective_at_step(image_emb, text_emb, logit_scale, logit_bias, step):
    multiplier = ranking_weight_multiplier(step, total_steps, weight_schedule)
    if logit_bias is None:
      logit_bias = jnp.zeros((), jnp.float32)
    loss, metrics = run(image_emb, text_emb, logit_scale, logit_bias, multiplier)
    return loss, dict(metrics, logit_scale=logit_scale, scale=jnp.exp(logit_scale))

  return objective_at_step
