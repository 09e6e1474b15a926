"""A planned sweep: every run's name, group, seed, folder and command line, saved as
<workdir>/sweep.json so that a later `--report`, a re-run or a scheduler's task reads the same plan.

Each run trains through the package's own entry point, as a user would start it by hand:

  python -m rankclip_jax.main --config=<config file> --workdir=<workdir>/<run name> \
      <the sweep command's --config.* overrides> <the run's overrides as --config.<field>=<value>>

(the run's overrides come last, so they win over the command line's).

Every piece of that command (the config and workdir paths, each override) must hold no control
character but tab (check_one_line): `--emit=commands` prints one line per run and the SLURM
script one array task per line, and a newline in a value would split a run across two lines
(shell-quoted, it would still run, but a reader of one line per run would see half a command).
A NUL cannot be in a command line at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Any, Optional

from rankclip_jax.sweeps.grid import SweepError, check_axes, check_name

PLAN_FILE = "sweep.json"
RESULTS_FILE = "results.json"
TRAIN_MODULE = "rankclip_jax.main"
# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators; tab is kept (a
# delimiter can be one, and it stays on its line).
_LINE_BREAKERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def check_one_line(text: str, what: str) -> None:
  """SweepError when `text` (a path or an override of a run's command line) holds a control
  character: `what` names where it was given."""
  found = _LINE_BREAKERS.search(text)
  if found:
    raise SweepError(f"{what} holds the control character {found.group()!r}, which a command "
                     "line of one line per run cannot carry; remove it (a path: rename the file "
                     "or folder, or link to it from a name without one).")


def override_flag(field: str, value: Any) -> str:
  """--config.<field>=<value>, written so that ml_collections parses it back to `value`."""
  if isinstance(value, dict):
    raise SweepError(f"field {field!r} is given a dict ({value!r}); a group of fields is set field "
                     f"by field: {{'{field}.<name>': value, ...}}.")
  if isinstance(value, float):
    text = repr(value)
  elif isinstance(value, (tuple, list)):
    text = repr(tuple(value))
  else:
    text = str(value)
  flag = f"--config.{field}={text}"
  check_one_line(flag, f"field {field!r}: its value {value!r}")
  return flag


@dataclasses.dataclass
class PlannedRun:
  index: int  # 1-based, in the sweep's order
  name: str
  group: str
  seed: int
  overrides: dict[str, Any]
  flags: list[str]  # the run's own --config.<field>=<value>

  def workdir(self, sweep_workdir: str) -> str:
    return os.path.join(sweep_workdir, self.name)


@dataclasses.dataclass
class Plan:
  workdir: str  # absolute
  config: str  # the --config value, its file absolute (with its ':argument', if any)
  common_flags: list[str]  # the sweep command's own --config.* overrides, applied to every run
  runs: list[PlannedRun]
  baseline: str = ""  # a group; with axes, the method label compared within each cell
  headline: list[str] = dataclasses.field(default_factory=list)
  sweep_file: str = ""
  # {axis: [[value, cell], ...]} (grid.check_axes); empty (and absent from older sweep.json
  # files): no axes.
  axes: dict[str, list[list]] = dataclasses.field(default_factory=dict)

  def run_dir(self, run: PlannedRun) -> str:
    return run.workdir(self.workdir)

  def train_argv(self, run: PlannedRun, python: str = sys.executable) -> list[str]:
    return [python, "-m", TRAIN_MODULE, f"--config={self.config}",
            f"--workdir={self.run_dir(run)}"] + self.common_flags + run.flags

  def finished(self, run: PlannedRun) -> bool:
    return os.path.exists(os.path.join(self.run_dir(run), RESULTS_FILE))

  def save(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    path = os.path.join(self.workdir, PLAN_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(dataclasses.asdict(self), f, indent=2)
    os.replace(path + ".tmp", path)

  @classmethod
  def load(cls, workdir: str) -> "Plan":
    path = os.path.join(workdir, PLAN_FILE)
    if not os.path.exists(path):
      raise SweepError(f"{os.path.abspath(workdir)} holds no {PLAN_FILE}: it is not a sweep's "
                       "workdir (python -m rankclip_jax.sweep --config=... --sweep=... "
                       "--workdir=... writes one).")
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    data["runs"] = [PlannedRun(**r) for r in data["runs"]]
    try:
      data["axes"] = check_axes(data.get("axes", {}))
    except SweepError as e:
      raise SweepError(f"{path}: {e}") from None
    for run in data["runs"]:  # each names a folder: never the sweep's own, its parent, or beyond
      check_name(run.name, f"{path}: run {run.name!r}")
    plan = cls(**data)
    plan.workdir = os.path.abspath(workdir)  # the folder may have moved since
    return plan


def absolute_config(config: str) -> str:
  """The --config value with its file made absolute (runs may start from another folder)."""
  path, colon, arg = config.partition(":")
  return os.path.abspath(path) + colon + arg


def find(plan: Plan, name: str) -> Optional[PlannedRun]:
  return next((r for r in plan.runs if r.name == name), None)
