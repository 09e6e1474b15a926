"""Optimizer and learning-rate schedule from config.optim.

AdamW with linear warmup then cosine decay; no weight decay on parameters whose path matches
config.optim.no_decay_regex (LayerNorm scales and biases, every bias, the logit scale, position
embeddings and the class token by default); optional global-norm gradient clipping. The whole is
wrapped in optax.apply_if_finite: a gradient with a NaN or inf is not applied (parameters and the
inner optimizer state stay as they were) and counted (nonfinite_counts).
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


def frozen_mask(params, freeze_regex: str):
  """True for parameters that are not trained (path fully matches freeze_regex; "" freezes none).
  Python bools, so that masking gradients with it lets XLA drop the frozen part's backward pass."""
  if not freeze_regex:
    return jax.tree.map(lambda _: False, params)
  pattern = re.compile(freeze_regex)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: pattern.fullmatch(path_str(path)) is not None, params)


def make_optimizer(optim_config, total_steps: int):
  """Returns (optax transformation, schedule). Parameters matching optim_config.freeze_regex get
  no update and no optimizer state. The regexes are checked by config validation."""
  schedule = learning_rate_schedule(optim_config, total_steps)
  b1, b2 = optim_config.betas
  adamw = optax.adamw(
      schedule, b1=b1, b2=b2, eps=optim_config.eps, weight_decay=optim_config.weight_decay,
      mask=lambda p: weight_decay_mask(p, optim_config.no_decay_regex))
  parts = []
  if optim_config.grad_clip_norm and optim_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  parts.append(adamw)
  tx = optax.chain(*parts)
  freeze_regex = optim_config.get("freeze_regex", "")
  if freeze_regex:
    label = lambda p: jax.tree.map(lambda f: "frozen" if f else "trained",  # pylint: disable=g-long-lambda
                                   frozen_mask(p, freeze_regex))
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, label)
  # Never give up and apply a non-finite update: the trainer stops the run instead
  # (config.max_nonfinite_steps).
  return optax.apply_if_finite(tx, max_consecutive_errors=NEVER), schedule


NEVER = 2 ** 31 - 1  # optax's counter saturates at the int32 maximum, so it is never exceeded


def nonfinite_counts(opt_state) -> tuple[jax.Array, jax.Array]:
  """(non-finite updates in a row up to now, non-finite updates in all) of make_optimizer's state."""
  return opt_state.notfinite_count, opt_state.total_notfinite
