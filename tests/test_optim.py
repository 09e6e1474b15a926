"""The optimizer as docs/training.md describes it (rankclip_jax/optim.py through step.train_step): no
weight decay on norms, biases, the logit scale, position embeddings and the class token; linear
warmup then cosine; the logit scale's parameter clamped after every update; frozen parameters
untouched."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rankclip_jax import optim
from rankclip_jax import step as step_lib
from rankclip_jax.model_setup import init_params
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.models import build_model
from rankclip_jax.models.two_towers import LOGIT_SCALE_MAX
from rankclip_jax.sharding import path_str
from test_train import micro_config

# The real micro model's parameter trees: the default one (conv stem, mean pooling) and CLIP's
# layout with a class token, scanned layers and SigLIP's logit bias.
LAYOUTS = {
    "default": ({}, False),
    "cls_scanned_bias": ({"model.stem": "patch", "model.pool": "cls", "model.scan_layers": True},
                         True),
}


def real_param_shapes(layout="default"):
  overrides, logit_bias = LAYOUTS[layout]
  c = micro_config(**overrides)
  model = build_model(c.model, context_length=c.context_length, logit_bias=logit_bias)
  return jax.eval_shape(lambda rng: init_params(model, rng, image_size=c.image_size,
                                                    context_length=c.context_length), jax.random.key(0))


def random_params(shapes, seed=0):
  """Values for a parameter tree (numpy: no per-shape XLA compiles), non-zero everywhere, so that
  decay and updates are visible."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) + 0.5).astype(s.dtype), shapes)


@functools.partial(jax.jit, static_argnums=0)
def one_update(tx, grads, params):
  """Params after one optimizer step from a fresh state (jitted: one compile for the tree)."""
  updates, _ = tx.update(grads, tx.init(params), params)
  return optax.apply_updates(params, updates)


def paths(tree):
  return {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def expected_decay(path):
  """docs/training.md's rule, written out by parameter name (not with the config's regex): True for
  parameters that get weight decay."""
  name = path.rsplit("/", 1)[-1]
  if name in ("bias", "scale", "pos_embedding", "cls", "logit_scale", "logit_bias"):
    return False  # LayerNorm scale/bias, every bias, position embeddings, class token, logit scale
  if name in ("kernel", "embedding"):
    return True  # dense/conv kernels and the token embedding
  raise AssertionError(f"parameter {path} is neither decayed nor exempt by docs/training.md's rule: "
                       "add it to this test")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_weight_decay_mask_on_the_real_parameter_tree(layout):
  shapes = real_param_shapes(layout)
  c = micro_config()
  mask = paths(optim.weight_decay_mask(shapes, c.optim.no_decay_regex))
  assert mask == {p: expected_decay(p) for p in mask}
  # Each kind docs/training.md names is present in the tree (else the check above proves nothing).
  names = {p.rsplit("/", 1)[-1] for p in mask}
  assert {"kernel", "embedding", "bias", "scale", "pos_embedding", "logit_scale"} <= names
  if layout == "cls_scanned_bias":
    assert mask["image/cls"] is False and mask["logit_bias"] is False
    assert mask["image/encoder/blocks/mlp/fc1/kernel"] is True


def test_zero_gradient_update_decays_exactly_the_decayed_parameters():
  """With zero gradients AdamW's step is -lr * wd * param on decayed parameters and nothing on
  the others (bit-identical)."""
  shapes = real_param_shapes("cls_scanned_bias")
  params = random_params(shapes)
  c = micro_config(**{"optim.warmup_steps": 0, "optim.learning_rate": 0.01,
                      "optim.weight_decay": 0.1})
  tx, schedule = optim.make_optimizer(c.optim, c.total_steps)
  lr, wd = float(schedule(0)), c.optim.weight_decay
  assert lr == pytest.approx(0.01)
  new = paths(jax.device_get(one_update(tx, jax.tree.map(np.zeros_like, params), params)))
  old = paths(params)
  for p, before in old.items():
    before, after = np.asarray(before), np.asarray(new[p])
    if expected_decay(p):
      np.testing.assert_allclose(after, before - lr * wd * before, rtol=1e-6, atol=0, err_msg=p)
      assert not np.array_equal(after, before), p
    else:
      np.testing.assert_array_equal(after, before, err_msg=p)


def cosine_reference(step, *, peak, end, warmup, total):
  """Linear warmup from 0 to peak over `warmup` steps, then cosine from peak to end at `total`."""
  if step < warmup:
    return peak * step / warmup
  t = min(step, total) - warmup
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t / (total - warmup)))


