"""Several JAX processes (CPU, localhost coordinator) train and evaluate like one; SIGTERM stops a
run with a checkpoint that the next start resumes from, across process counts, and the resumed run
ends where an uninterrupted one does; skipped examples are counted across processes."""

import json
import os
import re
import signal
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from tests import cli_runs
from tests.cli_runs import REPO, checkpoint_steps, env, logged, run_processes, start_processes


def _train_cmd(workdir, total_steps=4, extra=()):
  return cli_runs.train_cmd(workdir, total_steps, ["--config.checkpoint.every_steps=2",
                                                   "--config.checkpoint.async_save=False",
                                                   *extra])


def test_two_processes_train_and_evaluate_like_one(tmp_path):
  two, one = tmp_path / "two_processes", tmp_path / "one_process"
  outs = run_processes(_train_cmd(two), n=2, devices_each=2)
  assert "on 4 cpu device(s)" in outs[0] and "Results (held-out evaluation)" in outs[0]
  assert "Results" not in outs[1]  # process 0 alone reports
  # main.py run as __main__ with an exit hook that says whether TensorFlow was ever imported: with
  # --config.metric_writer=tensorboard (cli_runs.train_cmd) it never is, though it is installed.
  hook = ("import atexit, runpy, sys\n"
          "atexit.register(lambda: print('TENSORFLOW LOADED:', 'tensorflow' in sys.modules))\n"
          "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
  single = subprocess.run([sys.executable, "-c", hook] + _train_cmd(one)[1:], env=env(4),
                          capture_output=True, text=True, timeout=400, cwd=REPO)
  assert single.returncode == 0, single.stderr[-4000:]
  assert "TENSORFLOW LOADED: False" in single.stdout, single.stdout[-2000:]
  # Nothing logged at warning level or above (absl's "W1203 12:00:00.000 ..." lines): Orbax's
  # warning on the checkpointer's array handler opened every run's output.
  assert not [l for l in single.stderr.splitlines() if re.match(r"[WEF]\d{4} ", l)], single.stderr
  # The same global batches (each process its half of every batch) give the same losses and the
  # same gradients: the gradient norm of every step, before the optimizer's normalisation hides a
  # constant factor (a sum over processes where a mean belongs), compared as tightly as the loss.
  for tag in ("train/loss", "train/grad_norm"):
    l2, l1 = logged(two, tag), logged(one, tag)
    assert sorted(l2) == sorted(l1) == [1, 2, 3, 4]
    for step in l1:
      assert l2[step] == pytest.approx(l1[step], rel=1e-5), (tag, step)
  r2 = json.load(open(two / "results.json"))
  r1 = json.load(open(one / "results.json"))
  assert r2 == pytest.approx(r1, abs=1e-4)
  # The two processes' checkpoint restores in this single process (8 devices), equal to the
  # single-process run's up to float reassociation (rows summed in another order): measured at
  # most 5e-8 apart, compared within 1e-6, a thousandth of one step's update (Adam moves each
  # parameter about lr = 1e-3 a step). Except the key biases (cli_runs.no_true_gradient: measured
  # up to 7e-5 apart), which must only stay at round-off size.
  # Its input position carries over too: 2 processes x 32 examples (4 steps of 8 each) -> the
  # single process continues at example 64 of the global order, where the one-process run is.
  p2 = cli_runs.final_params(two, 4, data_position=64)
  p1 = cli_runs.final_params(one, 4, data_position=64)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p2), jax.tree.leaves(p1)):
    name = jax.tree_util.keystr(path)
    if cli_runs.no_true_gradient(path):
      assert np.abs(a).max() < 1e-3 and np.abs(b).max() < 1e-3, name
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def _stopped_at(out):
  stopped = [l for l in out.splitlines() if l.startswith("Stopped by SIGTERM at step ")]
  assert stopped, out[-4000:]
  return int(stopped[0].split("step ")[1].split("/")[0])


