"""Real `main.py` runs of the micro model in subprocesses, as a user starts them, and what the tests
read back from them: logged scalars (TensorBoard's own reader) and checkpointed parameters.

Every run here uses one training recipe (`train_cmd`), so that an interrupted run in any test can
be compared with the one uninterrupted run of the session (the `uninterrupted_run` fixture in
conftest.py): how often a run logs, checkpoints or evaluates changes nothing it computes.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALS = ("zs_shape", "zs_colour", "zs_count", "zs_heldout_combo", "retrieval", "diagnostics")
# The uninterrupted reference run's length and device count (one process, 2 CPU devices).
REFERENCE_STEPS = 30
REFERENCE_DEVICES = 2


def train_cmd(workdir, total_steps=REFERENCE_STEPS, extra=()):
  """main.py on the micro model, logging every step; `extra` flags are appended (later wins)."""
  return [sys.executable, os.path.join(REPO, "main.py"),
          f"--config={os.path.join(REPO, 'configs/rankclip_synthetic.py')}", f"--workdir={workdir}",
          "--config.model.size=micro", "--config.image_size=32", "--config.context_length=16",
          "--config.batch_size=16", f"--config.total_steps={total_steps}",
          "--config.optim.warmup_steps=1", "--config.log_every_steps=1",
          # No TensorFlow import (~4 s a process); the uninterrupted reference run writes with
          # CLU's writer instead (conftest.py), so every comparison also compares the two writers.
          "--config.metric_writer=tensorboard"] + [
              f"--config.evals.{e}.num_examples=16" for e in EVALS] + list(extra)


def xla_flags(devices=None):
  """XLA_FLAGS for a process a test starts: the suite's compile-time flags (conftest.py) and, given
  a count, that many CPU devices."""
  flags = [os.environ.get("RANKCLIP_JAX_TEST_XLA_FLAGS", "")]
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return " ".join(f for f in flags if f)


def env(devices):
  return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_processes(cmd, n, devices_each, stdouts=None):
  """Starts `cmd` as n JAX processes joined through a localhost coordinator; process i's output
  (stdout and stderr) goes to stdouts[i] (default: a pipe)."""
  port = free_port()
  stdouts = stdouts or [subprocess.PIPE] * n
  return [subprocess.Popen(cmd + [f"--coordinator_address=localhost:{port}",
                                  f"--num_processes={n}", f"--process_id={i}"],
                           env=env(devices_each), stdout=stdouts[i], stderr=subprocess.STDOUT,
                           text=True, cwd=REPO) for i in range(n)]


def run_processes(cmd, n, devices_each, timeout=400):
  """Runs `cmd` as n JAX processes joined through a localhost coordinator; returns their output.

  Each process writes into a file of its own, not a pipe: one whose output filled a pipe that was
  not being read yet would block, and the others with it at their next collective (seen when JAX
  logged every compilation). On timeout every process is killed and the failure shows their output.
  """
  files = [tempfile.TemporaryFile("w+") for _ in range(n)]
  procs = start_processes(cmd, n, devices_each, stdouts=files)
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 0.1))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.wait()
  outs = []
  for f in files:
    f.seek(0)
    outs.append(f.read())
    f.close()
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} of {n} (exit status {p.returncode}):\n{out[-4000:]}"
  return outs


def logged(workdir, tag="train/loss"):
  """{step: value} of a scalar in the run's TensorBoard files (the last value written per step:
  a resumed run writes again the steps after its checkpoint)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  acc.Reload()
  return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def checkpoint_steps(workdir):
  """The finished checkpoints of a run (step folders; Orbax's temporary folders are not steps)."""
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def final_params(workdir, step, data_position=None):
  """The parameters of `step`, restored in this (single) process together with a training
  iterator; `data_position`: the input position that iterator must resume at."""
  from rankclip_jax import checkpointing, train  # pylint: disable=g-import-not-at-top
  from tests.test_train import micro_config  # pylint: disable=g-import-not-at-top
  trainer = train.Trainer(micro_config(total_steps=step))
  it = trainer.train_iterator()
  ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=2, keep=3)
  got, state = ck.restore(trainer.abstract_state_with_shardings(), it, step=step)
  ck.close()
  assert got == step
  if data_position is not None:
    assert it.get_state() == {"next_index": data_position}
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def no_true_gradient(path) -> bool:
  """The attention's key biases (a tree path): adding b to every key adds q.b to all of a query's
  logits, which the softmax ignores, so their gradient is 0 up to round-off, and Adam, normalising
  it, takes steps of random sign on them. Layouts and process counts agree on them only in size."""
  return "['key']['bias']" in jax.tree_util.keystr(path)


def assert_same_training(workdir, reference, *, loss_rtol, grad_norm_rtol, param_atol):
  """`workdir` (interrupted and resumed) trained like `reference` (uninterrupted): the same loss
  and gradient norm at every step and the same final parameters (the key biases aside: see
  no_true_gradient).
  A resume that lost or repeated part of the data, restarted the schedule or restored a stale
  state changes the loss by percents at the first step after it."""
  for tag, rtol in (("train/loss", loss_rtol), ("train/grad_norm", grad_norm_rtol)):
    got, want = logged(workdir, tag), logged(reference, tag)
    assert sorted(got) == sorted(want) == list(range(1, REFERENCE_STEPS + 1)), tag
    for step in want:
      np.testing.assert_allclose(got[step], want[step], rtol=rtol, err_msg=f"{tag} at {step}")
  last = REFERENCE_STEPS
  got, want = final_params(workdir, last), final_params(reference, last)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    if not no_true_gradient(path):
      np.testing.assert_allclose(a, b, rtol=0, atol=param_atol, err_msg=jax.tree_util.keystr(path))
