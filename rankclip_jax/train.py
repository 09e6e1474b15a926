"""Training: state, step, loop. The only module that wires data, model, loss, optimizer,
checkpoints, metric writer and evaluators together.

    from rankclip_jax import train
    train.train_and_evaluate(config, workdir)
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from rankclip_jax import checkpointing
from rankclip_jax import optim
from rankclip_jax import sharding as shd
from rankclip_jax.config_validation import validate_config
from rankclip_jax.data import pipeline
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import evaluators as evals_lib
from rankclip_jax.evaluation.embed import Embedder
from rankclip_jax.losses import rankclip_loss, ranking_weight_multiplier
from rankclip_jax.models import build_model
from rankclip_jax.models.two_towers import LOGIT_SCALE_MAX, clamp_logit_scale


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_state(model, tx, rng, config) -> TrainState:
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  tokens = jnp.zeros((1, config.context_length), jnp.int32)
  params = model.init(rng, images, tokens)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(abstract_state: TrainState, mesh, config) -> TrainState:
  params = shd.param_shardings(abstract_state.params, mesh, config.sharding.rules,
                               min_size=config.sharding.fsdp_min_size)
  return TrainState(step=shd.replicated(mesh), params=params,
                    opt_state=shd.shardings_like(abstract_state.opt_state, params, mesh))


def loss_and_metrics(params, batch, step, *, model, config):
  """The training objective on one global batch; returns (loss, metrics)."""
  image_emb, text_emb, logit_scale = model.apply({"params": params}, batch["image"], batch["text"])
  multiplier = ranking_weight_multiplier(step, config.total_steps, config.loss.weight_schedule)
  loss, metrics = rankclip_loss(
      image_emb, text_emb, jnp.exp(logit_scale),
      cross_weight=config.loss.cross_weight * multiplier,
      inmodal_weight=config.loss.inmodal_weight * multiplier)
  metrics = dict(metrics, logit_scale=logit_scale, scale=jnp.exp(logit_scale))
  return loss, metrics


def train_step(state: TrainState, batch, *, model, tx, schedule, config):
  grad_fn = jax.value_and_grad(
      functools.partial(loss_and_metrics, model=model, config=config), has_aux=True)
  (_, metrics), grads = grad_fn(state.params, batch, state.step)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # CLIP clamps the logit scale's parameter (not only its use) so it can come back down.
  params = dict(params, logit_scale=clamp_logit_scale(params["logit_scale"], LOGIT_SCALE_MAX))
  metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step),
                 param_norm=optax.global_norm(params))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


class Trainer:
  """Everything a run needs, built once from the config: mesh, model, optimizer, jitted step."""

  def __init__(self, config: ml_collections.ConfigDict):
    validate_config(config)
    self.config = config
    self.mesh = shd.make_mesh(config.mesh)
    self.tokenizer = ClipTokenizer(config.context_length)
    self.model = build_model(config.model, context_length=config.context_length)
    self.tx, self.schedule = optim.make_optimizer(config.optim, config.total_steps)
    init = functools.partial(init_state, self.model, self.tx, config=config)
    self.abstract_state = jax.eval_shape(init, jax.random.key(config.seed))
    self.state_shardings = state_shardings(self.abstract_state, self.mesh, config)
    self._init = jax.jit(init, out_shardings=self.state_shardings)
    self.batch_sharding = shd.batch_sharding(self.mesh)
    step = functools.partial(train_step, model=self.model, tx=self.tx, schedule=self.schedule,
                             config=config)
    self.train_step = jax.jit(
        step, in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, shd.replicated(self.mesh)), donate_argnums=0)

  def init(self) -> TrainState:
    return self._init(jax.random.key(self.config.seed))

  def abstract_state_with_shardings(self):
    return checkpointing.abstract_with_shardings(self.abstract_state, self.state_shardings)

  def train_iterator(self):
    c = self.config
    source = pipeline.make_source(c.data.train, image_size=c.image_size, seed=c.seed)
    return pipeline.train_iterator(
        source, per_process_batch_size=c.batch_size // jax.process_count(), seed=c.seed,
        tokenizer=self.tokenizer, process_index=jax.process_index(),
        process_count=jax.process_count(), worker_count=c.data.worker_count,
        num_threads=c.data.num_threads)

  def global_batch(self, local_batch: dict[str, np.ndarray]):
    """This process's numpy batch -> one global jax.Array per field, split over the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, local_batch[k])
            for k in ("image", "text")}