def test_schedule_is_linear_warmup_then_cosine():
  c = micro_config(**{"optim.learning_rate": 1e-3, "optim.warmup_steps": 10,
                      "optim.final_lr_fraction": 0.1})
  schedule = optim.learning_rate_schedule(c.optim, 110)
  kw = dict(peak=1e-3, end=1e-4, warmup=10, total=110)
  for step in (0, 1, 5, 9, 10, 11, 35, 60, 85, 109, 110, 200):
    assert float(schedule(step)) == pytest.approx(cosine_reference(step, **kw), rel=1e-5,
                                                  abs=1e-12), step
  # Fixed points of the formula, so that the reference itself is pinned down.
  assert float(schedule(5)) == pytest.approx(5e-4, rel=1e-5)
  assert float(schedule(10)) == pytest.approx(1e-3, rel=1e-5)
  assert float(schedule(60)) == pytest.approx(5.5e-4, rel=1e-5)  # halfway: (peak + end) / 2
  assert float(schedule(110)) == pytest.approx(1e-4, rel=1e-5)
  # Warmup over the whole run: linear to the peak; out-of-range warmup is an error.
  c.optim.warmup_steps = 110
  whole = optim.learning_rate_schedule(c.optim, 110)
  assert [float(whole(s)) for s in (0, 55, 110)] == pytest.approx([0.0, 5e-4, 1e-3], rel=1e-5)
  c.optim.warmup_steps = 111
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.learning_rate_schedule(c.optim, 110)


class StandInModel:
  """Stands in for TwoTowers in step.train_step, at a fraction of its compile time: same apply()
  signature and outputs, each tower's embedding a smooth function of every one of its parameters
  (so every leaf gets a non-zero gradient), the logit scale returned as it is (unclamped, so that
  the loss below can push it past the maximum)."""

  def apply(self, variables, images, tokens, **_):  # train=, rngs=: no randomness here
    p = variables["params"]
    def tower(tree, x):
      s = sum(jnp.mean(jnp.sin(leaf)) for leaf in jax.tree.leaves(tree))
      return x.reshape(x.shape[0], -1)[:, :8].astype(jnp.float32) * 0.1 + s
    return tower(p["image"], images), tower(p["text"], tokens), p["logit_scale"]


def stand_in_objective(embeddings, logit_scale, logit_bias, loss_state, step):
  del step
  # Decreasing in the logit scale: every update raises it.
  loss = jnp.mean(embeddings["image"] ** 2) + jnp.mean(embeddings["text"] ** 2) - logit_scale
  return loss + (0.0 if logit_bias is None else logit_bias ** 2), {}, loss_state


def stand_in_step(config):
  """(tx, init: params -> TrainState, step: step.train_step with the stand-in), jitted."""
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  init = jax.jit(lambda params: step_lib.init_state(tx, params))
  step = jax.jit(functools.partial(
      step_lib.train_step, model=StandInModel(), tx=tx, schedule=schedule,
      objective=stand_in_objective, freeze_regex=config.optim.freeze_regex))
  return tx, init, step


def fake_batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, 8, 8, 3)).astype(np.float32),
          "text": rng.integers(1, 100, size=(n, 8)).astype(np.int32),
          "skipped": np.zeros((n, len(SKIP_KINDS)), np.int32)}


