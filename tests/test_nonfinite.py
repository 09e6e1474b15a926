"""Non-finite steps on a real micro run: a step whose loss is NaN changes nothing (parameters and
optimizer state bit-identical across it, read back from real checkpoints), is counted in the train
state and logged, training goes on to the end; enough of them in a row stop the run, naming the
last good checkpoint. The NaN is planted by the test (a poisoned batch), not by the library."""

import itertools
import json

import jax
import numpy as np
import pytest

from rankclip_jax import checkpointing, optim, train
from rankclip_jax.nonfinite import NonFiniteError
from test_train import micro_config


def poison(monkeypatch, bad_steps):
  """Steps in `bad_steps` (counted from 1, a run started from scratch) get NaN images."""
  real = train.Trainer.global_batch
  calls = itertools.count(1)

  def global_batch(self, local_batch):
    batch = real(self, local_batch)
    if next(calls) in bad_steps:
      batch = dict(batch, image=batch["image"] * np.float32(np.nan))
    return batch
  monkeypatch.setattr(train.Trainer, "global_batch", global_batch)


def restore(config, workdir, steps):
  """The train states saved at `steps`, as numpy."""
  abstract = train.Trainer(config).abstract_state_with_shardings()
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), every_steps=1,
                                    keep=100, async_save=False)
  try:
    return [jax.tree.map(np.asarray, jax.device_get(ckpt.restore(abstract, step=s)[1]))
            for s in steps]
  finally:
    ckpt.close()


def test_a_non_finite_step_is_skipped_counted_and_training_goes_on(tmp_path, monkeypatch, capsys):
  c = micro_config(**{"checkpoint.every_steps": 1, "checkpoint.keep": 100, "log_every_steps": 1})
  poison(monkeypatch, {4})
  final = train.train_and_evaluate(c, str(tmp_path))
  out = capsys.readouterr().out
  assert final["step"] == c.total_steps == 6
  assert "step 4: non-finite loss (nan) or gradient, update skipped (1 in a row, 1 in all)" in out
  assert "skipped 1 non-finite steps so far" in out
  before, after, later = restore(c, tmp_path, (3, 4, 5))
  # Across the skipped step: parameters and the optimizer's own state bit-identical; the step
  # counter moved on; the skip is counted in the state (it survives a resume).
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(before.opt_state.inner_state),
                  jax.tree.leaves(after.opt_state.inner_state)):
    np.testing.assert_array_equal(a, b)
  assert (int(before.step), int(after.step)) == (3, 4)
  assert [tuple(int(v) for v in optim.nonfinite_counts(s.opt_state)) for s in (before, after, later)
          ] == [(0, 0), (1, 1), (0, 1)]
  # The next step trains again: its parameters differ and are finite.
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after.params),
                                                     jax.tree.leaves(later.params))]
  assert sum(moved) > len(moved) // 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(later.params))
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["step"] == 6 and np.isfinite(results["retrieval/i2t_r1"])


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tmp_path, monkeypatch):
  # The same jitted step as the test above (only host-side settings differ): one compilation.
  c = micro_config(**{"checkpoint.every_steps": 2, "checkpoint.keep": 100, "log_every_steps": 1,
                      "max_nonfinite_steps": 3})
  poison(monkeypatch, set(range(3, 7)))
  with pytest.raises(NonFiniteError, match=r"3 non-finite steps in a row \(steps 3..5; parameters "
                     r"last updated at step 2\).*max_nonfinite_steps=3.*last checkpoint before "
                     r"them is step 2 in .*checkpoints"):
    train.train_and_evaluate(c, str(tmp_path))
  # It stopped there: no final results, nothing past the stretch saved.
  assert not (tmp_path / "results.json").exists()
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(tmp_path)), every_steps=1,
                                    keep=100, async_save=False)
  try:
    assert ckpt.all_steps() == [2, 4]  # step 6 (the last) was never reached
  finally:
    ckpt.close()


def test_a_non_finite_loss_with_a_finite_gradient_is_skipped_too():
  """A loss of +inf whose gradient is finite (the infinity is a constant of the parameters) is
  still a skipped step: the train step poisons one gradient leaf, the logit scale's, and the
  optimizer's check (the gradient's global norm) covers every leaf, frozen ones included (here the
  logit scale is frozen)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rankclip_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  c = micro_config(**{"loss.strategy": "plain", "optim.freeze_regex": "logit_scale"})
  trainer = train.Trainer(c)

  def infinite(*args):
    loss, metrics, new_state = trainer.objective(*args)
    return loss + jax.lax.stop_gradient(jnp.inf), metrics, new_state

  state = trainer.init()
  before = jax.tree.map(np.asarray, jax.device_get(state.params))
  step = jax.jit(functools.partial(
      step_lib.train_step, model=trainer.model, tx=trainer.tx, schedule=trainer.schedule,
      objective=infinite, freeze_regex=c.optim.freeze_regex))
  batch = trainer.global_batch(next(trainer.train_iterator()))
  # The infinity is added under stop_gradient, so the gradient is the finite one of the objective:
  # without the step's guard, the update would be applied (checked by removing the guard).
  after, metrics = step(state, batch)
  assert np.isnan(float(metrics["grad_norm"]))  # metrics["loss"] is the objective's own, finite
  assert tuple(int(v) for v in optim.nonfinite_counts(after.opt_state)) == (1, 1)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(after.params))):
    np.testing.assert_array_equal(a, np.asarray(b))