def _format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def results_table(metrics: dict[str, float]) -> str:
  """Markdown table of evaluation metrics, grouped by evaluator."""
  lines = ["| metric | value |", "|---|---|"]
  for k in sorted(metrics):
    v = metrics[k]
    lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
  return "\n".join(lines)


def _is_cpu() -> bool:
  return jax.devices()[0].platform == "cpu"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, returns final metrics."""
  trainer = Trainer(config)
  workdir = os.path.abspath(workdir)  # Orbax's tensorstore paths must be absolute
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  ckpt = checkpointing.Checkpointer(
      checkpointing.checkpoint_dir(workdir), every_steps=config.checkpoint.every_steps,
      keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  config_dict = json.loads(config.to_json_best_effort())

  train_iter = trainer.train_iterator()
  restored = ckpt.restore(trainer.abstract_state_with_shardings(), train_iter)
  if restored is None:
    state = trainer.init()
    start_step = 0
    writer.write_hparams(_flat_hparams(config))
    logging.info("Starting from scratch in %s", workdir)
  else:
    start_step, state = restored
    logging.info("Resumed from checkpoint at step %d in %s", start_step, workdir)
  _print(f"{'Resuming at' if start_step else 'Starting'} step {start_step}/{config.total_steps} "
         f"on {trainer.mesh.size} {jax.devices()[0].platform} device(s), mesh "
         f"{dict(trainer.mesh.shape)}; workdir {workdir}")

  evaluators = evals_lib.build_evaluators(config, trainer.tokenizer)
  embedder = Embedder(trainer.model, trainer.mesh)

  def evaluate(step):
    t0 = time.time()
    m = evals_lib.run_evaluators(evaluators, embedder, state.params)
    writer.write_scalars(step, m)
    writer.write_scalars(step, {"eval_seconds": time.time() - t0})
    return m

  block_every_step = _is_cpu() and trainer.mesh.size > 1
  total = config.total_steps
  t_last, step_last = time.time(), start_step
  t_start = time.time()
  for step in range(start_step + 1, total + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = trainer.global_batch(next(train_iter))
      state, metrics = trainer.train_step(state, batch)
    if block_every_step:
      # Many un-awaited collectives on fake CPU devices abort XLA's CPU runtime.
      jax.block_until_ready(metrics)
    if step % config.log_every_steps == 0 or step == total:
      metrics = jax.device_get(metrics)
      now = time.time()
      steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
      t_last, step_last = now, step
      scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
      scalars.update({"examples_per_sec": steps_per_s * config.batch_size,
                      "steps_per_sec": steps_per_s})
      writer.write_scalars(step, scalars)
      if not math.isfinite(scalars["train/loss"]):
        raise FloatingPointError(f"Loss is {scalars['train/loss']} at step {step}; stopping.")
      _print(f"step {step}/{total} | loss {scalars['train/loss']:.4f} "
             f"(clip {scalars['train/clip_loss']:.4f}, cross {scalars['train/cross_rank_loss']:.4f}, "
             f"inmodal {scalars['train/inmodal_rank_loss']:.4f}) | scale {scalars['train/scale']:.1f}"
             f" | {scalars['examples_per_sec']:.0f} ex/s | ETA "
             f"{_format_duration((total - step) / max(steps_per_s, 1e-9))}")
    ckpt.save(step, state, train_iter, config_dict, force=(step == total))
    if step % config.eval_every_steps == 0 and step != total:
      m = evaluate(step)
      _print(f"eval at step {step}: " + ", ".join(
          f"{k} {v:.3f}" for k, v in sorted(m.items()) if not k.endswith("chance")))
      t_last = time.time()  # evaluation time is not training throughput
  if start_step < total:
    _print(f"Trained steps {start_step + 1}..{total} in "
           f"{_format_duration(time.time() - t_start)}.")
  elif ckpt.latest_step() != total:
    ckpt.save(total, state, train_iter, config_dict, force=True)
  ckpt.wait()

  final = evaluate(total)
  final["step"] = total
  writer.flush()
  if is_chief:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(final, f, indent=2, sort_keys=True)
    _print("Results (held-out evaluation):\n" + results_table(final))
  ckpt.close()
  writer.close()
  return final


def _flat_hparams(config) -> dict[str, Any]:
  """The config flattened to scalar hparams ("loss.cross_weight": 0.0625) for TensorBoard."""
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, (ml_collections.ConfigDict, dict)):
        walk(key + ".", v)
      elif isinstance(v, (bool, int, float, str)):
        out[key] = v
      else:
        out[key] = str(v)
  walk("", config)
  return out


def _print(msg: str):
  """The user-facing progress lines: stdout on the first process only."""
  if jax.process_index() == 0:
    print(msg, flush=True)