def test_logit_scale_parameter_is_clamped_after_the_update():
  """The stand-in loss falls as the logit scale grows, so Adam's first step raises it by lr = 0.1
  (|g| >> eps): from 0.5 below the maximum it ends 0.4 below; from 0.05 below, the update would
  take it 0.05 above and the clamp leaves it exactly at the maximum."""
  c = micro_config(**{"optim.warmup_steps": 0, "optim.learning_rate": 0.1})
  _, init, step = stand_in_step(c)
  # A small tree (quick to compile): the clamp concerns the logit scale alone.
  params = {"image": {"proj": {"kernel": np.ones((4, 4), np.float32)}},
            "text": {"proj": {"kernel": np.ones((4, 4), np.float32)}}}
  got = {}
  for below in (0.5, 0.05):
    state = init(dict(params, logit_scale=np.float32(LOGIT_SCALE_MAX - below)))
    new, _ = step(state, fake_batch())
    got[below] = float(new.params["logit_scale"])
  assert got[0.5] == pytest.approx(LOGIT_SCALE_MAX - 0.4, abs=1e-4)  # the step: +lr, unclamped
  assert got[0.05] == np.float32(LOGIT_SCALE_MAX)  # exactly at the maximum, not above


def test_frozen_subtree_is_bit_identical_and_the_rest_trains():
  """freeze_regex "image/.*" (PC-CLIP's): after a few steps every leaf of the image tower is
  bit-identical (weight decay included), every other leaf moved, and the frozen leaves carry no
  optimizer state."""
  c = micro_config(**{"optim.freeze_regex": "image/.*", "optim.warmup_steps": 0,
                      "optim.weight_decay": 0.1})
  tx, init, step = stand_in_step(c)
  params = random_params(real_param_shapes("cls_scanned_bias"))
  before = paths(params)
  state = init(params)
  for i in range(3):
    state, _ = step(state, fake_batch(seed=i))
  after = paths(jax.device_get(state.params))
  frozen = {p for p in before if p.startswith("image/")}
  assert len(frozen) > 20 and len(before) - len(frozen) > 20
  for p in before:
    if p in frozen:
      np.testing.assert_array_equal(after[p], before[p], err_msg=p)
    else:
      assert not np.array_equal(after[p], before[p]), p
  # AdamW's two moments exist for the trained parameters only.
  trained_size = sum(np.size(v) for p, v in before.items() if p not in frozen)
  state_size = sum(np.size(x) for x in jax.tree.leaves(state.opt_state)
                   if jnp.issubdtype(x.dtype, jnp.floating))
  assert state_size == 2 * trained_size


def test_skip_nonfinite_is_optax_apply_if_finite_in_one_norm():
  """optim.skip_nonfinite against optax.apply_if_finite (never giving up) on a small tree, step by
  step through finite, NaN and inf gradients: the same updates, the same state (same structure,
  so checkpoints of either restore into the other), the same counters. And what the global-norm
  test adds: a finite gradient whose squared norm overflows float32 is skipped too."""
  inner = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.1))
  ours, theirs = optim.skip_nonfinite(inner), optax.apply_if_finite(inner, 2 ** 31 - 1)
  params = {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones(4), "d": jnp.zeros(())}}
  state_ours, state_theirs = ours.init(params), theirs.init(params)
  assert jax.tree.structure(state_ours) == jax.tree.structure(state_theirs)

  @functools.partial(jax.jit, static_argnums=0)
  def update(tx, grads, state, params):
    return tx.update(grads, state, params)

  rng = np.random.default_rng(0)
  # (leaf index, value written into its first entry) or None for a finite step.
  poisons = [None, (0, np.nan), None, (1, np.inf), (2, -np.inf), None, (1, np.nan)]
  for poison in poisons:
    grads = [rng.normal(size=p.shape).astype(np.float32) for p in jax.tree.leaves(params)]
    if poison:
      grads[poison[0]].reshape(-1)[0] = poison[1]
    grads = jax.tree.unflatten(jax.tree.structure(params), grads)
    u_ours, state_ours = update(ours, grads, state_ours, params)
    u_theirs, state_theirs = update(theirs, grads, state_theirs, params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 (u_ours, state_ours), (u_theirs, state_theirs))
    assert bool(state_ours.last_finite) == (poison is None)
    if poison:
      assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(u_ours))
    params = optax.apply_updates(params, u_ours)
  assert int(state_ours.total_notfinite) == 4 and int(state_ours.notfinite_count) == 1

  huge = jax.tree.map(lambda p: jnp.full(p.shape, 3e19, jnp.float32), params)
  u, state = update(ours, huge, state_ours, params)
  assert not bool(state.last_finite) and int(state.total_notfinite) == 5
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u))
