"""A plan for another scheduler: one shell command per run (`--emit=commands`), or a SLURM job-array
script, one array task per run (`--emit=slurm`), written with launch/slurm.sbatch's conventions:
submitted from the repository root, its .venv activated, SIGTERM five minutes before the time
limit (the run saves a checkpoint and stops) and --requeue (the task starts again and resumes).

Each task does what the local sweep does for its run: skips it when results.json is there, keeps
the previous attempt's log as log.<k>.txt, and writes this attempt's to log.txt. Its SLURM output
goes to <workdir>/slurm-<job>_<task>.out; sbatch reads `#SBATCH` lines itself, not through a shell
(src/sbatch/opt.c: a backslash escapes the next character, quotes group, an unquoted '#' starts a
comment) and expands '%' patterns in the file name, so the workdir is written with each space,
quote and '#' escaped and '%' doubled; a workdir holding a backslash (which turns sbatch's patterns
off) is refused.
"""

from __future__ import annotations

import os
import re
import shlex

from rankclip_jax.sweeps.grid import SweepError
from rankclip_jax.sweeps.plan import Plan

PYTHON = "python"
SCRIPT = "sweep.sbatch"  # in the sweep's workdir


def commands(plan: Plan) -> list[str]:
  """One shell line per run, in the sweep's order."""
  return [shlex.join(plan.train_argv(run, python=PYTHON)) for run in plan.runs]


_SBATCH_SPECIAL = re.compile(r"""([\s"'#])""")


def sbatch_output(workdir: str) -> str:
  """The --output= value of an #SBATCH line for <workdir>/slurm-<job>_<task>.out, written so that
  sbatch reads the workdir back exactly (see the module docstring)."""
  if "\\" in workdir:
    raise SweepError(f"--workdir={workdir}: SLURM cannot write a task's output under a path with "
                     "a backslash (sbatch takes it as 'no %-patterns'); choose a folder without "
                     "one.")
  return _SBATCH_SPECIAL.sub(r"\\\1", workdir.replace("%", "%%")) + "/slurm-%A_%a.out"


def _array_spec(n: int, parallel: int) -> str:
  return f"0-{n - 1}" + (f"%{parallel}" if parallel > 1 else "")


def slurm_script(plan: Plan, *, gpus_per_run: int = 1, parallel: int = 0,
                 time_limit: str = "24:00:00", cpus_per_task: int = 8) -> str:
  """The job-array script (sbatch it from the repository root)."""
  q = shlex.quote
  lines = [
      "#!/usr/bin/env bash",
      f"# The sweep {plan.sweep_file}",
      f"# over {plan.config}: {len(plan.runs)} runs, one SLURM array task each (written by",
      "# `python -m rankclip_jax.sweep --emit=slurm`). From the repository root:",
      f"#   sbatch {q(os.path.join(plan.workdir, SCRIPT))}",
      "#   sbatch --array=3,7 ...   # some of the runs again; a finished run's task ends at once",
      f"# then: python -m rankclip_jax.sweep --report {q(plan.workdir)}",
      "# Before the time limit SLURM sends SIGTERM (--signal below): the run saves a checkpoint",
      "# and exits; with --requeue the task starts again and resumes from it.",
      "#SBATCH --job-name=rankclip-sweep",
      f"#SBATCH --array={_array_spec(len(plan.runs), parallel)}",
      "#SBATCH --nodes=1",
      "#SBATCH --ntasks-per-node=1",
      f"#SBATCH --gpus-per-node={gpus_per_run}",
      f"#SBATCH --cpus-per-task={cpus_per_task}",
      f"#SBATCH --time={time_limit}",
      "#SBATCH --signal=TERM@300",
      "#SBATCH --requeue",
      f"#SBATCH --output={sbatch_output(plan.workdir)}",
      "set -euo pipefail",
      'cd "${SLURM_SUBMIT_DIR:-.}"',
      "# The environment: a virtualenv made once with",
      '#   python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt '
      '"jax[cuda12]" -e .',
      ". .venv/bin/activate",
      "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
      f"SWEEP={q(plan.workdir)}",
      "COMMON=(" + " ".join(q(a) for a in [f"--config={plan.config}"] + plan.common_flags) + ")",
      'case "${SLURM_ARRAY_TASK_ID:?run this script with sbatch (an array job)}" in',
  ]
  for i, run in enumerate(plan.runs):
    lines.append(f"  {i}) NAME={q(run.name)}; FLAGS=(" + " ".join(q(f) for f in run.flags)
                 + ") ;;")
  lines += [
      '  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
      "esac",
      'RUN="$SWEEP/$NAME"',
      'if [[ -f "$RUN/results.json" ]]; then echo "$NAME: finished before, skipped."; exit 0; fi',
      'mkdir -p "$RUN"',
      'if [[ -f "$RUN/log.txt" ]]; then',
      '  k=1; while [[ -e "$RUN/log.$k.txt" ]]; do k=$((k + 1)); done',
      '  mv "$RUN/log.txt" "$RUN/log.$k.txt"',
      "fi",
      f'echo "$NAME (run $((SLURM_ARRAY_TASK_ID + 1)) of {len(plan.runs)}): log $RUN/log.txt"',
      f'srun --kill-on-bad-exit=1 {PYTHON} -m rankclip_jax.main "${{COMMON[@]}}" '
      '--workdir="$RUN" ${FLAGS[@]+"${FLAGS[@]}"} > "$RUN/log.txt" 2>&1',
  ]
  return "\n".join(lines) + "\n"
