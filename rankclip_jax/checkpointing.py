"""Orbax checkpoints of the train state, the input pipeline's position and the run's config.

Layout: <workdir>/checkpoints/<step>/{state, data, config}. Orbax writes each checkpoint into a
temporary directory and renames it only once complete, so an interrupted save never leaves a torn
checkpoint behind: at restore the latest *finished* step is used and leftovers are cleaned up.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rankclip_jax import defaults

STATE, DATA, CONFIG = "state", "data", "config"


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


class Checkpointer:
  """Periodic + final saves, keep the last `keep`, automatic resume."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
    """every_steps and keep > 0 (config.checkpoint's, checked by config validation)."""
    self.directory = epath.Path(absolute_path(directory))
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            cleanup_tmp_directories=True, enable_async_checkpointing=async_save),
        item_handlers={
            STATE: ocp.StandardCheckpointHandler(),
            DATA: grain.checkpoint.CheckpointHandler(),
            CONFIG: ocp.JsonCheckpointHandler(),
        })

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

  def save(self, step: int, state: Any, data_iterator=None, config_dict: Optional[dict] = None,
           *, force: bool = False) -> bool:
    """Saves if `step` is a multiple of every_steps, or if `force`; returns whether it saved.

    The decision is ours, not Orbax's save-interval policy, which also saves the first step seen.
    """
    if not force and step % self.every_steps:
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    if config_dict is not None:
      items[CONFIG] = ocp.args.JsonSave(config_dict)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, data_iterator=None, step: Optional[int] = None):
    """Restores `step` (default: latest) into arrays with the shardings of `abstract_state`.

    `abstract_state` is a tree of jax.ShapeDtypeStruct carrying the target shardings; the data
    iterator, if given, is moved to its saved position in place. Returns (step, state) or None when
    there is nothing to resume from.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    data_states = self._data_states(step) if data_iterator is not None else None
    same_processes = data_states is not None and len(data_states) == jax.process_count()
    if same_processes:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_states and not same_processes:
      state = remap_data_position(data_states, jax.process_index(), jax.process_count())
      logging.warning(
          "The data position of step %d was saved by %d processes; this run has %d. Continuing "
          "from the first example of the global order not yet read by every process (%s for "
          "process %d); examples some processes had already read may be seen again.",
          step, len(data_states), jax.process_count(), state, jax.process_index())
      data_iterator.set_state(state)
    return step, restored[STATE]

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
    if not found:
      return None
    count = next(iter(found.values()))[0]
    if sorted(found) != list(range(count)):
      raise ValueError(f"{folder}: data positions of processes {sorted(found)} of {count}.")
    return [found[i][1] for i in range(count)]

  def restore_params(self, abstract_params: Any, step: Optional[int] = None) -> Any:
    """Only the model parameters of `step` (default: latest), into the shardings carried by
    `abstract_params`: no optimizer state is read. Works for training checkpoints (a TrainState)
    and for converted models (whose state holds only {"params": ...})."""
    step = self.resolve_step(step)
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
          self.directory / str(step) / STATE,
          args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                      partial_restore=True))
    return restored["params"]

  def saved_config(self, step: Optional[int] = None):
    """The config saved with `step`, over the current defaults (rankclip_jax/defaults.py), so
    that runs written before a field existed still load; `evals` is taken as saved, not merged."""

    def merge(node, values: dict[str, Any]):
      for key, value in values.items():
        if (isinstance(value, dict) and key in node
            and isinstance(node[key], ml_collections.ConfigDict)):
          merge(node[key], value)
        else:
          node[key] = value

    config = defaults.base_config()
    saved = dict(self.restore_config(step))
    evals = saved.pop("evals", {})
    merge(config, saved)
    config.evals = ml_collections.ConfigDict(evals)
    return config

  def restore_config(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    return restored[CONFIG]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def remap_data_position(states: list[dict], process_index: int, process_count: int) -> dict:
  """The input position of process `process_index` of `process_count` when the checkpoint's
  positions were saved by len(states) processes.

  Process p of P reads examples p, p + P, p + 2P, ... of the global order (data/pipeline.py), and
  its state {"next_index": n} counts the examples of its slice it has taken (skipped ones
  included). Every global example before G = min_p(n_p P + p) has been read; the new processes
  continue from G: process q of Q at ceil((G - q) / Q). Without skipped examples all n_p are equal
  and this is exact; otherwise the few examples past G that some processes had read come again.
  """
  for state in states:
    if set(state) != {"next_index"}:
      raise ValueError(
          f"The saved input position {state} is not a plain example index (it was saved with "
          "grain worker processes, config.data.worker_count > 0): it cannot be carried to a "
          f"different process count ({len(states)} -> {process_count}). Resume with "
          f"{len(states)} processes.")
  old = len(states)
  first_unread = min(int(s["next_index"]) * old + p for p, s in enumerate(states))
  return {"next_index": max(0, -(-(first_unread - process_index) // process_count))}


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract values) carrying the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
