"""SIGTERM (TPU preemption, SLURM's time limit or scancel, `kill`) -> stop after the current step
with a checkpoint."""

from __future__ import annotations

import signal
import threading

import jax


class Preemption:
  """With several processes the step is agreed through JAX's preemption sync point (its
  coordination service sees the signal), so every process saves the same step; alone, a Python
  signal handler notes it. A context manager: on exit SIGTERM goes back to whoever had it."""

  def __init__(self):
    self.signalled = False
    self.multi_process = jax.process_count() > 1
    self._previous = None
    if not self.multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.signalled = True

  def close(self):
    """Gives SIGTERM back to whoever had it before the run (e.g. a test runner)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def reached(self, step: int) -> bool:
    if self.multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled
