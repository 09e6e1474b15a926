"""Training: the one module that wires data, model, loss, optimizer, checkpoints, metric writer and
evaluators together.

    from rankclip_jax import train
    train.train_and_evaluate(config, workdir)

`Trainer` is a ModelSetup (mesh, model, tokenizer, parameter shardings) plus what only training
needs: the objective, the optimizer, the train state's shardings and the jitted step.
`train_and_evaluate` is the run, top to bottom: mesh and model, data, the workdir's lock, restore,
step, evaluators, loop, final evaluation.

One run per workdir: before it writes anything into the workdir or compiles anything, a run takes
the workdir's lock (<workdir>/train.lock, workdir_lock.py), and a second run started on the same
workdir while the first holds it stops with one `Error:` line naming the holder (host, process id,
start time). A run that has trained past config.total_steps is not resumed with a smaller one (it
would save its later state under the smaller step): an `Error:` names its newest step and what to
do instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from rankclip_jax import checkpointing
from rankclip_jax import flops as flops_lib
from rankclip_jax import metric_writer
from rankclip_jax import objective as objective_lib
from rankclip_jax import optim
from rankclip_jax import reporting
from rankclip_jax import sharding as shd
from rankclip_jax import step as step_lib
from rankclip_jax import workdir_lock
from rankclip_jax.config_validation import validate_config
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.data.sources import SOURCES
from rankclip_jax.errors import ConfigError
from rankclip_jax.interop import pretrained
from rankclip_jax.losses import LOSSES
from rankclip_jax.model_setup import ModelSetup
from rankclip_jax.models import platform_defaults
from rankclip_jax.nonfinite import NonFiniteGuard
from rankclip_jax.preemption import Preemption
from rankclip_jax.reporting import say


class Trainer(ModelSetup):
  """Everything a run needs, built once from a validated config: the model setup, the objective,
  the optimizer, the jitted step, and the training data's source kind."""

  def __init__(self, config: ml_collections.ConfigDict):
    validate_config(config)
    super().__init__(config)
    self.source_kind = SOURCES.get(config.data.train.kind)
    self.image_keys = self.source_kind.image_keys
    self.loss = LOSSES.get(config.loss.name)
    self.text_keys = self.loss.texts  # the caption fields of a batch: ALIP's second one too
    self.tx, self.schedule = optim.make_optimizer(config.optim, config.total_steps)
    self.objective = objective_lib.make_objective(self.mesh, total_steps=config.total_steps,
                                                  **config.loss)
    # From the parameters' shapes (ModelSetup traced the model once for them): tracing
    # _fresh_state would trace the whole model's initialisation again.
    self.abstract_state = jax.eval_shape(self._init_state, self.abstract_params)
    self.state_shardings = step_lib.state_shardings(self.abstract_state, self.param_shardings,
                                                    self.mesh)
    self._init = jax.jit(self._fresh_state, out_shardings=self.state_shardings)
    self.batch_sharding = shd.batch_sharding(self.mesh)
    self.train_step = self._jit_step(self, self.objective, config.microbatches)
    # Many un-awaited collectives on fake CPU devices (a laptop's or a test's
    # --xla_force_host_platform_device_count) abort XLA's CPU runtime: wait for each step there.
    self._wait_each_step = self.mesh.devices.flat[0].platform == "cpu" and self.mesh.size > 1

  def _fresh_state(self, rng) -> step_lib.TrainState:
    return self._init_state(self.init_params(rng))

  def _init_state(self, params) -> step_lib.TrainState:
    return step_lib.init_state(self.tx, params, self.loss.init_state())

  def _state_of(self, setup: ModelSetup):
    """(abstract train state, its shardings) for `setup`'s parameters and this optimizer."""
    if setup is self:
      return self.abstract_state, self.state_shardings
    state = jax.eval_shape(self._init_state, setup.abstract_params)
    return state, step_lib.state_shardings(state, setup.param_shardings, self.mesh)

  def _jit_step(self, setup: ModelSetup, objective, microbatches: int):
    step = functools.partial(
        step_lib.train_step, model=setup.model, tx=self.tx, schedule=self.schedule,
        objective=objective, microbatches=microbatches,
        freeze_regex=self.config.optim.freeze_regex,
        embed=step_lib.EMBED_BY_IMAGE_FIELDS[self.image_keys], seed=self.config.seed)
    _, shardings = self._state_of(setup)
    return jax.jit(step, in_shardings=(shardings, self.batch_sharding),
                   out_shardings=(shardings, shd.replicated(self.mesh)), donate_argnums=0)

  def init(self) -> step_lib.TrainState:
    """Step 0: random parameters, or config.model.init_from's weights (with a fresh optimizer)."""
    state = self._init(jax.random.key(self.config.seed))
    c = self.config
    if not c.model.init_from:
      return state
    loaded = pretrained.load(c.model.init_from, model_config=c.model, image_size=c.image_size,
                             context_length=c.context_length, abstract_params=self.abstract_params)
    with_params = jax.jit(self._init_state, out_shardings=self.state_shardings)
    return with_params(self.place(loaded, state.params))

  def abstract_state_with_shardings(self):
    return checkpointing.abstract_with_shardings(self.abstract_state, self.state_shardings)

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    c, s = self.config, self.batch_sharding
    out = {k: jax.ShapeDtypeStruct((c.batch_size, c.image_size, c.image_size, 3), np.float32,
                                   sharding=s) for k in self.image_keys}
    for k in self.text_keys:
      out[k] = jax.ShapeDtypeStruct((c.batch_size, c.context_length), np.int32, sharding=s)
    out["skipped"] = jax.ShapeDtypeStruct((c.batch_size, len(SKIP_KINDS)), np.int32, sharding=s)
    return out

  def step_flops(self):
    """Model FLOPs of one training step (global batch), or None: XLA's cost analysis of this step
    written the plain way (per-layer blocks, no rematerialisation, one micro-batch, the loss
    neither sharded nor chunked), traced and lowered but not compiled. The analysis of the step as
    configured would count a loop body once (scanned layers, GradCache's micro-batch loop, loss
    chunks), a shard_map body once for all devices, and recomputation as work; MFU counts each
    multiply-add of the model once. The plain step of a scanned model computes every token of its
    last blocks, as the scanned step does (model.last_block_pooled_only applies to per-layer
    blocks only). cuDNN's fused attention is counted as the hand-written attention it computes
    (XLA's cost analysis counts a custom call's FLOPs as zero)."""
    plain = self.config.copy_and_resolve_references()
    if platform_defaults.resolve(plain.model)["attention"] == "cudnn":
      plain.model.attention = "einsum"
    if plain.model.scan_layers:  # a scanned stack computes every token of its last block
      plain.model.last_block_pooled_only = False
    plain.model.scan_layers = False
    plain.model.remat = False
    plain.loss.strategy = "plain"
    plain.loss.chunk_size = 0
    setup = self if plain.model == self.config.model else ModelSetup(plain, mesh=self.mesh)
    objective = objective_lib.make_objective(self.mesh, total_steps=plain.total_steps,
                                             **plain.loss)
    step = self._jit_step(setup, objective, microbatches=1)
    state = checkpointing.abstract_with_shardings(*self._state_of(setup))
    return flops_lib.step_flops(step, state, self.abstract_batch())

  def train_iterator(self):
    """This process's training batches: infinite, checkpointable (the source kind's recipe)."""
    c = self.config
    source = self.source_kind.build(**{k: v for k, v in c.data.train.items() if k != "kind"},
                                    image_size=c.image_size, seed=c.seed,
                                    field="config.data.train",
                                    synthetic_captions="synthetic_text" in self.text_keys)
    logging.info("Training data: %r", source)
    return self.source_kind.iterator(
        source, per_process_batch_size=c.batch_size // jax.process_count(), seed=c.seed,
        tokenizer=self.tokenizer, image_size=c.image_size, crop_scale=c.data.crop_scale,
        process_index=jax.process_index(), process_count=jax.process_count(),
        worker_count=c.data.worker_count, num_threads=c.data.num_threads)

  def global_batch(self, local_batch: dict[str, np.ndarray]):
    """This process's numpy batch -> one global jax.Array per field, split over the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, local_batch[k])
            for k in self.image_keys + self.text_keys + ("skipped",)}

  def step(self, state: step_lib.TrainState, local_batch: dict[str, np.ndarray]):
    """One training step on this process's batch -> (state, metrics)."""
    state, metrics = self.train_step(state, self.global_batch(local_batch))
    if self._wait_each_step:
      jax.block_until_ready(metrics)
    return state, metrics


