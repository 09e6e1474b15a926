"""Non-finite steps: a step whose loss or gradient is NaN or inf is skipped by the optimizer
(optim.skip_nonfinite; parameters and optimizer state unchanged, the step counter moves
on), logged here with its step, and `max_in_a_row` of them in a row stop the run.

Each step's counters are read one step late, when the device has finished it and is already
running the next one, so watching costs no pipeline stall.
"""

from __future__ import annotations

import jax
from absl import logging

from rankclip_jax.errors import UserError
from rankclip_jax.reporting import say


class NonFiniteError(UserError, FloatingPointError):
  """Too many non-finite steps in a row; the message names the last good checkpoint."""


class NonFiniteGuard:
  """after_step(step, metrics) after every step; raises NonFiniteError at `max_in_a_row`
  non-finite steps in a row. `checkpoint_steps()` -> the steps saved so far."""

  def __init__(self, max_in_a_row: int, checkpoint_steps, checkpoint_dir: str):
    self.max_in_a_row = int(max_in_a_row)
    self.checkpoint_steps, self.checkpoint_dir = checkpoint_steps, checkpoint_dir
    self._pending = None

  def after_step(self, step: int, metrics):
    """Takes this step's metrics; checks the previous step's (already computed by now)."""
    pending, self._pending = self._pending, (step, metrics)
    if pending is not None:
      self._check(*pending)

  def flush(self):
    """Checks the last step taken (at the end of the loop)."""
    if self._pending is not None:
      pending, self._pending = self._pending, None
      self._check(*pending)

  def _check(self, step: int, metrics):
    in_a_row, in_all = (int(v) for v in jax.device_get(
        (metrics["nonfinite_in_a_row"], metrics["skipped_nonfinite_steps"])))
    if not in_a_row:
      return
    loss = float(jax.device_get(metrics["loss"]))
    logging.warning("Step %d: loss %s or its gradient is not finite; update skipped (%d in a row, "
                    "%d in this run's life).", step, loss, in_a_row, in_all)
    say(f"step {step}: non-finite loss ({loss}) or gradient, update skipped ({in_a_row} in a row, "
        f"{in_all} in all)")
    if in_a_row >= self.max_in_a_row:
      first = step - in_a_row + 1
      good = [s for s in self.checkpoint_steps() if s < first]
      where = (f"the last checkpoint before them is step {max(good)} in {self.checkpoint_dir}"
               if good else f"no checkpoint was saved before them in {self.checkpoint_dir}")
      raise NonFiniteError(
          f"{in_a_row} non-finite steps in a row (steps {first}..{step}; parameters last updated "
          f"at step {first - 1}): stopping (config.max_nonfinite_steps={self.max_in_a_row}); "
          f"{where}. Lower config.optim.learning_rate or set config.optim.grad_clip_norm, and "
          "run the same command to resume from the latest checkpoint.")
