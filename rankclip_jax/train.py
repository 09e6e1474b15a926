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
import signal
import threading
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
from etils import epath
from jax.sharding import PartitionSpec as P

from rankclip_jax import checkpointing
from rankclip_jax import flops as flops_lib
from rankclip_jax import optim
from rankclip_jax import sharding as shd
from rankclip_jax.config_validation import validate_config
from rankclip_jax.data import pipeline
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import evaluators as evals_lib
from rankclip_jax.evaluation.embed import Embedder
from rankclip_jax.losses import cyclip_loss, rankclip_loss, ranking_weight_multiplier, siglip_loss
from rankclip_jax.models import build_model
from rankclip_jax.models.two_towers import LOGIT_SCALE_MAX, clamp_logit_scale, l2_normalize


LOSSES_WITH_BIAS = ("siglip",)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # Running total of training examples the input pipeline skipped, per kind (data.records
  # SKIP_KINDS): part of the state so that it is exact across hosts and survives resumption.
  data_skipped: jax.Array


def init_params(model, rng, config):
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  tokens = jnp.zeros((1, config.context_length), jnp.int32)
  return model.init(rng, images, tokens)["params"]


def init_state(model, tx, rng, config, params=None) -> TrainState:
  """A fresh TrainState at step 0: `params` (e.g. pretrained weights) or a random initialisation."""
  if params is None:
    params = init_params(model, rng, config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    data_skipped=jnp.zeros((len(SKIP_KINDS),), jnp.int32))


def state_shardings(abstract_state: TrainState, mesh, config) -> TrainState:
  params = shd.param_shardings(abstract_state.params, mesh, config.sharding.rules,
                               min_size=config.sharding.fsdp_min_size)
  return TrainState(step=shd.replicated(mesh), params=params,
                    opt_state=shd.shardings_like(abstract_state.opt_state, params, mesh),
                    data_skipped=shd.replicated(mesh))


def make_objective(config, mesh):
  """-> objective(image_emb, text_emb, logit_scale, logit_bias, step) -> (loss, metrics).

  The loss named by config.loss.name, with the ranking/cyclic weights on their schedule, run by the
  strategy of config.loss.strategy: "sharded" wraps it in shard_map over the batch axes of the mesh
  (each device its own rows; see losses/rowwise.py), "plain" leaves the N x N matrices to XLA.
  """
  lc = config.loss
  chunk_size = lc.chunk_size or None

  def objective(image_emb, text_emb, logit_scale, logit_bias, multiplier, *, axis_name):
    scale = jnp.exp(logit_scale)
    kw = dict(axis_name=axis_name, chunk_size=chunk_size)
    if lc.name == "siglip":
      return siglip_loss(image_emb, text_emb, scale, logit_bias, **kw)
    if lc.name == "pcclip":  # symmetric InfoNCE between captions and image differences
      return rankclip_loss(image_emb, text_emb, scale, cross_weight=0.0, inmodal_weight=0.0, **kw)
    loss_fn = {"rankclip": rankclip_loss, "cyclip": cyclip_loss}[lc.name]
    return loss_fn(image_emb, text_emb, scale, cross_weight=lc.cross_weight * multiplier,
                   inmodal_weight=lc.inmodal_weight * multiplier, **kw)

  if lc.strategy == "sharded":
    batch = P(shd.DATA_AXES)
    run = jax.shard_map(functools.partial(objective, axis_name=shd.DATA_AXES), mesh=mesh,
                        in_specs=(batch, batch, P(), P(), P()), out_specs=(P(), P()))
  else:
    run = functools.partial(objective, axis_name=None)

  def objective_at_step(image_emb, text_emb, logit_scale, logit_bias, step):
    multiplier = ranking_weight_multiplier(step, config.total_steps, lc.weight_schedule)
    if logit_bias is None:
      logit_bias = jnp.zeros((), jnp.float32)
    loss, metrics = run(image_emb, text_emb, logit_scale, logit_bias, multiplier)
    return loss, dict(metrics, logit_scale=logit_scale, scale=jnp.exp(logit_scale))

  return objective_at_step


