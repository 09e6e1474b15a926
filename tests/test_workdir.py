"""One writer per workdir, readers that touch nothing: a second training run on a workdir is refused
while the first holds its lock (<workdir>/train.lock), by every process of a multi-process run, and
not once the holder was killed; evaluate, load and convert export leave the running run's save in
flight alone and create nothing, while the writer cleans it up; a finished run is not resumed with
a smaller total_steps. Real processes hold the lock: each test bounds them with timeouts."""

import errno
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys

import jax.numpy as jnp
import pytest

import rankclip_jax
from rankclip_jax import checkpointing, convert
from rankclip_jax.evaluate import evaluate_run
from tests import cli_runs
from tests.test_checkpoint_faults import MICRO_RUN_FLAGS, copy_run

# Takes the workdir's lock with the library function, as training does, then sleeps; with a second
# argument it first forks a child that sleeps too (a data worker outliving a killed run).
_HOLDER = r"""
import os, sys, time
from rankclip_jax import workdir_lock
lock = workdir_lock.hold(sys.argv[1])
child = os.fork() if len(sys.argv) > 2 else 0
if child == 0 and len(sys.argv) > 2:
  time.sleep(300)
  os._exit(0)
print(f"held {child}", flush=True)
time.sleep(300)
"""

# Takes the lock as training does (a multi-process run when given a coordinator), reporting a
# refusal as main.py does: one `Error:` line, exit status 1.
_CONTENDER = r"""
import sys
from rankclip_jax import distributed, workdir_lock
from rankclip_jax.errors import UserError
if len(sys.argv) > 2:
  distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
import jax
try:
  lock = workdir_lock.hold(sys.argv[1])
except UserError as e:
  raise SystemExit(f"Error: {e}")
print(f"process {jax.process_index()} took it: held={lock.held}", flush=True)
"""


def _env():
  return dict(cli_runs.env(1), PYTHONPATH=cli_runs.REPO)


def _start_holder(workdir, fork=False):
  """The holder process, once it holds the lock; and its forked child's pid (0 without one)."""
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)] + ["fork"] * fork,
                            env=_env(), stdout=subprocess.PIPE, text=True, cwd=cli_runs.REPO)
  selector = selectors.DefaultSelector()
  selector.register(holder.stdout, selectors.EVENT_READ)
  if not selector.select(timeout=120):
    holder.kill()
    raise AssertionError("the holder did not take the lock within 120 s")
  line = holder.stdout.readline()
  assert line.startswith("held "), (line, holder.poll())
  return holder, int(line.split()[1])


def _contend(workdir, *extra):
  return subprocess.Popen([sys.executable, "-c", _CONTENDER, str(workdir), *map(str, extra)],
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=cli_runs.REPO)


def _finish(procs, timeout=120):
  """(exit status, stdout, stderr) of each process; all killed past `timeout`."""
  results = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    results.append((p.returncode, out, err))
  return results


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith("Error:")]


def _assert_names_holder(error, workdir, pid):
  assert f"{workdir} is in use by another training run (process {pid} on host " \
         f"{socket.gethostname()}, running since " in error, error
  assert f"lock file {workdir}/train.lock" in error and "another --workdir" in error


def test_a_second_writer_is_refused_while_the_first_lives_and_not_after_it_was_killed(tmp_path):
  """The holder (with a forked child, as a data worker) holds the lock: a second process is
  refused with one `Error:` line naming the holder's process id, host and start time. The holder
  SIGKILLed (its child still running): the next start takes the lock and records itself."""
  workdir = tmp_path / "run"
  holder, child = _start_holder(workdir, fork=True)
  try:
    record = json.loads((workdir / "train.lock").read_text())
    assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
    [(status, out, err)] = _finish([_contend(workdir)])
    assert status == 1 and "took it" not in out, err[-3000:]
    [error] = _error_lines(err)
    _assert_names_holder(error, workdir, holder.pid)
    assert f"since {record['since']};" in error
    holder.kill()
    holder.wait(timeout=60)
    os.kill(child, 0)  # the child lives on, its copy of the lock closed
    contender = _contend(workdir)
    [(status, out, err)] = _finish([contender])
    assert status == 0 and "process 0 took it: held=True" in out, err[-3000:]
    assert json.loads((workdir / "train.lock").read_text())["pid"] == contender.pid
  finally:
    holder.kill()
    holder.wait(timeout=60)
    try:
      os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
      pass


