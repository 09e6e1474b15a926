"""Several JAX processes (CPU, localhost coordinator) train and evaluate like one; SIGTERM stops a
run with a checkpoint that the next start resumes from."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALS = ("zs_shape", "zs_colour", "zs_count", "zs_heldout_combo", "retrieval", "diagnostics")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train_cmd(workdir, total_steps=4, extra=()):
  return [sys.executable, os.path.join(REPO, "main.py"),
          f"--config={os.path.join(REPO, 'configs/rankclip_synthetic.py')}", f"--workdir={workdir}",
          "--config.model.size=micro", "--config.image_size=32", "--config.context_length=16",
          "--config.batch_size=16", f"--config.total_steps={total_steps}",
          "--config.optim.warmup_steps=1", "--config.log_every_steps=1",
          "--config.checkpoint.every_steps=2", "--config.checkpoint.async_save=False"] + [
              f"--config.evals.{e}.num_examples=16" for e in EVALS] + list(extra)


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def _start_processes(cmd, n, devices_each, stdouts=None):
  """Starts `cmd` as n JAX processes joined through a localhost coordinator; process i's output
  (stdout and stderr) goes to stdouts[i] (default: a pipe)."""
  port = _free_port()
  stdouts = stdouts or [subprocess.PIPE] * n
  return [subprocess.Popen(cmd + [f"--coordinator_address=localhost:{port}",
                                  f"--num_processes={n}", f"--process_id={i}"],
                           env=_env(devices_each), stdout=stdouts[i], stderr=subprocess.STDOUT,
                           text=True, cwd=REPO) for i in range(n)]


def _run_processes(cmd, n, devices_each, timeout=400):
  """Runs `cmd` as n JAX processes joined through a localhost coordinator; returns their output."""
  procs = _start_processes(cmd, n, devices_each)
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def _losses(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  acc.Reload()
  return {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
          for e in acc.Tensors("train/loss")}


def _final_params(workdir, step, data_position=None):
  """The parameters of `step`, restored in this (single) process together with a training
  iterator; `data_position`: the input position that iterator must resume at."""
  from rankclip_jax import checkpointing, train
  from test_train import micro_config
  trainer = train.Trainer(micro_config(total_steps=4))
  it = trainer.train_iterator()
  ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=2, keep=3)
  got, state = ck.restore(trainer.abstract_state_with_shardings(), it, step=step)
  ck.close()
  assert got == step
  if data_position is not None:
    assert it.get_state() == {"next_index": data_position}
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def test_two_processes_train_and_evaluate_like_one(tmp_path):
  two, one = tmp_path / "two_processes", tmp_path / "one_process"
  outs = _run_processes(_train_cmd(two), n=2, devices_each=2)
  assert "on 4 cpu device(s)" in outs[0] and "Results (held-out evaluation)" in outs[0]
  assert "Results" not in outs[1]  # process 0 alone reports
  single = subprocess.run(_train_cmd(one), env=_env(4), capture_output=True, text=True,
                          timeout=400, cwd=REPO)
  assert single.returncode == 0, single.stderr[-4000:]
  # Same global batches (each process its half of every batch), same losses and results.
  l2, l1 = _losses(two), _losses(one)
  assert sorted(l2) == sorted(l1) == [1, 2, 3, 4]
  for step in l1:
    assert l2[step] == pytest.approx(l1[step], rel=1e-5), step
  r2 = json.load(open(two / "results.json"))
  r1 = json.load(open(one / "results.json"))
  assert r2 == pytest.approx(r1, abs=1e-4)
  # The two processes' checkpoint restores in this single process (8 devices), equal to the
  # single-process run's up to float reassociation (rows summed in another order); Adam's
  # normalisation turns gradient round-off of near-zero parameters into ~1e-5 differences.
  # Its input position carries over too: 2 processes x 32 examples (4 steps of 8 each) -> the
  # single process continues at example 64 of the global order, where the one-process run is.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               _final_params(two, 4, data_position=64), _final_params(one, 4, data_position=64))
  # ...and the single process's checkpoint restores in two processes: evaluating it there gives
  # the numbers that run reported.
  _run_processes([sys.executable, "-m", "rankclip_jax.evaluate", f"--workdir={one}"], n=2,
                 devices_each=2)
  evaluated = json.load(open(one / "eval" / "results_4.json"))
  assert {k: v for k, v in evaluated.items()} == pytest.approx(r1, abs=1e-4)


def _stopped_at(out):
  stopped = [l for l in out.splitlines() if l.startswith("Stopped by SIGTERM at step ")]
  assert stopped, out[-4000:]
  return int(stopped[0].split("step ")[1].split("/")[0])


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def test_sigterm_stops_with_a_checkpoint_and_the_next_start_resumes(tmp_path):
  """One process is sent SIGTERM (its Python handler), resumes as two processes of which only
  process 1 is sent SIGTERM (JAX's preemption sync point: both must stop at the same step with one
  checkpoint), and resumes once more as one process to the end."""
  workdir = tmp_path / "run"
  total = 40
  cmd = _train_cmd(workdir, total_steps=total, extra=["--config.checkpoint.every_steps=1000"])

  # 1. One process, SIGTERM after step 5.
  proc = subprocess.Popen(cmd, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=REPO)
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
  assert _checkpoint_steps(workdir) == [first]
  assert not (workdir / "results.json").exists()

  # 2. Two processes resume; SIGTERM to process 1 only, three steps later.
  log1 = open(tmp_path / "process_1.log", "w+")
  procs = _start_processes(cmd, n=2, devices_each=1, stdouts=[subprocess.PIPE, log1])
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
  assert _checkpoint_steps(workdir) == [first, second]
  saved = os.listdir(workdir / "checkpoints" / str(second) / "data")
  assert sorted(f for f in saved if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert not (workdir / "results.json").exists()

  # 3. One process again, to the end.
  resumed = subprocess.run(cmd, env=_env(2), capture_output=True, text=True, timeout=300,
                           cwd=REPO)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert f"Resuming at step {second}/{total}" in resumed.stdout
  assert json.load(open(workdir / "results.json"))["step"] == total
  assert sorted(_losses(workdir)) == list(range(1, total + 1))


def test_data_position_across_process_counts():
  """remap_data_position: the first example of the global order not read by every process, split
  over the new processes (process q of Q reads q, q + Q, ...)."""
  from rankclip_jax.checkpointing import remap_data_position
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