def _split_microbatches(x, m):
  """[B, ...] -> [m, B/m, ...], micro-batch k = rows k, m + k, 2m + k, ...: strided, so each
  micro-batch is spread over every device's block of the batch."""
  return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)


def _merge_microbatches(x):
  """Inverse of _split_microbatches: [m, B/m, ...] -> [B, ...] in the original row order."""
  return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def embed_batch(model, params, batch):
  """-> (image-side embeddings, text embeddings, logit scale) of a training batch.

  A batch of image pairs (PC-CLIP: "image_a", "image_b") is embedded as normalize(v_a - v_b), the
  difference of the two normalised image embeddings, which the comparative caption must match.
  """
  if "image_a" in batch:
    n = batch["image_a"].shape[0]
    images = jnp.concatenate([batch["image_a"], batch["image_b"]])
    image_emb, text_emb, logit_scale = model.apply({"params": params}, images, batch["text"])
    return l2_normalize(image_emb[:n] - image_emb[n:]), text_emb, logit_scale
  return model.apply({"params": params}, batch["image"], batch["text"])


def loss_and_grads(params, batch, step, *, model, objective, microbatches: int = 1):
  """((loss, metrics), grads) of the objective on one global batch.

  microbatches > 1: contrastive gradient accumulation (GradCache, Gao et al. 2021). The loss couples
  every pair of the batch, so summing per-micro-batch gradients would be wrong; instead
    1. embed the whole batch, micro-batch by micro-batch, without gradient;
    2. take the gradient of the loss w.r.t. the embeddings (and logit scale/bias) on the full batch;
    3. re-embed each micro-batch and backpropagate its slice of that gradient into the towers.
  Activation memory is one micro-batch's; the gradient equals the full-batch one (float tolerance).
  """

  if microbatches == 1:
    def full(p):
      image_emb, text_emb, logit_scale = embed_batch(model, p, batch)
      return objective(image_emb, text_emb, logit_scale, p.get("logit_bias"), step)
    return jax.value_and_grad(full, has_aux=True)(params)

  def scalars(p):
    _, _, logit_scale = model.apply({"params": p}, None, None)  # no tower runs
    return logit_scale, p.get("logit_bias")

  def embed(p, mb):
    image_emb, text_emb, _ = embed_batch(model, p, mb)
    return image_emb, text_emb

  micro = jax.tree.map(lambda x: _split_microbatches(x, microbatches), batch)
  image_m, text_m = jax.lax.map(lambda mb: embed(jax.lax.stop_gradient(params), mb), micro)
  image_emb, text_emb = _merge_microbatches(image_m), _merge_microbatches(text_m)

  def from_embeddings(image_emb, text_emb, p):
    return objective(image_emb, text_emb, *scalars(p), step)

  (loss, metrics), (g_image, g_text, grads) = jax.value_and_grad(
      from_embeddings, argnums=(0, 1, 2), has_aux=True)(image_emb, text_emb, params)

  def backprop(acc, xs):
    mb, gi, gt = xs
    _, vjp = jax.vjp(lambda p: embed(p, mb), params)
    (g,) = vjp((gi, gt))
    return jax.tree.map(jnp.add, acc, g), None

  grads, _ = jax.lax.scan(backprop, grads, (micro, _split_microbatches(g_image, microbatches),
                                            _split_microbatches(g_text, microbatches)))
  return (loss, metrics), grads


def train_step(state: TrainState, batch, *, model, tx, schedule, objective, microbatches=1,
               freeze_regex: str = ""):
  model_batch = {k: v for k, v in batch.items() if k != "skipped"}
  (_, metrics), grads = loss_and_grads(state.params, model_batch, state.step, model=model,
                                       objective=objective, microbatches=microbatches)
  if freeze_regex:  # frozen parameters: no gradient, so XLA drops their backward pass
    grads = jax.tree.map(lambda g, frozen: jnp.zeros_like(g) if frozen else g, grads,
                         optim.frozen_mask(grads, freeze_regex))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # CLIP clamps the logit scale's parameter (not only its use) so it can come back down.
  params = dict(params, logit_scale=clamp_logit_scale(params["logit_scale"], LOGIT_SCALE_MAX))
  metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step),
                 param_norm=optax.global_norm(params))
  data_skipped = state.data_skipped + jnp.sum(batch["skipped"], axis=0, dtype=jnp.int32)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                    data_skipped=data_skipped), dict(metrics, data_skipped=data_skipped)


