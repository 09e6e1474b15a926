"""One training run per workdir: the lock file <workdir>/train.lock.

The same command started twice (a scheduler that requeues a job while its first instance still
runs) would otherwise train twice into one folder, and Orbax's saves of the two would replace each
other's steps. `hold(workdir)` is taken by training (train.py) before it writes anything into the
workdir or compiles anything; a second run on the same workdir stops there with one `Error:` line
(WorkdirInUseError) naming the holder: its host, process id and start time, read from the lock
file, where the holder writes them (JSON) when it takes the lock.

The lock is the kernel's (flock on <workdir>/train.lock, held open for the run's life), so it dies
with its holder: a run that was killed (SIGKILL, a lost machine) leaves the file behind but no
lock, and the next start takes it over. The file is never deleted. Child processes do not keep it:
the descriptor is closed on exec and in forked children. flock works across hosts on NFS (Linux
turns it into an NFS lock); a filesystem that cannot lock (flock fails with ENOLCK, EOPNOTSUPP,
...) and a workdir that is not a local path (gs://bucket/run, where no lock exists) are run
without one, with a warning saying so: there, nothing stops a second run, so start one run per
workdir.

Multi-process runs share one lock: process 0 takes it and tells the others the verdict through
JAX's distributed runtime (its key-value store, no device computation), so that every process of
a refused run stops with the same error, and the processes of one run never refuse each other.
"""

from __future__ import annotations

import datetime
import fcntl
import itertools
import json
import os
import socket
import sys
from typing import Optional

import jax
from absl import logging

from rankclip_jax.errors import UserError

LOCK_FILE = "train.lock"
# How long processes 1.. wait for process 0's verdict: process 0 may still be opening data sets
# (the lock is taken after them, so that a bad path stops a run before it writes anything).
SHARE_TIMEOUT_S = 30 * 60

_verdicts = itertools.count()  # one key-value key per lock taken by this process


class WorkdirInUseError(UserError, RuntimeError):
  """Another run holds the workdir's lock; the message names it and what to do."""


class WorkdirLock:
  """A held lock, or none (processes other than 0, a filesystem that cannot lock); `release()`, or
  the end of the process, frees it."""

  def __init__(self, path: str, fd: Optional[int] = None):
    self.path = path
    self._fd = fd
    if fd is not None:
      # A forked child (a data worker) gets a copy of the descriptor, and with it the lock, which
      # would outlive this process: the child closes its copy (this process keeps its own).
      os.register_at_fork(after_in_child=self._forget)

  @property
  def held(self) -> bool:
    return self._fd is not None

  def _forget(self):
    fd, self._fd = self._fd, None
    if fd is not None:
      try:
        os.close(fd)
      except OSError:
        pass

  def release(self) -> None:
    self._forget()  # closing the last descriptor of the open file frees the flock

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def is_local(workdir: str) -> bool:
  """Whether `workdir` is a path of this machine's filesystems (not a gs:// or other URL)."""
  return "://" not in workdir


def hold(workdir: str) -> WorkdirLock:
  """Takes the lock of `workdir` (creating the folder) for this run; WorkdirInUseError when another
  run holds it. Call on every process of a run, in the same order: see the module docstring."""
  path = os.path.join(workdir, LOCK_FILE)
  fd, refusal = None, ""
  if jax.process_index() == 0:
    fd, refusal = _take(workdir, path)
  refusal = _shared_verdict(refusal)
  if refusal:
    raise WorkdirInUseError(refusal)
  return WorkdirLock(path, fd)


def _take(workdir: str, path: str) -> tuple[Optional[int], str]:
  """(descriptor holding the lock or None, refusal message or "") on this process."""
  if not is_local(workdir):
    logging.warning(
        "%s is not a local path: it cannot be locked, so nothing stops a second run from writing "
        "into it at the same time (their checkpoints would replace each other's). Start one run "
        "per workdir.", workdir)
    return None, ""
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:  # held by another open file: another run
    holder = _read_holder(fd)
    os.close(fd)
    return None, _refusal(workdir, path, holder)
  except OSError as e:  # ENOLCK, EOPNOTSUPP, ...: this filesystem has no locks
    os.close(fd)
    logging.warning(
        "%s cannot be locked (%s): nothing stops a second run from writing into %s at the same "
        "time (their checkpoints would replace each other's). Start one run per workdir.",
        path, e, workdir)
    return None, ""
  _write_holder(fd)
  return fd, ""


def _write_holder(fd: int) -> None:
  """Who holds the lock, for the message of a run refused: host, process id, start time."""
  holder = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "processes": jax.process_count(), "command": " ".join(sys.argv)[:2000]}
  data = (json.dumps(holder, indent=2) + "\n").encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> dict:
  """The holder's record ({} when unreadable: the holder may be writing it this instant)."""
  try:
    holder = json.loads(os.pread(fd, 65536, 0).decode())
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _refusal(workdir: str, path: str, holder: dict) -> str:
  if "pid" in holder:
    who = (f"process {holder.get('pid')} on host {holder.get('host', '?')}, running since "
           f"{holder.get('since', '?')}")
  else:
    who = "holder not recorded yet"
  return (f"{workdir} is in use by another training run ({who}; lock file {path}): two runs in "
          "one workdir overwrite each other's checkpoints. Wait for that run to end, or stop it "
          "if it is a duplicate (a requeued job), then run the same command again to resume; or "
          "give this run another --workdir. (A run that was killed holds no lock.)")


def _shared_verdict(refusal: str) -> str:
  """Process 0's verdict (its refusal message, or "" to go on), on every process."""
  if jax.process_count() == 1:
    return refusal
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  # JAX's key-value store (the one Orbax's barriers use): no device computation, nothing compiled.
  client = distributed.global_state.client
  key = f"rankclip_jax/workdir_lock/{next(_verdicts)}"
  if jax.process_index() == 0:
    client.key_value_set(key, "refused:" + refusal if refusal else "ok")
    return refusal
  verdict = client.blocking_key_value_get(key, SHARE_TIMEOUT_S * 1000)
  return verdict.partition(":")[2] if verdict.startswith("refused:") else ""
