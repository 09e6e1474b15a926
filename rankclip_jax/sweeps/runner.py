"""Runs a Plan on this machine: one run after another, or K at a time (devices.slots), each a
`python -m rankclip_jax.main` subprocess writing <run>/log.txt.

Running the same sweep again
- skips every run whose folder holds results.json (finished),
- starts the others again: main.py resumes an interrupted run from its last checkpoint, and a run
  that failed is retried; the log of each earlier attempt is kept as log.1.txt, log.2.txt, ...
One line per event says where the sweep is: run k of n, its result or its error, the ETA.

The runs share a persistent XLA compilation cache, <workdir>/.xla_cache (unless
JAX_COMPILATION_CACHE_DIR is set): runs that differ only in their seed compile
the same computations, so every run after the first of its group skips most of its compile time.

While the sweep holds <workdir>/.sweep.lock (its runs inherit it, so it is held until the last of
them has stopped) no second sweep starts on the same folder, and none writes its plan there
(take_lock: the command takes the lock before it writes sweep.json; `--emit` takes it too while
it writes its files). The lock is a kernel lock (flock): it dies with its last holder, so a killed
sweep never blocks the next one. SIGTERM or Ctrl-C stops the sweep:
its runs get SIGTERM, save a checkpoint and stop; a sweep killed outright (SIGKILL) takes its runs
down the same way (Linux: they get SIGTERM when it dies).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import time
from typing import IO, Callable, Optional

from rankclip_jax.sweeps import report
from rankclip_jax.sweeps.devices import Slot
from rankclip_jax.sweeps.grid import SweepError
from rankclip_jax.sweeps.plan import Plan, PlannedRun
from rankclip_jax.sweeps.rundir import (LOG, checkpoint_steps, keep_previous_log, last_error,
                                        old_logs)

LOCK = ".sweep.lock"
COMMAND = "command.txt"
XLA_CACHE = ".xla_cache"
SIDE_BY_SIDE_RUNS = 4  # a sweep of at most this many runs prints their results next to each other


def _format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def take_lock(workdir: str) -> IO:
  """The sweep's lock on `workdir` (made if missing), held until the returned file is closed and
  by every process that inherits it; SweepError naming the holder when another sweep has it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  lock = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.seek(0)
    holder = lock.read().strip()
    lock.close()
    raise SweepError(f"another sweep is running in {workdir} ({holder or 'its holder unknown'}; "
                     "or the runs it started are still stopping); wait for it to end, then run "
                     "the same command.") from None
  lock.seek(0)
  lock.truncate()
  lock.write(f"process {os.getpid()} on {socket.gethostname()} since "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
  lock.flush()
  return lock


def _die_with_parent():  # runs in the child between fork and exec
  try:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the sweep dies
  except OSError:
    pass


class Runner:
  """Executes the plan's unfinished runs over `slots`; `say` prints a progress line."""

  def __init__(self, plan: Plan, slots: list[Slot], say: Callable[[str], None] = print,
               poll_seconds: float = 0.5):
    self.plan, self.slots, self.say, self.poll = plan, slots, say, poll_seconds
    self.n = len(plan.runs)
    self.durations: list[float] = []
    self.failed: list[PlannedRun] = []
    self.interrupted: list[PlannedRun] = []
    self.stop_signal: Optional[int] = None
    self.running: dict[int, tuple[PlannedRun, subprocess.Popen, float]] = {}  # slot -> run

  def _tag(self, run: PlannedRun) -> str:
    return f"[{run.index}/{self.n}] {run.name}"

  def _eta(self, queued: int) -> str:
    if not self.durations:
      return "ETA after the first run"
    mean = sum(self.durations) / len(self.durations)
    now = time.time()
    running_left = [max(mean - (now - t0), 0) for _, _, t0 in self.running.values()]
    waves = -(-queued // len(self.slots))  # ceil
    left = waves * mean + (max(running_left) if running_left else 0)
    return f"ETA {_format_duration(left)}"

  def _changed(self, run: PlannedRun) -> None:
    """Warns when the run's folder was made by another command (the sweep file or the command
    line changed since): a finished run is not trained again, an unfinished one resumes."""
    path = os.path.join(self.plan.run_dir(run), COMMAND)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        before = f.read().strip()
      if before != shlex.join(self.plan.train_argv(run)):
        self.say(f"{self._tag(run)}: warning: its folder was made by another command ({path}); "
                 "delete the folder to train the run anew.")

  def _start(self, slot_index: int, run: PlannedRun, lock_fd: int) -> None:
    run_dir = self.plan.run_dir(run)
    os.makedirs(run_dir, exist_ok=True)
    self._changed(run)
    kept = keep_previous_log(run_dir)
    steps = checkpoint_steps(run_dir)
    argv = self.plan.train_argv(run)
    with open(os.path.join(run_dir, COMMAND), "w", encoding="utf-8") as f:
      f.write(shlex.join(argv) + "\n")
    slot = self.slots[slot_index]
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(self.plan.workdir, XLA_CACHE))
    env.update(slot.env)
    log = open(os.path.join(run_dir, LOG), "w", encoding="utf-8")  # pylint: disable=R1732
    try:
      proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True,
                              pass_fds=(lock_fd,), preexec_fn=_die_with_parent)
    finally:
      log.close()
    self.running[slot_index] = (run, proc, time.time())
    how = "started"
    if steps:
      how = f"resuming from step {steps[-1]}"
    if kept:
      how += f" (attempt {len(old_logs(run_dir)) + 1}; the last one's log kept as {kept})"
    self.say(f"{self._tag(run)}: {how} on {slot.description}; log "
             f"{os.path.join(run_dir, LOG)}")

  def _finish(self, run: PlannedRun, proc: subprocess.Popen, t0: float, queued: int) -> None:
    took = time.time() - t0
    run_dir = self.plan.run_dir(run)
    if self.plan.finished(run):
      self.durations.append(took)
      results = report.read_results(run_dir)
      shown = ", ".join(f"{k} {results[k]:.4f}"
                        for k in report.headline_keys(results, self.plan.headline))
      self.say(f"{self._tag(run)}: done in {_format_duration(took)}: {shown or 'no metrics'} | "
               f"{self._eta(queued)}")
    elif proc.returncode == 0 or self.stop_signal is not None:
      steps = checkpoint_steps(run_dir)
      self.interrupted.append(run)
      self.say(f"{self._tag(run)}: stopped after {_format_duration(took)}"
               + (f" at checkpoint {steps[-1]}" if steps else "")
               + "; the same command resumes it.")
    else:
      self.failed.append(run)
      self.say(f"{self._tag(run)}: FAILED (exit status {proc.returncode}) after "
               f"{_format_duration(took)}: {last_error(os.path.join(run_dir, LOG))} | log "
               f"{os.path.join(run_dir, LOG)}; the same command retries it | {self._eta(queued)}")

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    if self.stop_signal is None:
      self.say(f"Stopping the sweep ({signal.Signals(signum).name}): its running runs save a "
               "checkpoint and stop; the same command resumes them.")
    self.stop_signal = signum
    for _, proc, _ in self.running.values():
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  def run(self, lock: Optional[IO] = None) -> int:
    """Runs what is left; returns the exit status (0: every run finished). `lock`: the sweep's
    lock (take_lock) when the caller holds it already; it is closed at the end."""
    lock = lock or take_lock(self.plan.workdir)
    handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      return self._run(lock.fileno())
    finally:
      for s, h in handlers.items():
        signal.signal(s, h)
      lock.close()

  def _run(self, lock_fd: int) -> int:
    queue = []
    for run in self.plan.runs:
      if self.plan.finished(run):
        self.say(f"{self._tag(run)}: finished before, skipped.")
        self._changed(run)
      else:
        queue.append(run)
    self.say(f"Sweep: {len(queue)} of {self.n} runs to go, {len(self.slots)} at a time; "
             f"workdir {self.plan.workdir}")
    while queue or self.running:
      for k in range(len(self.slots)):
        if k not in self.running and queue and self.stop_signal is None:
          self._start(k, queue.pop(0), lock_fd)
      for k, (run, proc, t0) in list(self.running.items()):
        if proc.poll() is not None:
          del self.running[k]
          self._finish(run, proc, t0, len(queue))
      if self.stop_signal is not None and not self.running:
        break
      time.sleep(self.poll)
    rep = report.write_report(self.plan.workdir)
    done = rep["finished"]
    if done and self.n <= SIDE_BY_SIDE_RUNS:
      self.say("Results (held-out evaluation), one column per run:\n" + report.side_by_side(rep))
    self.say(f"Sweep: {done} of {self.n} runs finished; report in "
             f"{os.path.join(self.plan.workdir, report.REPORT_MD)}")
    if self.stop_signal is not None:
      return 128 + self.stop_signal
    if self.failed:
      names = ", ".join(repr(r.name) for r in self.failed)
      self.say(f"Error: {len(self.failed)} run(s) failed: {names}; their logs are in their "
               "folders (log.txt). Fix the cause, then run the same command to retry them.")
      return 1
    return 0 if done == self.n else 1