def test_sigterm_stops_with_a_checkpoint_and_the_next_start_resumes(tmp_path, uninterrupted_run):
  """One process is sent SIGTERM (its Python handler), resumes as two processes of which only
  process 1 is sent SIGTERM (JAX's preemption sync point: both must stop at the same step with one
  checkpoint), and resumes once more as one process to the end: every step's loss and gradient
  norm, and the final parameters, are those of the run that was never stopped."""
  workdir = tmp_path / "run"
  total = cli_runs.REFERENCE_STEPS
  # The reference recipe, with checkpoints only when stopped (and at the end).
  cmd = cli_runs.train_cmd(workdir, extra=["--config.checkpoint.every_steps=1000"])

  # 1. One process, SIGTERM after step 5.
  proc = subprocess.Popen(cmd, env=env(cli_runs.REFERENCE_DEVICES), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=REPO)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(f"step 5/{total}"):
      proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=300)
  out = "".join(lines)
  assert proc.returncode == 0, out[-4000:]
  first = _stopped_at(out)
  assert 5 <= first < total
  assert checkpoint_steps(workdir) == [first]
  assert not (workdir / "results.json").exists()

  # 2. Two processes (one device each: the same 2-device mesh) resume; SIGTERM to process 1 only,
  # three steps later.
  log1 = open(tmp_path / "process_1.log", "w+")
  procs = start_processes(cmd, n=2, devices_each=1, stdouts=[subprocess.PIPE, log1])
  lines = []
  for line in procs[0].stdout:
    lines.append(line)
    if line.startswith(f"step {first + 3}/{total}"):
      procs[1].send_signal(signal.SIGTERM)
  for p in procs:
    p.wait(timeout=300)
  out = "".join(lines)
  log1.seek(0)
  assert [p.returncode for p in procs] == [0, 0], out[-3000:] + log1.read()[-3000:]
  assert f"Resuming at step {first}/{total}" in out
  second = _stopped_at(out)  # printed by process 0, which was not signalled itself
  assert first + 3 <= second < total
  assert checkpoint_steps(workdir) == [first, second]
  saved = os.listdir(workdir / "checkpoints" / str(second) / "data")
  assert sorted(f for f in saved if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert not (workdir / "results.json").exists()

  # 3. One process again, to the end.
  resumed = subprocess.run(cmd, env=env(cli_runs.REFERENCE_DEVICES), capture_output=True,
                           text=True, timeout=300, cwd=REPO)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert f"Resuming at step {second}/{total}" in resumed.stdout
  assert json.load(open(workdir / "results.json"))["step"] == total
  # Up to step `first`: the reference's computation, the same numbers. The steps in two processes
  # sum rows in another order (at step first+1 the loss differs by ~1e-7), and Adam turns
  # round-off in the gradients of barely used parameters (rare tokens' embeddings) into
  # lr-sized steps, so the runs drift apart slowly: measured at most 6.4e-5 (loss), 2.6e-3
  # (gradient norm) and 6e-5 (parameters) apart by step 30. A lost data position moved the loss
  # by 5% at the first step after it, a gradient twice too large doubles its norm.
  early = {s: v for s, v in logged(workdir).items() if s <= first}
  assert early == {s: v for s, v in logged(uninterrupted_run).items() if s <= first}
  cli_runs.assert_same_training(workdir, uninterrupted_run, loss_rtol=2e-4, grad_norm_rtol=1e-2,
                                param_atol=3e-4)


def test_two_processes_count_every_skipped_example_of_a_csv(tmp_path):
  """A CSV with missing, corrupt, truncated and empty-caption rows, read by two processes (process
  p of 2 takes examples p, p + 2, ... of the shuffled epoch): the skip counts in the train state
  and in TensorBoard are the sum over both processes of the bad rows each met, derived here from
  grain's epoch order independently of the pipeline. (A single process counts with the same code,
  its share being the whole order; test_alip.py trains from a CSV in one process.)"""
  from rankclip_jax.data import records
  from rankclip_jax.data.records import SKIP_KINDS
  from tests.test_data_sources import _expected_skips, _final_state, _make, _real_data_config
  src, kinds = _make("csv", tmp_path, num_good=16)
  workdir = tmp_path / "run"
  run_processes(_train_cmd(workdir, total_steps=2, extra=[
      "--config.data.train.kind=csv", f"--config.data.train.path={src.files[0]}"]),
                n=2, devices_each=1)
  order = grain.MapDataset.range(len(src)).shuffle(seed=0).repeat(None)
  expected = dict.fromkeys(SKIP_KINDS, 0)
  for p in range(2):  # 2 steps of 8 good examples per process: 2 epochs of its 8 good rows
    for k, v in _expected_skips(kinds, len(src), 0, 2 * 8, order=order[p::2]).items():
      expected[k] += v
  assert sum(expected.values()) > 4  # more than one epoch: some bad rows were met twice
  step, state = _final_state(_real_data_config("csv", src.files[0]), str(workdir))
  assert step == 2
  assert records.skip_counts(state.data_skipped) == expected
  assert {k: int(logged(workdir, f"data/skipped/{k}")[2]) for k in SKIP_KINDS} == expected


def test_data_position_across_process_counts():
  """remap_data_position: the first example of the global order not read by every process, split
  over the new processes (process q of Q reads q, q + Q, ...)."""
  from rankclip_jax.data.pipeline import remap_data_position
  # 2 -> 1 and 1 -> 2 without skips: exact.
  assert remap_data_position([{"next_index": 32}] * 2, 0, 1) == {"next_index": 64}
  assert [remap_data_position([{"next_index": 64}], q, 2) for q in (0, 1)] == [
      {"next_index": 32}, {"next_index": 32}]
  # 2 -> 3 with process 1 ahead (process 0 skipped bad examples): global 0..9 read by both
  # (process 0 read 0, 2, .., 8, process 1 read 1, 3, .., 13), so continue at 10 = 3*3 + 1.
  states = [{"next_index": 5}, {"next_index": 7}]
  assert [remap_data_position(states, q, 3)["next_index"] for q in range(3)] == [4, 3, 3]
  with pytest.raises(ValueError, match="worker processes"):
    remap_data_position([{"workers_state": {}}], 0, 2)
