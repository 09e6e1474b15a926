"""Orbax checkpoints of the train state, the input pipeline's position and the run's config.

Layout: <workdir>/checkpoints/<step>/{state, data, config}. Orbax writes each checkpoint into a
temporary directory (<step>.orbax-checkpoint-tmp-<n>) and renames it only once complete, so an
interrupted save never leaves a torn checkpoint behind: at restore the latest *finished* step is
used.

Writers and readers. A Checkpointer is opened either as the run's writer or read-only. The writer
is training's, which first takes the workdir's lock (<workdir>/train.lock, workdir_lock.py: a
second run on the workdir stops at start-up; a gs:// workdir cannot be locked and is written with
a warning saying so), or `convert`'s import into a new folder. Readers are evaluate,
`rankclip_jax.load`, `convert`'s export and config.model.init_from=<run>. Only the writer deletes
the temporary directories that an interrupted save left (Orbax starts that when the writer opens
the folder, and finishes it before the first save): a reader opening the workdir of a run still
training must not delete that run's save in flight. A reader never saves, never deletes, never
moves a damaged step aside and creates no folder.

A finished checkpoint damaged later (a file deleted or truncated) or one that does not match the
tree asked for never blocks a resume or an evaluation: the newest readable checkpoint is used, with
a warning naming the damaged one. Only proven damage counts (a file missing, truncated, or that
does not parse: see is_damage). An error that may pass (an I/O error such as EIO, a timeout, a
bucket's 503, tensorstore's UNAVAILABLE) is tried again, `read_tries` times in all with waits that
double from `retry_delay_s` (default 5 tries, 15 s of waiting); if it persists the read stops with
a CheckpointError naming the step and the cause, and nothing is moved. Resuming moves the damaged
step folders aside to <step>.damaged (Orbax lists only integer names; nothing is deleted) since
training writes that step again; evaluating and loading only read. A save that fails (no space
left, no permission) is one CheckpointError naming the folder, the step and the cause, whether
Orbax raises it at once or, for an asynchronous save, at the next save or wait; the earlier
checkpoints stay as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging as std_logging
import os
import re
import sys
import time
from typing import Any, Callable, Optional, TypeVar

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rankclip_jax import compat
from rankclip_jax import defaults
from rankclip_jax.data import pipeline
from rankclip_jax.errors import UserError

STATE, DATA, CONFIG = "state", "data", "config"
T = TypeVar("T")


class CheckpointError(UserError, OSError):
  """A checkpoint cannot be read or written: the message names the folder, the step, what is wrong
  and what to do. `reason` is the cause alone, one line; `damaged` whether the cause is proven
  damage of the checkpoint (see is_damage) rather than an error that may pass."""

  def __init__(self, message: str, *, reason: str = "", damaged: bool = True):
    super().__init__(message)
    self.reason = reason or message
    self.damaged = damaged


# tensorstore's error codes (its errors are ValueErrors "<CODE>: ...") that say nothing about the
# files: the storage failed or refused this time (a bucket's 503 is UNAVAILABLE).
_MAY_PASS_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "UNKNOWN",
                   "INTERNAL", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAUTHENTICATED")
_MAY_PASS_CODE = re.compile(rf"(?:^|: )(?:{'|'.join(_MAY_PASS_CODES)}): ")
# FAILED_PRECONDITION is both: tensorstore gives it to a file that does not decode ("Truncated
# Zstd-compressed stream": damage) and to an OS error it has no code for, EIO included, which it
# marks "[OS error ...]" (tensorstore/internal/os/error_code.cc).
_OS_ERROR = re.compile(r"(?:^|: )FAILED_PRECONDITION: .*\[OS error\b", re.DOTALL)
# OS errors that are facts about the files, not about the storage's health.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _chain(e: BaseException) -> list[BaseException]:
  """`e` and its causes, outermost first."""
  chain = [e]
  while chain[-1].__cause__ is not None and len(chain) < 32:
    chain.append(chain[-1].__cause__)
  return chain


def may_pass(e: BaseException) -> bool:
  """Whether `e`, raised while reading a checkpoint, may be a fault of the storage that passes (a
  disk's EIO, a network timeout, a bucket's 503), not proof that the files are damaged: an OS error
  other than a missing file, or a tensorstore error with one of _MAY_PASS_CODES, anywhere in its
  chain of causes. Such an error is tried again, and never moves a checkpoint aside."""
  if isinstance(e, CheckpointError):
    return False  # already decided (and tried again) by the read that raised it
  for link in _chain(e):
    if isinstance(link, OSError) and not isinstance(link, _MISSING + (CheckpointError,)):
      return True
    if isinstance(link, ValueError) and (_MAY_PASS_CODE.search(str(link))
                                         or _OS_ERROR.search(str(link))):
      return True
  return False


def is_damage(e: BaseException) -> bool:
  """Whether `e`, raised while reading a finished checkpoint, proves its files damaged or not
  matching the tree asked for, rather than a storage error that may pass (see may_pass), a bug, or
  a mistake in what the user gave (a UserError other than CheckpointError). What Orbax 0.12
  (tensorstore, grain) raises, as observed on damaged checkpoints (tests/test_checkpoint_faults.py):

    ValueError   tensorstore's errors (NOT_FOUND, DATA_LOSS, OUT_OF_RANGE, FAILED_PRECONDITION
                 without an OS error: a deleted or truncated array file or OCDBT manifest, a
                 "Truncated Zstd-compressed stream"); a tree or shape that does not match the
                 arrays saved; json.JSONDecodeError of a truncated _METADATA, config or data
                 position;
    KeyError     an item folder (state/, config/) missing: 'Item "state" was not found';
    OSError      FileNotFoundError of a missing config file or state folder;
    Exception    exactly Exception: Orbax's array reads wrap every tensorstore read error in a
                 plain Exception ("Encountered error while reading array index"), the cause chained.
  """
  if isinstance(e, CheckpointError):
    return e.damaged
  if isinstance(e, UserError) or may_pass(e):
    return False
  plain = type(e) is Exception  # pylint: disable=unidiomatic-typecheck
  return plain or isinstance(e, (ValueError, KeyError, OSError))


# The full tensorstore spec that tensorstore's errors end with ([tensorstore_spec='{...}']).
_TENSORSTORE_SPEC = re.compile(r" ?\[tensorstore_spec(\[\d+\])?='(?:[^'\\]|\\.)*'\]")


def describe(e: BaseException, limit: int = 480) -> str:
  """The innermost cause of `e` as one line, "<type>: <message>", its middle elided past `limit`
  characters (the start says what failed, the end why: "... No space left on device")."""
  if isinstance(e, CheckpointError):
    return e.reason
  while e.__cause__ is not None:
    e = e.__cause__
  text = e.args[0] if isinstance(e, KeyError) and e.args else e
  text = _TENSORSTORE_SPEC.sub("", " ".join(str(text).split()))
  if len(text) > limit:
    text = f"{text[:limit // 2 - 10]} ... {text[-(limit // 2):]}"
  return f"{type(e).__name__}: {text}"


def absolute_path(path: str) -> str:
  """Local paths made absolute (Orbax's tensorstore paths must be); cloud URLs (gs://bucket/run, as
  multi-host TPU runs use for a workdir every host can reach) kept as they are."""
  return path if "://" in path else os.path.abspath(path)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def resolve_run(path: str) -> tuple[str, Optional[int]]:
  """workdir | workdir/checkpoints | workdir/checkpoints/<step> -> (checkpoints dir, step or None)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path.rstrip("/")), int(base)
  if os.path.isdir(path):
    return path, None
  raise FileNotFoundError(
      f"{path}: not a run. Pass a workdir (with a checkpoints/ folder), its checkpoints/ folder, "
      "or one checkpoint, checkpoints/<step>.")


