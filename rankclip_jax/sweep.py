"""Run a sweep of training runs and report it: the `rankclip-sweep` command.

  python -m rankclip_jax.sweep --config=configs/rankclip_synthetic.py \
      --sweep=configs/sweeps/paper_comparison.py --workdir=runs/comparison [--config.<field>=...]
  python -m rankclip_jax.sweep ... --parallel=4          # 4 runs at a time (GPUs split)
  python -m rankclip_jax.sweep ... --emit=slurm          # <workdir>/sweep.sbatch, a job array
  python -m rankclip_jax.sweep ... --emit=commands       # one command per run on stdout
  python -m rankclip_jax.sweep --report runs/comparison  # report.md, report.json, pictures

The sweep file's get_sweep() lists the runs as overrides of the config
(rankclip_jax/sweeps/grid.py); the command line's --config.<field>=<value> apply to every run (a
run's own overrides win). Every run's command line and config are checked before the first run
starts. Each run trains in <workdir>/<run name> through `python -m rankclip_jax.main`; running the
same command again skips the finished runs, resumes the interrupted ones and retries the failed
ones (rankclip_jax/sweeps/runner.py). The report is written at the end of every sweep
(rankclip_jax/sweeps/report.py).

The plan is built and checked before anything is written; then the command takes the sweep's lock
(<workdir>/.sweep.lock) and only then writes sweep.json (and, with --emit=slurm, sweep.sbatch): a
command refused because another sweep runs in the folder, running or emitting, changes none of
that sweep's files.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import flags, logging
from ml_collections import config_flags

from rankclip_jax import cli
from rankclip_jax.errors import USER_ERRORS
from rankclip_jax.sweeps import build, devices, emit, report, runner
from rankclip_jax.sweeps.grid import SweepError
from rankclip_jax.sweeps.plan import Plan

if "config" not in flags.FLAGS:  # main.py's, when a process imports both (absl flags are global)
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (configs/*.py) every run starts from; override "
      "fields of every run with --config.<field>=<value>.", lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file whose get_sweep() lists the runs "
                             "(configs/sweeps/*.py).")
_WORKDIR = cli.workdir_flag("The sweep's directory: one folder per run, sweep.json, the report.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time on this machine (GPUs are split "
                                 "between them); with --emit=slurm, array tasks at a time.")
_GPUS_PER_RUN = flags.DEFINE_integer("gpus_per_run", 0, "GPUs per run (0: this host's GPUs split "
                                     "evenly over --parallel; with --emit=slurm: 1).")
_EMIT = flags.DEFINE_enum("emit", None, ["slurm", "commands"], "Do not run: write a SLURM "
                          "job-array script (<workdir>/sweep.sbatch) or print one command per run.")
_REPORT = flags.DEFINE_string("report", None, "Write the report of the sweep in this directory "
                              "(report.md, report.json, report_pictures/) and run nothing.")


def command_line_overrides(argv) -> list[str]:
  """The --config.<field>=<value> overrides given on the command line, as given."""
  out, args = [], list(argv[1:])
  for i, a in enumerate(args):
    if a.startswith("--config."):
      out.append(a if "=" in a or i + 1 >= len(args) else f"{a}={args[i + 1]}")
  return out


def _say(message: str) -> None:
  stream = sys.stderr if message.startswith("Error:") else sys.stdout
  stream.write(message + "\n")
  stream.flush()


def _write_report(workdir: str) -> None:
  try:
    rep = report.write_report(workdir)
  except SweepError as e:
    cli.usage_error(f"--report={workdir}: {e}")
  _say(f"Report of {rep['finished']} of {rep['total']} runs: "
       f"{os.path.join(rep['workdir'], report.REPORT_MD)}")


def _plan(num_devices) -> Plan:
  """The checked plan; nothing written yet."""
  try:
    return build.build_plan(workdir=_WORKDIR(), config=flags.FLAGS["config"].config_filename,
                            command_line=command_line_overrides(sys.argv),
                            sweep_file=_SWEEP.value, num_devices=num_devices)
  except SweepError as e:
    cli.usage_error(str(e))


def _emit(plan: Plan, files: dict[str, str]) -> None:
  """Saves the plan and writes {name: text} into its workdir, under the sweep's lock (a running
  sweep's plan is never replaced)."""
  with runner.take_lock(plan.workdir):
    plan.save()
    for name, text in files.items():
      with open(os.path.join(plan.workdir, name), "w", encoding="utf-8") as f:
        f.write(text)


def main(argv):
  del argv  # cli.run has rejected stray arguments
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if _REPORT.value:
    _write_report(_REPORT.value)
    return
  config = flags.FLAGS["config"]
  missing = [f"--{n}" for n, v in (("config", config.present and config.config_filename),
                                   ("sweep", _SWEEP.value), ("workdir", _WORKDIR())) if not v]
  if missing:
    cli.usage_error(f"{' and '.join(missing)} required (or --report=<sweep workdir> alone); "
                    "--helpshort lists the flags.")
  try:
    if _EMIT.value == "commands":
      plan = _plan(num_devices=None)
      _emit(plan, {})
      print("\n".join(emit.commands(plan)), flush=True)
      return
    if _EMIT.value == "slurm":
      gpus = _GPUS_PER_RUN.value or 1
      plan = _plan(num_devices=gpus)
      _emit(plan, {emit.SCRIPT: emit.slurm_script(plan, gpus_per_run=gpus,
                                                  parallel=_PARALLEL.value)})
      path = shlex.quote(os.path.join(plan.workdir, emit.SCRIPT))
      _say(f"{len(plan.runs)} runs in {path}; from the repository root: sbatch {path}")
      return
    try:
      slots, num_devices = devices.slots(_PARALLEL.value, _GPUS_PER_RUN.value)
    except SweepError as e:
      cli.usage_error(str(e))
    plan = _plan(num_devices)
    lock = runner.take_lock(plan.workdir)  # before sweep.json: a refused sweep writes nothing
    plan.save()
    status = runner.Runner(plan, slots, say=_say).run(lock)
  except USER_ERRORS as e:
    raise SystemExit(f"Error: {e}") from None
  if status:
    sys.exit(status)


def run():
  """The `rankclip-sweep` command (a command-line mistake: one `Error:` line, exit status 2)."""
  cli.run(main)


if __name__ == "__main__":
  run()
