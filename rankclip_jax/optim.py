"""Optimizer and learning-rate schedule from config.optim.

AdamW with linear warmup then cosine decay; no weight decay on parameters whose path matches
config.optim.no_decay_regex (LayerNorm scales and biases, every bias, the logit scale, position
embeddings and the class token by default); optional global-norm gradient clipping.
"""

from __future__ import annotations

import re

import jax
import optax

from rankclip_jax.sharding import path_str


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
  warmup = int(optim_config.warmup_steps)
  if warmup < 0 or warmup > total_steps:
    raise ValueError(
        f"config.optim.warmup_steps={warmup} must be in [0, total_steps={total_steps}].")
  peak = float(optim_config.learning_rate)
  end = peak * float(optim_config.final_lr_fraction)
  if warmup == total_steps:
    return optax.linear_schedule(0.0, peak, warmup)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total_steps,
      end_value=end)


def weight_decay_mask(params, no_decay_regex: str):
  """True for parameters that get weight decay."""
  pattern = re.compile(no_decay_regex)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: pattern.fullmatch(path_str(path)) is None, params)


def make_optimizer(optim_config, total_steps: int):
  """Returns (optax transformation, schedule)."""
  schedule = learning_rate_schedule(optim_config, total_steps)
  try:
    re.compile(optim_config.no_decay_regex)
  except re.error as e:
    raise ValueError(f"config.optim.no_decay_regex is not a valid regex: {e}") from e
  b1, b2 = optim_config.betas
  adamw = optax.adamw(
      schedule, b1=b1, b2=b2, eps=optim_config.eps, weight_decay=optim_config.weight_decay,
      mask=lambda p: weight_decay_mask(p, optim_config.no_decay_regex))
  parts = []
  if optim_config.grad_clip_norm and optim_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  parts.append(adamw)
  return optax.chain(*parts), schedule