def refuse_to_go_back(total_steps: int, workdir: str) -> None:
  """ConfigError when the run in `workdir` has trained past `total_steps`: resumed, it would save
  its later state as step `total_steps` and report results under that step. Checked on the files,
  before the writing Checkpointer exists: a refused start writes, deletes and starts nothing in the
  run (the writer's start-up cleans up interrupted saves and starts Orbax's saving machinery), and
  every process of a multi-process run reads the same finished steps, without a collective."""
  steps = checkpointing.finished_steps(checkpointing.checkpoint_dir(workdir))
  newest = max(steps, default=None)
  if newest is None or newest <= total_steps:
    return
  raise ConfigError(
      f"config.total_steps={total_steps}, but the run in {workdir} has trained to step {newest} "
      f"(checkpoints {steps}): it cannot go back, and would label its step-{newest} "
      f"state step {total_steps}. To train on, set config.total_steps above {newest}; for a new "
      "run, give another --workdir; to evaluate a checkpoint of this one, run python -m "
      f"rankclip_jax.evaluate --workdir={workdir} --step=<step>.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, returns final metrics."""
  # --- Mesh, model and optimizer (the config is validated first: a typo stops here).
  trainer = Trainer(config)
  total = config.total_steps
  with contextlib.ExitStack() as teardown:  # the one teardown, whatever ends the run
    # --- Evaluators, then data: a missing evaluation set or training file stops the run before
    # anything is written or trained.
    evaluators = trainer.evaluators()
    embedder = trainer.embedder()
    train_iter = trainer.train_iterator()
    if hasattr(train_iter, "close"):  # stops grain's worker processes, frees their shared memory
      teardown.callback(train_iter.close)

    # --- Outputs: the workdir's lock (one run per workdir: a second start, such as a requeued job
    # while the first still runs, stops here, before it writes or compiles anything), checkpoints
    # (their writer, the lock holder, cleans up what an interrupted save left), metric writer.
    workdir = checkpointing.absolute_path(workdir)  # Orbax's tensorstore paths must be absolute
    teardown.enter_context(workdir_lock.hold(workdir))
    refuse_to_go_back(total, workdir)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    ckpt = checkpointing.Checkpointer(
        checkpointing.checkpoint_dir(workdir), read_only=False,
        every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save)
    teardown.callback(ckpt.close)
    writer = metric_writer.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                                 choice=config.metric_writer)
    teardown.callback(writer.close)
    config_dict = json.loads(config.to_json_best_effort())

    # --- Restore: the last finished checkpoint (state and input position), else step 0.
    restored = ckpt.restore(trainer.abstract_state_with_shardings(), train_iter)
    if restored is None:
      start_step, state = 0, trainer.init()
      writer.write_hparams(reporting.flat_hparams(config))
      logging.info("Starting from scratch in %s", workdir)
    else:
      start_step, state = restored
      logging.info("Resumed from checkpoint at step %d in %s", start_step, workdir)
    logging.info("%s", platform_defaults.describe(config.model))
    say(f"{'Resuming at' if start_step else 'Starting'} step {start_step}/{total} on "
        f"{trainer.mesh.size} {jax.devices()[0].platform} device(s), mesh "
        f"{dict(trainer.mesh.shape)}; workdir {workdir}")

    # --- Step reporting: the step's FLOPs for MFU (tracing the step again takes seconds: on CPU
    # only when a peak is given), the progress line, the profiler, SIGTERM, non-finite steps.
    on_cpu = jax.devices()[0].platform == "cpu"
    flops_per_step = trainer.step_flops() if not on_cpu or config.peak_tflops else None
    progress = reporting.Progress(
        writer, total_steps=total, every=config.log_every_steps, batch_size=config.batch_size,
        start_step=start_step, flops_per_step=flops_per_step,
        peak_flops=flops_lib.peak_flops_per_device(jax.devices()[0].device_kind,
                                                   config.model.dtype, config.peak_tflops))
    profiler = reporting.Profiler(workdir, *config.profile_steps)
    preemption = teardown.enter_context(Preemption())
    nonfinite = NonFiniteGuard(config.max_nonfinite_steps, ckpt.all_steps, str(ckpt.directory))

    def evaluate(step, names=None):
      t0 = time.time()
      metrics, pictures = evaluators.run(embedder, state.params, names)
      reporting.write_evaluation(writer, workdir, step, metrics, pictures)
      writer.write_scalars(step, {"eval_seconds": time.time() - t0})
      return metrics

    # --- The loop: step, watch for non-finite steps, report, stop on SIGTERM, checkpoint, evaluate.
    for step in range(start_step + 1, total + 1):
      state, metrics = profiler.step(step, lambda: trainer.step(state, next(train_iter)))  # pylint: disable=cell-var-from-loop
      nonfinite.after_step(step, metrics)
      if progress.due(step):
        progress.report(step, metrics)
        if hasattr(train_iter, "take_shares"):  # several weighted sources (data/tar_stream.py)
          shares = train_iter.take_shares()
          if len(shares) > 1:
            writer.write_scalars(step, {f"data/source_share/{k}": v for k, v in shares.items()})
      if step != total and preemption.reached(step):
        ckpt.save(step, state, train_iter, config_dict, force=True)
        ckpt.wait()
        say(f"Stopped by SIGTERM at step {step}/{total}; checkpoint saved in {workdir}. Run the "
            "same command to resume.")
        return {"step": step, "preempted": True}
      ckpt.save(step, state, train_iter, config_dict, force=(step == total))
      if step != total and evaluators.due(step):
        say(reporting.eval_line(step, evaluate(step, evaluators.due(step))))
        progress.restart_clock()
    nonfinite.flush()
    if start_step < total:
      progress.finished(start_step)
    elif ckpt.latest_step() != total:  # a finished run started again, its last save lost
      ckpt.save(total, state, train_iter, config_dict, force=True)
    ckpt.wait()

    # --- Final evaluation: every evaluator, results.json and the results table.
    final = dict(evaluate(total), step=total)
    writer.flush()
    if jax.process_index() == 0:
      (epath.Path(workdir) / "results.json").write_text(json.dumps(final, indent=2,
                                                                   sort_keys=True))
      say("Results (held-out evaluation):\n" + reporting.results_table(final))
    return final
