"""Evaluate a trained run: every evaluator of its config (or of another config) on one checkpoint.

  python -m rankclip_jax.evaluate --workdir=runs/demo                 # latest checkpoint, its evals
  python -m rankclip_jax.evaluate --workdir=runs/demo --step=600
  python -m rankclip_jax.evaluate --workdir=runs/cc3m --evals=configs/rankclip_cc3m.py:cifar10 \
      --evals.evals.cifar10.num_examples=1000 --eval_data_dir=/data/tfds

The run's own config comes from its checkpoint; `--evals` takes the `evals` of another config file
instead (overridable field by field like any config). The checkpoint is restored over a mesh of all
local devices and evaluation is sharded like training. The checkpoints are only read (the run may
still be training: nothing in checkpoints/ is deleted, moved or created). Results go to the run's
metric writer (TensorBoard, at the checkpoint's step), to <workdir>/eval/results_<step>.json and
results_<step>.md, pictures (embedding space) to <workdir>/pictures/, and the table to stdout.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
from absl import flags
from etils import epath
from ml_collections import config_flags

from rankclip_jax import checkpointing, cli, metric_writer, reporting
from rankclip_jax import sharding as shd
from rankclip_jax.config_validation import validate_for_evaluation
from rankclip_jax.errors import USER_ERRORS
from rankclip_jax.model_setup import ModelSetup


def evaluate_run(workdir: str, *, step: Optional[int] = None,
                 evals: Optional[ml_collections.ConfigDict] = None,
                 eval_data_dir: str = "") -> tuple[int, dict[str, Any]]:
  """Restores `step` (default: the newest readable, a damaged latest checkpoint skipped with a
  warning) of the run in `workdir`, runs the evaluators, writes the results (see the module
  docstring) and returns (step, metrics)."""
  workdir = checkpointing.absolute_path(workdir)
  # Read-only: the run may still be training, its save in flight (see checkpointing.py).
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)

  def read(s):  # config and parameters of one step
    config = ckpt.saved_config(s)
    if evals is not None:
      config.evals = evals
    if eval_data_dir:
      config.data.eval_data_dir = eval_data_dir
    validate_for_evaluation(config)
    # All local devices, batch-parallel, whatever mesh trained the run.
    setup = ModelSetup(config, mesh=shd.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1))))
    evaluators = setup.evaluators()
    return setup, evaluators, setup.restore_params(ckpt, s)

  try:
    step, (setup, evaluators, params) = ckpt.newest_readable(read, step)
  finally:
    ckpt.close()
  metrics, pictures = evaluators.run(setup.embedder(), params)
  if jax.process_index() == 0:
    out_dir = epath.Path(workdir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"results_{step}.json").write_text(
        json.dumps(dict(metrics, step=step), indent=2, sort_keys=True))
    (out_dir / f"results_{step}.md").write_text(
        f"# Evaluation of {workdir} at step {step}\n\n{reporting.results_table(metrics)}\n")
  writer = metric_writer.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                               choice=setup.config.metric_writer)
  reporting.write_evaluation(writer, workdir, step, metrics, pictures)
  writer.close()
  return step, metrics


_STEP = cli.step_flag()
_WORKDIR = cli.workdir_flag("The run's directory (as given to main.py).")
_EVALS = config_flags.DEFINE_config_file(
    "evals", None, "Optional config file whose `evals` replace the run's own "
    "(override fields with --evals.evals.<name>.<field>=...).", lock_config=True)
_EVAL_DATA_DIR = flags.DEFINE_string(
    "eval_data_dir", "", "Where TFDS evaluation sets are prepared (default: the run's "
    "config.data.eval_data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets).")


def main(argv):
  cli.start(argv)
  evals = None
  if _EVALS.value is not None:
    if "evals" not in _EVALS.value:
      cli.usage_error(f"--evals={flags.FLAGS['evals'].config_filename}: its config has no "
                      "field evals; give an experiment config (configs/*.py) that has one.")
    evals = _EVALS.value.evals
  try:
    step, metrics = evaluate_run(_WORKDIR(), step=_STEP(), evals=evals,
                                 eval_data_dir=_EVAL_DATA_DIR.value)
  except USER_ERRORS + (FileNotFoundError,) as e:
    raise SystemExit(f"Error: {e}") from None
  if jax.process_index() == 0:
    print(f"Evaluation of {os.path.abspath(_WORKDIR())} at step {step}:\n"
          f"{reporting.results_table(metrics)}", flush=True)


def run():
  """The `rankclip-evaluate` command (a command-line mistake: one `Error:` line, exit status 2)."""
  cli.run(main, required=["workdir"])


if __name__ == "__main__":
  run()
