"""Evaluate a trained run: every evaluator of its config (or of another config) on one checkpoint.

  python -m rankclip_jax.evaluate --workdir=runs/demo                 # latest checkpoint, its evals
  python -m rankclip_jax.evaluate --workdir=runs/demo --step=600
  python -m rankclip_jax.evaluate --workdir=runs/cc3m --evals=configs/rankclip_cc3m.py:cifar10 \
      --evals.evals.cifar10.num_examples=1000 --eval_data_dir=/data/tfds

The run's own config comes from its checkpoint; `--evals` takes the `evals` of another config file
instead (overridable field by field like any config). The checkpoint is restored over a mesh of all
local devices and evaluation is sharded like training. Results go to the run's metric writer
(TensorBoard, at the checkpoint's step), to <workdir>/eval/results_<step>.json and results_<step>.md,
pictures (embedding space) to <workdir>/pictures/, and the table to stdout.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
from absl import app, flags
from clu import metric_writers
from etils import epath
from ml_collections import config_flags

from rankclip_jax import checkpointing, cli, train
from rankclip_jax.errors import USER_ERRORS
from rankclip_jax.evaluation import evaluators as evals_lib
from rankclip_jax.evaluation.embed import Embedder


def _for_evaluation(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Training-only settings adjusted so that a run trained on another device count validates
  here (no training step is compiled or run)."""
  n = jax.device_count()
  config.batch_size = max(n, config.batch_size // n * n)
  config.microbatches = 1
  config.loss.chunk_size = 0
  config.mesh.data, config.mesh.fsdp = -1, 1
  return config


def evaluate_run(workdir: str, *, step: Optional[int] = None,
                 evals: Optional[ml_collections.ConfigDict] = None,
                 eval_data_dir: str = "") -> tuple[int, dict[str, Any]]:
  """Restores `step` (default: latest) of the run in `workdir`, runs the evaluators, writes the
  results (see the module docstring) and returns (step, metrics)."""
  workdir = train.absolute_path(workdir)
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), every_steps=1,
                                    keep=1_000_000, async_save=False)
  try:
    step = ckpt.resolve_step(step)
    config = _for_evaluation(ckpt.saved_config(step))
    if evals is not None:
      config.evals = evals
    if eval_data_dir:
      config.data.eval_data_dir = eval_data_dir
    trainer = train.Trainer(config)
    evaluators = evals_lib.build_evaluators(config, trainer.tokenizer)
    params = ckpt.restore_params(trainer.abstract_state_with_shardings().params, step=step)
  finally:
    ckpt.close()
  metrics, pictures = evals_lib.split_pictures(evals_lib.run_evaluators(
      evaluators, Embedder(trainer.model, trainer.mesh), params))
  if jax.process_index() == 0:
    out_dir = epath.Path(workdir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"results_{step}.json").write_text(
        json.dumps(dict(metrics, step=step), indent=2, sort_keys=True))
    (out_dir / f"results_{step}.md").write_text(
        f"# Evaluation of {workdir} at step {step}\n\n{train.results_table(metrics)}\n")
    train.save_pictures(workdir, step, pictures)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_scalars(step, metrics)
  if pictures:
    writer.write_images(step, {k: v[None] for k, v in pictures.items()})
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
  evals = _EVALS.value.evals if _EVALS.value is not None else None
  try:
    step, metrics = evaluate_run(_WORKDIR(), step=_STEP(), evals=evals,
                                 eval_data_dir=_EVAL_DATA_DIR.value)
  except USER_ERRORS + (FileNotFoundError,) as e:
    raise SystemExit(f"Error: {e}") from None
  if jax.process_index() == 0:
    print(f"Evaluation of {os.path.abspath(_WORKDIR())} at step {step}:\n"
          f"{train.results_table(metrics)}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