def test_the_processes_of_one_run_share_the_lock(tmp_path):
  """Two JAX processes joined through a coordinator: while another run holds the workdir, both
  stop with the same `Error:` line (process 0's verdict). (That the processes of one run do not
  refuse each other, every two-process main.py run of test_multihost.py shows.)"""
  workdir = tmp_path / "run"
  holder, _ = _start_holder(workdir)
  try:
    port = cli_runs.free_port()
    results = _finish([_contend(workdir, f"localhost:{port}", i) for i in range(2)])
    assert [r[0] for r in results] == [1, 1], [r[2][-2000:] for r in results]
    errors = [_error_lines(r[2]) for r in results]
    assert len(errors[0]) == 1 and errors[0] == errors[1], errors
    _assert_names_holder(errors[0][0], workdir, holder.pid)
  finally:
    holder.kill()
    holder.wait(timeout=60)


def test_where_nothing_can_be_locked_the_run_goes_on_and_says_so(tmp_path, monkeypatch, caplog):
  """A gs:// workdir (no lock exists there) and a filesystem whose flock fails (ENOLCK): no lock,
  a warning saying so, no error."""
  from rankclip_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.hold("gs://bucket/run")
  assert not lock.held
  assert any("gs://bucket/run is not a local path: it cannot be locked" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]

  def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(workdir_lock.fcntl, "flock", no_locks)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.hold(str(tmp_path / "run"))
  assert not lock.held
  assert any(f"{tmp_path}/run/train.lock cannot be locked" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def _files(workdir):
  """{path: size} of every file of the run but its lock file."""
  found = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      if name != "train.lock":
        found[os.path.relpath(path, workdir)] = os.path.getsize(path)
  return found


def test_main_takes_the_lock_first_and_does_not_go_back_to_fewer_steps(tmp_path, micro_run):
  """main.py on a run that trained to step 40, asked for 30 steps: while another process holds
  the workdir, refused (one `Error:` line naming it); once that process is SIGKILLed, the start
  proceeds past the lock and is refused for going back (one `Error:` line saying what the run
  holds and what to do) rather than saving step 40's state as step 30. Neither start writes
  anything into the run."""
  workdir = copy_run(micro_run, tmp_path)
  before = _files(workdir)
  cmd = cli_runs.train_cmd(workdir, total_steps=30, extra=MICRO_RUN_FLAGS)
  holder, _ = _start_holder(workdir)
  try:
    out = subprocess.run(cmd, env=cli_runs.env(2), capture_output=True, text=True, timeout=300,
                         cwd=cli_runs.REPO)
  finally:
    holder.kill()
    holder.wait(timeout=60)
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
  [error] = _error_lines(out.stderr)
  _assert_names_holder(error, workdir, holder.pid)
  assert "Traceback" not in out.stderr and _files(workdir) == before

  out = subprocess.run(cmd, env=cli_runs.env(2), capture_output=True, text=True, timeout=300,
                       cwd=cli_runs.REPO)
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
  [error] = _error_lines(out.stderr)
  assert error.startswith(f"Error: config.total_steps=30, but the run in {workdir} has trained "
                          "to step 40 (checkpoints [20, 40])"), error
  assert "set config.total_steps above 40" in error and "another --workdir" in error
  assert f"python -m rankclip_jax.evaluate --workdir={workdir} --step=<step>" in error
  assert "Traceback" not in out.stderr and _files(workdir) == before


def test_readers_leave_a_save_in_flight_alone_and_the_writer_cleans_it_up(tmp_path, micro_run):
  """A temporary folder of a save in flight (Orbax's <step>.orbax-checkpoint-tmp-<n>) survives
  evaluate, rankclip_jax.load and convert's export opening the run; a reader creates no folder
  either. The writer (training's Checkpointer, the lock holder) deletes it before its first
  save."""
  workdir = copy_run(micro_run, tmp_path)
  folder = workdir / "checkpoints"
  in_flight = folder / "60.orbax-checkpoint-tmp-1761000000000000"
  (in_flight / "state").mkdir(parents=True)
  (in_flight / "state" / "_METADATA").write_text("{}")
  assert evaluate_run(str(workdir))[0] == 40
  assert rankclip_jax.load(str(workdir)).step == 40
  assert rankclip_jax.load(str(folder / "20")).step == 20
  convert.export_run(str(workdir), str(tmp_path / "exported.safetensors"))
  assert sorted(os.listdir(folder)) == ["20", "40", in_flight.name]
  assert (in_flight / "state" / "_METADATA").read_text() == "{}"
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
    evaluate_run(str(empty))
  assert not os.listdir(empty)

  ck = checkpointing.Checkpointer(str(folder), read_only=False, every_steps=20, keep=3,
                                  async_save=False)
  assert ck.save(41, {"x": jnp.zeros(4)}, force=True)
  ck.close()
  assert sorted(os.listdir(folder)) == ["20", "40", "41"]