def finished_steps(directory: str) -> list[int]:
  """The steps of the finished checkpoints in `directory` (none if it does not exist), read from
  the files alone: no CheckpointManager, so no collective between processes and nothing started."""
  return sorted(ocp.utils.checkpoint_steps(absolute_path(directory)))


@contextlib.contextmanager
def _absl_warnings_off():
  """Orbax's warnings for settings chosen on purpose (a handler override, a read-only manager)
  would open every run's or evaluation's output: silenced while they are made."""
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


@functools.cache
def _save_replicated_arrays_whole_on_cpu():
  """On CPU, saves each replicated array from one copy rather than in slices, one per replica.

  Orbax's replica-parallel saving has every replica of a replicated array (under data parallelism:
  every parameter and optimizer moment) write a slice of it, through one small compiled slicing
  program per array shape and replica. CPU devices share the host's memory, so there is nothing to
  parallelise, only those compilations: a micro run's first save on 8 CPU devices took 7-8 s with
  replica-parallel saving and ~2 s without (docs/performance.md, "Checkpoints on CPU saved from
  one copy"). Orbax already turns it off by default on GPUs; TPUs keep it. The files written are
  the same either way. Orbax's registry of array handlers is process-wide, so this applies to
  every Orbax save of this process on CPU.
  """
  if jax.default_backend() != "cpu":
    return
  handler = compat.array_handler_saving_one_copy()
  if handler is None:  # another Orbax than requirements.txt's: leave its default alone
    return
  # Orbax logs a warning for every override of a registered type; this one is deliberate, and the
  # warning was the first line of every run's output.
  with _absl_warnings_off():
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpointer:
  """Periodic + final saves, keep the last `keep`, automatic resume; or read-only (see the module
  docstring: writers and readers)."""

  _barriers = itertools.count()  # unique names for the barriers of _move_aside

  def __init__(self, directory: str, *, read_only: bool = False, every_steps: Optional[int] = None,
               keep: Optional[int] = None, async_save: bool = True, read_tries: int = 5,
               retry_delay_s: float = 1.0):
    """read_only: a reader (evaluation, loading) that never writes, deletes or moves anything;
    else the writer, which needs every_steps and keep > 0 (config.checkpoint's, checked by config
    validation) and must be the only one (train.py holds the workdir's lock first). read_tries,
    retry_delay_s: how often, and after how long a first wait (doubled after each try), a read
    that failed with an error that may pass (see may_pass) is tried."""
    if not read_only and (every_steps is None or keep is None):
      raise ValueError("A writing Checkpointer needs every_steps and keep.")
    self.directory = epath.Path(absolute_path(directory))
    self.read_only = read_only
    self.every_steps = every_steps
    self.read_tries = max(1, read_tries)
    self.retry_delay_s = retry_delay_s
    _save_replicated_arrays_whole_on_cpu()
    with _absl_warnings_off():  # Orbax's warnings about read-only settings: chosen on purpose
      if read_only:  # Orbax's read-only mode: no folder created, no temporary folder deleted
        options = ocp.CheckpointManagerOptions(
            read_only=True, create=False, cleanup_tmp_directories=False, max_to_keep=None,
            save_interval_steps=0, enable_async_checkpointing=False)
      else:  # the lock holder: deletes the temporary folders of saves interrupted earlier
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={
              STATE: ocp.StandardCheckpointHandler(),
              DATA: grain.checkpoint.CheckpointHandler(),
              CONFIG: ocp.JsonCheckpointHandler(),
          })
    self._pending: Optional[int] = None  # the step of the asynchronous save in flight

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def resolve_step(self, step: Optional[int] = None) -> int:
    """`step`, or the latest finished one when None; FileNotFoundError naming the directory and
    the steps there when it does not exist."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no finished checkpoint.")
    if step not in self.all_steps():
      raise FileNotFoundError(
          f"{self.directory}: no checkpoint for step {step}; have {self.all_steps()}.")
    return step

  def newest_readable(self, read: Callable[[int], T], step: Optional[int] = None) -> tuple[int, T]:
    """(step, read(step)) for `step`; when None, for the newest checkpoint that `read` can read:
    a damaged one (see is_damage) is skipped with a warning naming it. Nothing is moved or deleted.

    `read(step)` reads what the caller needs of one checkpoint (config and parameters together,
    so that both come from the same step). FileNotFoundError when `step` (or any checkpoint) does
    not exist, CheckpointError when `step` is damaged or no checkpoint is readable.
    """
    step, value, _ = self._newest_readable(read, step)
    return step, value

  def _newest_readable(self, read: Callable[[int], T], step: Optional[int],
                       ) -> tuple[int, T, list[tuple[int, str]]]:
    """newest_readable's (step, value) and the damaged steps skipped, [(step, reason)]."""
    if step is not None:
      self.resolve_step(step)
      try:
        return step, self._read(read, step), []
      except Exception as e:  # pylint: disable=broad-except
        if not is_damage(e):
          raise
        raise CheckpointError(
            f"{self.directory / str(step)}: the checkpoint of step {step} cannot be read "
            f"({describe(e)}). Ask for another step (the run has {self.all_steps()}), or for none "
            "to use the newest readable one.", reason=describe(e)) from e
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      self.resolve_step(None)  # FileNotFoundError: no finished checkpoint
    damaged = []
    for s in steps:
      try:
        return s, self._read(read, s), damaged
      except Exception as e:  # pylint: disable=broad-except
        if not is_damage(e):
          raise
        damaged.append((s, describe(e)))
        logging.warning("Checkpoint %s is damaged or does not match this run (%s); trying the one "
                        "before.", self.directory / str(s), describe(e))
    by_reason = {}  # the same reason for every step (a changed config) said once
    for s, reason in damaged:
      by_reason.setdefault(reason, []).append(str(s))
    tried = "; ".join(f"step{'s' * (len(ss) > 1)} {', '.join(ss)}: {reason}"
                      for reason, ss in by_reason.items())
    raise CheckpointError(
        f"{self.directory}: no checkpoint can be read ({tried}). If the config changed the model "
        "or the optimizer, use the run's own config; otherwise move this folder elsewhere "
        "(keeping it) to start the run over.", reason=tried)

  def _read(self, read: Callable[[int], T], step: int) -> T:
    """read(step), tried again while it fails with an error that may pass (see may_pass), up to
    read_tries times, after waits of retry_delay_s, doubled each time. Any other error is raised
    as it is; one that may pass and persists is a CheckpointError that is no damage (nothing is
    moved for it)."""
    for attempt in range(self.read_tries):
      try:
        return read(step)
      except Exception as e:  # pylint: disable=broad-except
        if not may_pass(e):
          raise
        if attempt + 1 == self.read_tries:
          raise CheckpointError(
              f"{self.directory / str(step)}: the checkpoint of step {step} could not be read in "
              f"{self.read_tries} tries ({describe(e)}). This error may pass (a disk or network "
              "fault) and proves no damage, so nothing was moved or deleted; check the storage, "
              "then run the same command again.", reason=describe(e), damaged=False) from e
        delay = self.retry_delay_s * 2 ** attempt
        logging.warning("Reading checkpoint %s failed (%s); trying again in %.3g s (try %d of "
                        "%d).", self.directory / str(step), describe(e), delay, attempt + 2,
                        self.read_tries)
        time.sleep(delay)
    raise AssertionError("unreachable")

  def save(self, step: int, state: Any, data_iterator=None, config_dict: Optional[dict] = None,
           *, force: bool = False) -> bool:
    """Saves if `step` is a multiple of every_steps, or if `force`; returns whether it saved.

    The decision is ours, not Orbax's save-interval policy, which also saves the first step seen.
    """
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only: it cannot save.")
    if not force and step % self.every_steps:
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    if config_dict is not None:
      items[CONFIG] = ocp.args.JsonSave(config_dict)
    self.wait()  # an earlier asynchronous save that failed is reported as its own step's
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    self._pending = step
    return saved

  def restore(self, abstract_state: Any, data_iterator=None, step: Optional[int] = None):
    """Restores `step` (default: the newest readable) into arrays with the shardings of
    `abstract_state`, to resume training.

    `abstract_state` is a tree of jax.ShapeDtypeStruct carrying the target shardings; the data
    iterator, if given, is moved to its saved position in place. Returns (step, state) or None when
    there is nothing to resume from. Newer checkpoints found damaged (see newest_readable) are
    moved aside to <step>.damaged by process 0, since training writes those steps again (by a
    writer only: read-only, they are skipped and left in place); a damaged `step` asked for, no
    readable checkpoint at all, or an error that may pass and persists, is a CheckpointError and
    moves nothing.
    """
    if step is None and self.latest_step() is None:
      return None
    start = data_iterator.get_state() if data_iterator is not None else None
    tries = itertools.count()

    def read(s):
      if next(tries) and data_iterator is not None:
        data_iterator.set_state(start)  # a failed try may have moved it
      return self._restore_step(s, abstract_state, data_iterator)

    step, state, damaged = self._newest_readable(read, step)
    if damaged and not self.read_only:
      self._move_aside([s for s, _ in damaged])
      logging.warning("Resuming from checkpoint %d in %s instead of the damaged %s.", step,
                      self.directory, ", ".join(str(s) for s, _ in damaged))
    return step, state

  def _restore_step(self, step: int, abstract_state: Any, data_iterator=None):
    saved = self._saved_tree(step, abstract_state)
    item, added = abstract_state, self._fields_added_since(saved, abstract_state)
    shorter = self._shorter_counts(saved, abstract_state)
    if added or shorter:  # restored without them (or shorter), then completed
      item = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
              if f.name not in added}
      for name, length in shorter.items():
        x = item[name]
        item[name] = jax.ShapeDtypeStruct((length,), x.dtype, sharding=x.sharding)
    items = {STATE: ocp.args.StandardRestore(item)}
    data_states = self._data_states(step) if data_iterator is not None else None
    same_processes = data_states is not None and len(data_states) == jax.process_count()
    if same_processes:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    if (self.directory / str(step) / CONFIG).exists():
      items[CONFIG] = ocp.args.JsonRestore()  # not used, but a damaged config is a damaged step
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_states and not same_processes:
      if hasattr(data_iterator, "remap_state"):  # its own way (streamed shards: tar_stream.py)
        state = data_iterator.remap_state(data_states, jax.process_index(), jax.process_count())
      else:
        state = pipeline.remap_data_position(data_states, jax.process_index(), jax.process_count())
        logging.warning(
            "The data position of step %d was saved by %d processes; this run has %d. Continuing "
            "from the first example of the global order not yet read by every process (%s for "
            "process %d); examples some processes had already read may be seen again.",
            step, len(data_states), jax.process_count(), state, jax.process_index())
      data_iterator.set_state(state)
    if added or shorter:
      values = dict(restored[STATE])
      for name in shorter:  # the kinds added since count from 0
        x, target = values[name], getattr(abstract_state, name)
        values[name] = jax.device_put(
            np.concatenate([np.asarray(x), np.zeros(target.shape[0] - x.shape[0], x.dtype)]),
            target.sharding)
      return dataclasses.replace(abstract_state, **values, **added)
    return restored[STATE]

  def _saved_tree(self, step: int, abstract_state: Any) -> Optional[dict]:
    """The saved state's metadata tree of `step` ({field: metadata}) when `abstract_state` is a
    dataclass (a TrainState), else None; None also when the metadata cannot be read (the restore
    itself then reports it). A read error that may pass is raised, to be tried again (a tree
    restored without fields would look damaged)."""
    if not dataclasses.is_dataclass(abstract_state):
      return None
    try:
      return dict(self.manager.item_metadata(step)[STATE].tree)
    except Exception as e:  # pylint: disable=broad-except
      if may_pass(e):
        raise
      return None

  @staticmethod
  def _shorter_counts(saved: Optional[dict], abstract_state: Any) -> dict[str, int]:
    """{field: saved length} for the count vectors of a TrainState (data_skipped: one count per
    kind of skipped example, data/records.py) that the checkpoint saved shorter: written before
    the later kinds existed. Kinds are only ever appended, so the saved counts are the first ones
    and the rest start at 0."""
    if saved is None or not hasattr(abstract_state, "data_skipped"):
      return {}
    shape = tuple(getattr(saved.get("data_skipped"), "shape", None) or ())
    now = abstract_state.data_skipped.shape
    if len(shape) == 1 and len(now) == 1 and shape[0] < now[0]:
      return {"data_skipped": shape[0]}
    return {}

  @staticmethod
  def _fields_added_since(saved: Optional[dict], abstract_state: Any) -> dict[str, Any]:
    """The fields of a dataclass state (a TrainState) that the checkpoint lacks because it was
    written before they existed, and that hold no array in this run (TrainState.loss_state of a
    loss without state: {}): {name: value}. A missing field that does hold arrays is not one: the
    restore then fails like any other tree that does not match."""
    if saved is None:
      return {}
    return {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
            if f.name not in saved and not jax.tree.leaves(getattr(abstract_state, f.name))}

  def _move_aside(self, steps: list[int]) -> None:
    """Renames the folders of `steps` to <step>.damaged (or <step>.damaged-<n>, n = 1, 2, ... if
    taken) in the same folder, on process 0 (the others wait for it), and refreshes Orbax's list
    of steps: a name that is not an integer is no step to Orbax, nor one of its temporary folders,
    so it is neither listed, nor cleaned up, nor in the way of the step saved again. Writers
    only."""
    assert not self.read_only, "a reader moves nothing"
    if jax.process_index() == 0:
      for s in steps:
        target = self.directory / f"{s}.damaged"
        for n in itertools.count(1):
          if not target.exists():
            break
          target = self.directory / f"{s}.damaged-{n}"
        try:
          (self.directory / str(s)).rename(target)
        except Exception as e:  # pylint: disable=broad-except
          raise CheckpointError(
              f"{self.directory / str(s)}: the checkpoint of step {s} is damaged, and moving it "
              f"aside to {target} failed ({describe(e)}). Move it out of {self.directory} by "
              "hand, then run the same command again.", reason=describe(e)) from e
        logging.warning("Moved the damaged checkpoint %s aside to %s (kept, not deleted).",
                        self.directory / str(s), target)
    ocp.multihost.sync_global_processes(f"rankclip_jax_move_aside_{next(self._barriers)}")
    self.manager.reload()

  def _data_states(self, step: int) -> Optional[list[dict]]:
    """The input pipeline's saved state of each process that saved `step` (files
    data/process_<i>-of-<n>.json), or None when the checkpoint has no data position."""
    folder = self.directory / str(step) / DATA
    if not folder.exists():
      return None
    found = {}
    for path in folder.iterdir():
      m = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", path.name)
      if m:
        found[int(m.group(1))] = (int(m.group(2)), json.loads(path.read_text()))
    if not found:  # grain writes one file per process: none at all is a damaged checkpoint
      raise FileNotFoundError(f"{folder}: no data position file (process_<i>-of-<n>.json).")
    count = next(iter(found.values()))[0]
    if sorted(found) != list(range(count)):
      raise ValueError(f"{folder}: data positions of processes {sorted(found)} of {count}.")
    return [found[i][1] for i in range(count)]

  def restore_params(self, abstract_params: Any, step: Optional[int] = None) -> Any:
    """Only the model parameters of `step` (default: the newest readable, see newest_readable),
    into the shardings carried by `abstract_params`: no optimizer state is read. Works for
    training checkpoints (a TrainState) and for converted models (whose state holds only
    {"params": ...})."""
    return self.newest_readable(lambda s: self._restore_params(abstract_params, s), step)[1]

  def _restore_params(self, abstract_params: Any, step: int) -> Any:
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
          self.directory / str(step) / STATE,
          args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                      partial_restore=True))
    return restored["params"]

  def saved_config(self, step: Optional[int] = None):
    """The config saved with `step` (default: the newest readable, see newest_readable), over the
    current defaults (rankclip_jax/defaults.py), so that runs written before a field existed still
    load; `evals` is taken as saved, not merged."""
    return self.newest_readable(self._saved_config, step)[1]

  def _saved_config(self, step: int):
    """saved_config of `step`, as it is on disk (no fallback)."""
    return defaults.over_defaults(self.restore_config(step))

  def restore_config(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    return restored[CONFIG]

  def wait(self):
    """Waits for the asynchronous save in flight; CheckpointError if it failed. A failure is
    raised once (Orbax raises it again in each thread that waits: those are logged)."""
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if step is None:  # reported already, to another thread
        logging.warning("A failed save, already reported: %s", describe(e))
        return
      raise self._save_error(step, e) from e

  def close(self):
    """Waits for the save in flight and closes the manager. A failure of that save is raised here
    only if no other error is already on its way (train.py closes in its teardown): the first error
    stays the one reported, the later one is logged."""
    unwinding = sys.exc_info()[1] is not None
    try:
      self.wait()
    except CheckpointError as e:
      if not unwinding:
        raise
      logging.error("%s", e)
    finally:
      self.manager.close()

  def _save_error(self, step: int, e: BaseException) -> CheckpointError:
    """The CheckpointError for the failed save of `step`, naming the checkpoints still there."""
    try:
      self.manager.reload()  # Orbax's list may have dropped the steps this save was to replace
      steps = self.all_steps()
      there = (f"the checkpoints there are {steps}" if step in steps else
               f"it is not kept; the checkpoints there, {steps}, are as they were")
    except Exception:  # pylint: disable=broad-except
      there = "the earlier checkpoints were not touched"
    return CheckpointError(
        f"{self.directory}: the checkpoint of step {step} could not be written ({describe(e)}); "
        f"{there}. Free space or fix the folder's permissions (or use another --workdir), then run "
        "the same command again to resume from the last checkpoint.", reason=describe(e))


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract values) carrying the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
