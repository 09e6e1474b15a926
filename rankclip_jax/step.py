"""One training step, as pure functions of arrays: the train state, how a batch is embedded, the
loss and its gradient (optionally by contrastive gradient accumulation), the update.

Nothing here reads a config; rankclip_jax/train.py builds the jitted step from these.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from rankclip_jax import optim
from rankclip_jax import sharding as shd
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.models.two_towers import LOGIT_SCALE_MAX, clamp_logit_scale, l2_normalize


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # Running total of training examples the input pipeline skipped, per kind (data.records
  # SKIP_KINDS): part of the state so that it is exact across hosts and survives resumption.
  data_skipped: jax.Array
  # The loss's own running quantities (losses.Loss.init_state: ALIP's running mean cosines; {} for
  # the other losses): float32 scalars, replicated, checkpointed, updated by each applied step.
  loss_state: Any


def init_state(tx, params, loss_state: dict | None = None) -> TrainState:
  """A fresh TrainState at step 0 around `params` (random or pretrained) and the loss's initial
  state (default: none)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    data_skipped=jnp.zeros((len(SKIP_KINDS),), jnp.int32),
                    loss_state=dict(loss_state or {}))


def state_shardings(abstract_state: TrainState, param_shardings, mesh) -> TrainState:
  """Parameters as given, the optimizer's moments like the parameters, counters and the loss
  state replicated."""
  return TrainState(step=shd.replicated(mesh), params=param_shardings,
                    opt_state=shd.shardings_like(abstract_state.opt_state, param_shardings, mesh),
                    data_skipped=shd.replicated(mesh),
                    loss_state=jax.tree.map(lambda _: shd.replicated(mesh),
                                            abstract_state.loss_state))


# The caption fields a training batch may hold: the raw text, and a synthetic caption of the image
# (ALIP; only in batches of the losses that read it). Each is embedded by the one text tower.
TEXT_FIELDS = ("text", "synthetic_text")


def _apply(model, params, images, texts, rng):
  """The model in training mode: rng drives its training-only randomness (patch dropout)."""
  return model.apply({"params": params}, images, texts, train=True,
                     rngs={"patch_dropout": rng})


def _embed(model, params, images, batch, rng):
  """(image embeddings, {caption field: embeddings} of every caption field in `batch`, logit
  scale). Several caption fields go through the text tower in one pass, interleaved (rows k*F..
  k*F+F-1 are example k's), so that each device's rows stay its own."""
  fields = [k for k in TEXT_FIELDS if k in batch]
  if len(fields) == 1:
    image_emb, text_emb, logit_scale = _apply(model, params, images, batch[fields[0]], rng)
    return image_emb, {fields[0]: text_emb}, logit_scale
  tokens = jnp.stack([batch[k] for k in fields], axis=1)
  n = tokens.shape[0]
  tokens = tokens.reshape(n * len(fields), *tokens.shape[2:])
  image_emb, text_emb, logit_scale = _apply(model, params, images, tokens, rng)
  text_emb = text_emb.reshape(n, len(fields), *text_emb.shape[1:])
  return image_emb, {k: text_emb[:, j] for j, k in enumerate(fields)}, logit_scale


def embed_image_text(model, params, batch, rng):
  """-> ({"image", "text"[, "synthetic_text"]: embeddings}, logit scale) of a batch of (image,
  caption) pairs."""
  image_emb, texts, logit_scale = _embed(model, params, batch["image"], batch, rng)
  return dict(texts, image=image_emb), logit_scale


def embed_image_pairs(model, params, batch, rng):
  """A batch of image pairs (PC-CLIP: "image_a", "image_b") embedded as normalize(v_a - v_b), the
  difference of the two normalised image embeddings, which the comparative caption must match."""
  n = batch["image_a"].shape[0]
  images = jnp.concatenate([batch["image_a"], batch["image_b"]])
  image_emb, texts, logit_scale = _embed(model, params, images, batch, rng)
  return dict(texts, image=l2_normalize(image_emb[:n] - image_emb[n:])), logit_scale


# The function that embeds a batch, by the image fields its source kind gives (data/sources.py).
EMBED_BY_IMAGE_FIELDS: dict[tuple[str, ...], Callable] = {("image",): embed_image_text,
                                                          ("image_a", "image_b"): embed_image_pairs}


def _split_microbatches(x, m):
  """[B, ...] -> [m, B/m, ...], micro-batch k = rows k, m + k, 2m + k, ...: strided, so each
  micro-batch is spread over every device's block of the batch."""
  return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)