class Trainer:
  """Everything a run needs, built once from the config: mesh, model, optimizer, jitted step."""

  def __init__(self, config: ml_collections.ConfigDict):
    validate_config(config)
    self.config = config
    self.mesh = shd.make_mesh(config.mesh)
    self.tokenizer = ClipTokenizer(config.context_length)
    self.model = build_model(config.model, context_length=config.context_length,
                             logit_bias=config.loss.name in LOSSES_WITH_BIAS)
    self.objective = make_objective(config, self.mesh)
    self.tx, self.schedule = optim.make_optimizer(config.optim, config.total_steps)
    init = functools.partial(init_state, self.model, self.tx, config=config)
    self.abstract_state = jax.eval_shape(init, jax.random.key(config.seed))
    self.state_shardings = state_shardings(self.abstract_state, self.mesh, config)
    self._init = jax.jit(init, out_shardings=self.state_shardings)
    self.batch_sharding = shd.batch_sharding(self.mesh)
    step = functools.partial(train_step, model=self.model, tx=self.tx, schedule=self.schedule,
                             objective=self.objective, microbatches=config.microbatches,
                             freeze_regex=config.optim.freeze_regex)
    self.train_step = jax.jit(
        step, in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, shd.replicated(self.mesh)), donate_argnums=0)

  def init(self) -> TrainState:
    """Step 0: random parameters, or config.model.init_from's weights (with a fresh optimizer)."""
    state = self._init(jax.random.key(self.config.seed))
    if not self.config.model.init_from:
      return state
    from rankclip_jax.interop import pretrained  # pylint: disable=g-import-not-at-top
    loaded = pretrained.load(self.config, self.abstract_state.params)

    def put(path, fresh):
      key = tuple(getattr(p, "key", getattr(p, "name", None)) for p in path)
      if key not in loaded:
        return fresh  # the few parameters the source lacks (a logit bias) keep their init
      value = loaded[key]
      return jax.make_array_from_callback(value.shape, fresh.sharding, lambda idx: value[idx])

    params = jax.tree_util.tree_map_with_path(put, state.params)
    with_params = jax.jit(
        functools.partial(init_state, self.model, self.tx, None, config=self.config),
        out_shardings=self.state_shardings)
    return with_params(params=params)

  def abstract_state_with_shardings(self):
    return checkpointing.abstract_with_shardings(self.abstract_state, self.state_shardings)

  @property
  def image_keys(self) -> tuple[str, ...]:
    """The image fields of a training batch: one image, or a pair (PC-CLIP)."""
    return (("image_a", "image_b") if self.config.data.train.kind in pipeline.PAIR_KINDS
            else ("image",))

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    c, s = self.config, self.batch_sharding
    out = {k: jax.ShapeDtypeStruct((c.batch_size, c.image_size, c.image_size, 3), jnp.float32,
                                   sharding=s) for k in self.image_keys}
    out["text"] = jax.ShapeDtypeStruct((c.batch_size, c.context_length), jnp.int32, sharding=s)
    out["skipped"] = jax.ShapeDtypeStruct((c.batch_size, len(SKIP_KINDS)), jnp.int32, sharding=s)
    return out

  def step_flops(self):
    """Model FLOPs of one training step (global batch), or None: XLA's cost analysis of this step
    written the plain way (per-layer blocks, no rematerialisation, one micro-batch, the loss
    neither sharded nor chunked), traced and lowered but not compiled. The analysis of the step as
    configured would count a loop body once (scanned layers, GradCache's micro-batch loop, loss
    chunks), a shard_map body once for all devices, and recomputation as work; MFU counts each
    multiply-add of the model once."""
    config = self.config.copy_and_resolve_references()
    config.model.scan_layers = False
    config.model.remat = False
    config.microbatches = 1
    config.loss.strategy = "plain"
    config.loss.chunk_size = 0
    trainer = self if config == self.config else Trainer(config)
    return flops_lib.step_flops(trainer.train_step, trainer.abstract_state_with_shardings(),
                                trainer.abstract_batch())

  def train_iterator(self):
    c = self.config
    source = pipeline.make_source(c.data.train, image_size=c.image_size, seed=c.seed)
    logging.info("Training data: %r", source)
    if c.data.train.kind in pipeline.PAIR_KINDS:
      from rankclip_jax.data import pairs  # pylint: disable=g-import-not-at-top
      return pairs.pair_iterator(
          source, per_process_batch_size=c.batch_size // jax.process_count(), seed=c.seed,
          tokenizer=self.tokenizer, image_size=c.image_size, process_index=jax.process_index(),
          process_count=jax.process_count(), worker_count=c.data.worker_count,
          num_threads=c.data.num_threads)
    return pipeline.train_iterator(
        source, per_process_batch_size=c.batch_size // jax.process_count(), seed=c.seed,
        tokenizer=self.tokenizer, image_size=c.image_size, crop_scale=c.data.crop_scale,
        process_index=jax.process_index(),
        process_count=jax.process_count(), worker_count=c.data.worker_count,
        num_threads=c.data.num_threads)

  def global_batch(self, local_batch: dict[str, np.ndarray]):
    """This process's numpy batch -> one global jax.Array per field, split over the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, local_batch[k])
            for k in self.image_keys + ("text", "skipped")}


# Loss terms shown on the progress line when the loss reports them: (metric, short name).
_PROGRESS_TERMS = (("clip_loss", "clip"), ("cross_rank_loss", "cross"),
                   ("inmodal_rank_loss", "inmodal"), ("cross_cyclic_loss", "cross"),
                   ("inmodal_cyclic_loss", "inmodal"), ("bias", "bias"))


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
  # Data are opened first: a missing evaluation set or training file stops the run before anything
  # is written or trained.
  evaluators = evals_lib.build_evaluators(config, trainer.tokenizer)
  train_iter = trainer.train_iterator()
  workdir = absolute_path(workdir)  # Orbax's tensorstore paths must be absolute
  is_chief = jax.process_index() == 0
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  ckpt = checkpointing.Checkpointer(
      checkpointing.checkpoint_dir(workdir), every_steps=config.checkpoint.every_steps,
      keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  config_dict = json.loads(config.to_json_best_effort())

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

  embedder = Embedder(trainer.model, trainer.mesh)

  def evaluate(step, final=False):
    t0 = time.time()
    chosen = {n: e for n, e in evaluators.items() if final or evals_lib.due(config, n, step)}
    m, pictures = evals_lib.split_pictures(
        evals_lib.run_evaluators(chosen, embedder, state.params))
    writer.write_scalars(step, dict(m))  # a copy: the writer is asynchronous, m is returned
    if pictures:
      writer.write_images(step, {k: v[None] for k, v in pictures.items()})
      if is_chief:
        save_pictures(workdir, step, pictures)
    writer.write_scalars(step, {"eval_seconds": time.time() - t0})
    return m

  preemption = Preemption()
  peak = flops_lib.peak_flops_per_device(jax.devices()[0].device_kind, config.model.dtype,
                                         config.peak_tflops)
  # Tracing the step once more for its FLOPs takes seconds: on CPU only when a peak is given.
  flops_per_step = trainer.step_flops() if not _is_cpu() or config.peak_tflops else None
  profile_first, profile_last = (int(v) for v in config.profile_steps)
  profiling = False
  try:
    block_every_step = _is_cpu() and trainer.mesh.size > 1
    total = config.total_steps
    t_last, step_last = time.time(), start_step
    t_start = time.time()
    for step in range(start_step + 1, total + 1):
      if profile_first and step == profile_first and is_chief:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
        profiling = True
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = trainer.global_batch(next(train_iter))
        state, metrics = trainer.train_step(state, batch)
      if profiling and step == max(profile_last, profile_first + 1) - 1:
        profiling = False
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        _print(f"Profile of steps {profile_first}..{step} written to {workdir}/profile.")
      if block_every_step:
        # Many un-awaited collectives on fake CPU devices abort XLA's CPU runtime.
        jax.block_until_ready(metrics)
      if step % config.log_every_steps == 0 or step == total:
        metrics = jax.device_get(metrics)
        now = time.time()
        steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        skipped = pipeline.skip_counts(metrics.pop("data_skipped"))
        scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
        scalars.update({f"data/skipped/{k}": v for k, v in skipped.items()})
        scalars.update({"examples_per_sec": steps_per_s * config.batch_size,
                        "steps_per_sec": steps_per_s,
                        "perf/examples_per_sec_per_device":
                            steps_per_s * config.batch_size / jax.device_count()})
        if flops_per_step:
          scalars["perf/tflops_per_sec"] = flops_per_step * steps_per_s / 1e12
          if peak:
            scalars["perf/mfu"] = flops_per_step * steps_per_s / (peak * jax.device_count())
        writer.write_scalars(step, scalars)
        if not math.isfinite(scalars["train/loss"]):
          raise FloatingPointError(f"Loss is {scalars['train/loss']} at step {step}; stopping.")
        terms = ", ".join(f"{short} {scalars['train/' + key]:.4f}"
                          for key, short in _PROGRESS_TERMS if "train/" + key in scalars)
        _print(f"step {step}/{total} | loss {scalars['train/loss']:.4f} ({terms}) "
               f"| scale {scalars['train/scale']:.1f} | {scalars['examples_per_sec']:.0f} ex/s | ETA "
               f"{_format_duration((total - step) / max(steps_per_s, 1e-9))}"
               + (f" | MFU {scalars['perf/mfu']:.1%}" if "perf/mfu" in scalars else "")
               + (f" | skipped {sum(skipped.values())} bad examples so far" if any(skipped.values())
                  else ""))
      if step != total and preemption.reached(step):
        ckpt.save(step, state, train_iter, config_dict, force=True)
        ckpt.close()
        writer.close()
        if hasattr(train_iter, "close"):
          train_iter.close()
        _print(f"Stopped by SIGTERM at step {step}/{total}; checkpoint saved in {workdir}. Run the "
               "same command to resume.")
        return {"step": step, "preempted": True}
      ckpt.save(step, state, train_iter, config_dict, force=(step == total))
      if step != total and any(evals_lib.due(config, n, step) for n in evaluators):
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

    final = evaluate(total, final=True)
    final["step"] = total
    writer.flush()
    if is_chief:
      (epath.Path(workdir) / "results.json").write_text(json.dumps(final, indent=2,
                                                                   sort_keys=True))
      _print("Results (held-out evaluation):\n" + results_table(final))
    ckpt.close()
    writer.close()
    if hasattr(train_iter, "close"):
      train_iter.close()  # stops grain's worker processes and frees their shared memory
    return final

  finally:
    preemption.close()


class Preemption:
  """SIGTERM (TPU preemption, SLURM's time limit or scancel, `kill`) -> stop after the current step
  with a checkpoint. With several processes the step is agreed through JAX's preemption sync point
  (its coordination service sees the signal), so every process saves the same step; alone, a
  Python signal handler notes it."""

  def __init__(self):
    self.signalled = False
    self.multi_process = jax.process_count() > 1
    self._previous = None
    if not self.multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.signalled = True

  def close(self):
    """Gives SIGTERM back to whoever had it before the run (e.g. a test runner)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def reached(self, step: int) -> bool:
    if self.multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled


def save_pictures(workdir: str, step: int, pictures: dict[str, np.ndarray]) -> list[str]:
  """Writes each evaluation picture as <workdir>/pictures/<evaluator>_<name>_<step>.png."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out_dir = epath.Path(workdir) / "pictures"
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for key, picture in pictures.items():
    path = out_dir / f"{key.replace('/', '_')}_{step}.png"
    buf = io.BytesIO()
    Image.fromarray(np.asarray(picture, np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    paths.append(str(path))
  return paths


def absolute_path(path: str) -> str:
  """Local paths made absolute; cloud URLs (gs://bucket/run, as multi-host TPU runs use for a
  workdir every host can reach) kept as they are."""
  return path if "://" in path else os.path.abspath(path)


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
