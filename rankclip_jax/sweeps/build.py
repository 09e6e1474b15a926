"""From a sweep file to a checked Plan: every run's command line is parsed exactly as main.py parses
it (cli.check_command_line on main.py's flags) and its config validated (validate_config) before
any run starts, so that an unknown field, a value of the wrong type or a value that cannot work in
any one run stops the sweep with one line naming the run and the field. So do a run named like one
of the sweep's own files (sweep.json, the report), and a path or override holding a control
character (plan.check_one_line). A sweep with axes compares each cell's groups with the baseline's
group of that cell: every cell an axis names must be a cell of the runs, and every cell must have
its baseline's group (grid.cells). Building a plan writes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from typing import Optional, Sequence

from absl import flags
from ml_collections import config_flags

from rankclip_jax import cli
from rankclip_jax.config_validation import validate_config
from rankclip_jax.errors import ConfigError
from rankclip_jax.sweeps import emit, grid, report
from rankclip_jax.sweeps.grid import SweepError
from rankclip_jax.sweeps.plan import (PLAN_FILE, Plan, PlannedRun, absolute_config,
                                      check_one_line, override_flag)

# The sweep's own files in its workdir, which no run's folder may replace.
OWN_FILES = (PLAN_FILE, emit.SCRIPT, report.REPORT_JSON, report.REPORT_MD, report.PICTURES)


def load_sweep(path: str) -> grid.Sweep:
  """The Sweep that the file's get_sweep() returns; `file.py:arg` passes the string arg to it
  (get_sweep(arg)), as ml_collections passes a config's argument: e.g. a study's number of seeds,
  `configs/sweeps/paper_comparison.py:1`."""
  given = f"--sweep={path}"
  path, has_arg, arg = path.partition(".py:")
  path += ".py" if has_arg else ""
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    there = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) \
        else []
    raise SweepError(f"{given}: no such file ({os.path.abspath(path)})."
                     + (f" The sweep files in {folder}: {', '.join(there)}." if there else ""))
  name = "rankclip_sweep_file_" + str(abs(hash(os.path.abspath(path))))
  try:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would (dataclasses and pickling look there)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
      raise SweepError(f"{given}: the file defines no get_sweep(); a sweep file returns "
                       "rankclip_jax.sweeps.Sweep(runs=...) from get_sweep() (see "
                       "configs/sweeps/paper_comparison.py).")
    sweep = module.get_sweep(arg) if has_arg else module.get_sweep()
  except SweepError as e:
    if str(e).startswith(given):
      raise
    raise SweepError(f"{given}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    where = [f"{os.path.relpath(f.filename)}:{f.lineno}" for f in traceback.extract_tb(
        e.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
    raise SweepError(f"{given}: loading it raised {type(e).__name__}: {e}"
                     + (f" (at {where[-1]})" if where else "") + ".") from None
  if not isinstance(sweep, grid.Sweep):
    raise SweepError(f"{given}: get_sweep() returned {type(sweep).__name__}, not "
                     "rankclip_jax.sweeps.Sweep(runs=...).")
  return sweep


def check_run(config: str, command_line: Sequence[str], run_flags: Sequence[str],
              num_devices: Optional[int]):
  """The run's config as main.py would build it; SweepError-ready message (str) on a mistake."""
  argv = ["rankclip-sweep", f"--config={config}"] + list(command_line) + list(run_flags)
  fv = flags.FlagValues()
  # ml_collections loads every --config file as module config_config, reusing sys.modules'.
  sys.modules.pop("config_config", None)
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  _, problem = cli.check_command_line(argv, flag_values=fv)
  if problem is not None:
    return None, problem
  c = fv["config"].value
  try:
    validate_config(c, num_devices=num_devices or 1, process_count=1)
  except ConfigError as e:
    return None, str(e)
  return c, None


def build_plan(*, workdir: str, config: str, command_line: Sequence[str], sweep_file: str,
               num_devices: Optional[int]) -> Plan:
  """Every run named, its command line parsed and its config validated (num_devices: the devices
  each run will have; None: unknown, their division of the batch is left to the run)."""
  for flag in [f"--workdir={workdir}", f"--config={config}", f"--sweep={sweep_file}",
               *command_line]:
    check_one_line(flag, repr(flag))
  sweep = load_sweep(sweep_file)
  try:
    named = grid.name_runs(sweep.runs)
    for run in named:
      if run.name in OWN_FILES:
        raise SweepError(f"run {run.name!r} is named like the sweep's own {run.name}; rename it "
                         f"(the sweep's own files: {', '.join(OWN_FILES)}).")
  except SweepError as e:
    raise SweepError(f"--sweep={sweep_file}: {e}") from None
  config = absolute_config(config)
  runs = []
  for i, run in enumerate(named, start=1):
    where = f"run {run.name!r} ({i} of {len(named)})"
    try:
      run_flags = [override_flag(k, v) for k, v in run.overrides.items()]
    except SweepError as e:
      raise SweepError(f"{where}: {e}") from None
    c, problem = check_run(config, command_line, run_flags, num_devices)
    if problem is not None:
      raise SweepError(f"{where}: {problem}")
    runs.append(PlannedRun(index=i, name=run.name, group=run.group, seed=int(c.seed),
                           overrides=dict(run.overrides), flags=run_flags))
  groups = list(dict.fromkeys(r.group for r in runs))
  try:
    axes = grid.check_axes(sweep.axes)
    if axes:  # each cell's groups against the baseline's group of that cell
      grid.cells(groups, sweep.baseline, axes)
  except SweepError as e:
    raise SweepError(f"--sweep={sweep_file}: {e}") from None
  if not axes and sweep.baseline and sweep.baseline not in groups:
    raise SweepError(f"--sweep={sweep_file}: baseline={sweep.baseline!r} is none of the sweep's "
                     f"groups: {', '.join(groups)}.")
  return Plan(workdir=os.path.abspath(workdir), config=config, common_flags=list(command_line),
              runs=runs, baseline=sweep.baseline, headline=list(sweep.headline),
              sweep_file=os.path.abspath(sweep_file), axes=axes)