def _merge_microbatches(x):
  """Inverse of _split_microbatches: [m, B/m, ...] -> [B, ...] in the original row order."""
  return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def loss_and_grads(params, batch, step, rng, loss_state, *, model, objective,
                   microbatches: int = 1, embed: Callable = embed_image_text):
  """((loss, metrics, new loss_state), grads) of the objective on one global batch, embedded by
  `embed`, from the loss state `loss_state` (TrainState.loss_state); `rng` is the step's key for
  the model's training randomness (patch dropout).

  microbatches > 1: contrastive gradient accumulation (GradCache, Gao et al. 2021). The loss couples
  every pair of the batch, so summing per-micro-batch gradients would be wrong; instead
    1. embed the whole batch, micro-batch by micro-batch, without gradient;
    2. take the gradient of the loss w.r.t. the embeddings (and logit scale/bias) on the full batch;
    3. re-embed each micro-batch and backpropagate its slice of that gradient into the towers.
  Activation memory is one micro-batch's; the gradient equals the full-batch one (float tolerance).
  Micro-batch k draws its randomness from fold_in(rng, k) in both passes, so 1. and 3. embed it
  identically. The loss state (ALIP's running means) is updated once, from the whole batch's
  embeddings.
  """

  def value(embeddings, logit_scale, logit_bias):
    loss, metrics, new_state = objective(embeddings, logit_scale, logit_bias, loss_state, step)
    return loss, (metrics, new_state)

  if microbatches == 1:
    def full(p):
      embeddings, logit_scale = embed(model, p, batch, rng)
      return value(embeddings, logit_scale, p.get("logit_bias"))
    (loss, (metrics, new_state)), grads = jax.value_and_grad(full, has_aux=True)(params)
    return (loss, metrics, new_state), grads

  def scalars(p):
    _, _, logit_scale = model.apply({"params": p}, None, None)  # no tower runs
    return logit_scale, p.get("logit_bias")

  def embed_micro(p, mb, k):
    return embed(model, p, mb, jax.random.fold_in(rng, k))[0]

  micro = jax.tree.map(lambda x: _split_microbatches(x, microbatches), batch)
  index = jnp.arange(microbatches)
  emb_m = jax.lax.map(lambda xs: embed_micro(jax.lax.stop_gradient(params), *xs), (micro, index))
  embeddings = jax.tree.map(_merge_microbatches, emb_m)

  def from_embeddings(embeddings, p):
    return value(embeddings, *scalars(p))

  (loss, (metrics, new_state)), (g_emb, grads) = jax.value_and_grad(
      from_embeddings, argnums=(0, 1), has_aux=True)(embeddings, params)

  def backprop(acc, xs):
    mb, k, g_mb = xs
    _, vjp = jax.vjp(lambda p: embed_micro(p, mb, k), params)
    (g,) = vjp(g_mb)
    return jax.tree.map(jnp.add, acc, g), None

  g_micro = jax.tree.map(lambda g: _split_microbatches(g, microbatches), g_emb)
  grads, _ = jax.lax.scan(backprop, grads, (micro, index, g_micro))
  return (loss, metrics, new_state), grads


def train_step(state: TrainState, batch, *, model, tx, schedule, objective, microbatches=1,
               freeze_regex: str = "", embed: Callable = embed_image_text, seed: int = 0):
  model_batch = {k: v for k, v in batch.items() if k != "skipped"}
  # The step's randomness is a function of (seed, step) and of each row's place in the global batch
  # (jax.random's draws do not depend on the sharding), so a resumed run draws what the
  # uninterrupted one would have. Across process counts the rows of a batch come in another order
  # (each process contributes its own share), so there the draws land on other examples.
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  (loss, metrics, loss_state), grads = loss_and_grads(
      state.params, model_batch, state.step, rng, state.loss_state, model=model,
      objective=objective, microbatches=microbatches, embed=embed)
  if freeze_regex:  # frozen parameters: no gradient, so XLA drops their backward pass
    grads = jax.tree.map(lambda g, frozen: jnp.zeros_like(g) if frozen else g, grads,
                         optim.frozen_mask(grads, freeze_regex))
  # A non-finite loss makes the gradient non-finite, so that the optimizer (optim.skip_nonfinite)
  # skips the step even when the gradient happened to stay finite. It tests the global norm of the
  # whole gradient it is given (frozen leaves too), so one poisoned leaf is enough: a select over
  # the whole gradient cost ~2-6% of a small model's step on CPU (docs/performance.md, "The
  # non-finite guard").
  grads = dict(grads, logit_scale=jnp.where(jnp.isfinite(loss), grads["logit_scale"], jnp.nan))
  with jax.named_scope("optimizer"):  # names its kernels in profiles (benchmarks/step_profile.py)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  # CLIP clamps the logit scale's parameter (not only its use) so it can come back down.
  params = dict(params, logit_scale=clamp_logit_scale(params["logit_scale"], LOGIT_SCALE_MAX))
  in_a_row, skipped_steps = optim.nonfinite_counts(opt_state)
  # A skipped step (non-finite) changes nothing: the loss state stays as it was too.
  loss_state = jax.tree.map(lambda new, old: jnp.where(in_a_row == 0, new, old), loss_state,
                            state.loss_state)
  # optax.tree.norm as in optim.skip_nonfinite and optax's clipping: XLA computes the norm once.
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step),
                 param_norm=optax.tree.norm(params), nonfinite_in_a_row=in_a_row,
                 skipped_nonfinite_steps=skipped_steps)
  data_skipped = state.data_skipped + jnp.sum(batch["skipped"], axis=0, dtype=jnp.int32)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                    data_skipped=data_skipped, loss_state=loss_state), dict(
                        metrics, data_skipped=data_skipped)
