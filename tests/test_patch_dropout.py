"""FLIP-style patch dropout (config.model.patch_dropout): which tokens the image tower sees in
training, that nothing changes at 0 or at evaluation, and that the step's draws are consistent
across GradCache's two passes. Elsewhere: data parallel, FSDP and scanned layers draw the same
patches (tests/test_train.py's FSDP test runs with patch dropout), and a resumed run draws what the
uninterrupted one did (tests/test_alip.py's resume test runs with patch dropout)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankclip_jax import step as step_lib
from rankclip_jax.models import SIZES, TwoTowers
from rankclip_jax.models.vit import _keep_random_tokens, kept_tokens
from rankclip_jax.objective import make_objective

IMAGES = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))  # micro: 4 x 4 = 16 patches
TOKENS = jnp.asarray(np.tile(np.array([[49406, 320, 736, 49407, 0, 0, 0, 0]], np.int32), (4, 1)))


def _model(patch_dropout, **kw):
  return TwoTowers(SIZES["micro"], context_length=8, patch_dropout=patch_dropout, **kw)


@pytest.fixture(scope="module")
def params():
  return jax.jit(_model(0.0).init)(jax.random.key(0), IMAGES[:1], TOKENS[:1])["params"]


def _encoder_input_length(model, params, **kw):
  """Tokens entering the image tower's encoder, read from flax's captured intermediates."""
  apply = jax.jit(functools.partial(model.apply, capture_intermediates=True,
                                    mutable=["intermediates"], **kw))
  _, state = apply({"params": params}, IMAGES, TOKENS)
  # ln_pre's output is the encoder's input (the encoder returns the class token's output only).
  out = state["intermediates"]["image"]["ln_pre"]["__call__"][0]
  return out.shape[1]


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_kept_token_count(params, pool):
  rngs = {"patch_dropout": jax.random.key(5)}
  cls = 1 if pool == "cls" else 0
  p = params
  if pool == "gap":  # no class token, one position fewer
    p = jax.jit(_model(0.0, pool="gap").init)(jax.random.key(0), IMAGES[:1], TOKENS[:1])["params"]
  assert [kept_tokens(16, r) for r in (0.0, 0.25, 0.5, 0.9, 0.99)] == [16, 12, 8, 2, 1]
  for rate, kept in ((0.25, 12), (0.9, 2)):
    got = _encoder_input_length(_model(rate, pool=pool), p, train=True, rngs=rngs)
    assert got == kept + cls, (rate, pool)
  # Not in evaluation mode.
  assert _encoder_input_length(_model(0.5, pool=pool), p) == 16 + cls


def test_kept_tokens_are_a_random_ordered_subset_per_example():
  x = jnp.broadcast_to(jnp.arange(16, dtype=jnp.float32)[None, :, None], (64, 16, 3))
  kept = np.asarray(_keep_random_tokens(x, 0.5, jax.random.key(0))[..., 0]).astype(int)
  assert kept.shape == (64, 8)
  assert (np.diff(kept, axis=1) > 0).all()  # distinct and in their original order
  assert len({tuple(r) for r in kept}) > 50  # a different subset for (nearly) every example
  # Every position is dropped about half of the time over the batch (uniform, not a fixed block).
  counts = np.bincount(kept.ravel(), minlength=16)
  assert counts.min() > 16 and counts.max() < 48, counts
  again = np.asarray(_keep_random_tokens(x, 0.5, jax.random.key(0))[..., 0])
  other = np.asarray(_keep_random_tokens(x, 0.5, jax.random.key(1))[..., 0])
  np.testing.assert_array_equal(kept, again)
  assert (kept != other).any()


def test_zero_and_evaluation_are_bit_identical(params):
  want = _model(0.0).apply({"params": params}, IMAGES, TOKENS)
  rngs = {"patch_dropout": jax.random.key(3)}
  # 0: the training path gives exactly today's outputs.
  got = _model(0.0).apply({"params": params}, IMAGES, TOKENS, train=True, rngs=rngs)
  for w, g in zip(want, got):
    np.testing.assert_array_equal(np.asarray(w), np.asarray(g))
  # Any rate: evaluation mode (and the encode_image method evaluators and load() use) sees all.
  for method in (None, "encode_image"):
    args = (IMAGES, TOKENS) if method is None else (IMAGES,)
    got = _model(0.5).apply({"params": params}, *args, method=method)
    got = got[0] if method is None else got
    np.testing.assert_array_equal(np.asarray(want[0]), np.asarray(got))
  # Training with dropout does change the image embedding, and only that.
  dropped = _model(0.5).apply({"params": params}, IMAGES, TOKENS, train=True, rngs=rngs)
  assert float(jnp.abs(dropped[0] - want[0]).max()) > 1e-3
  np.testing.assert_array_equal(np.asarray(dropped[1]), np.asarray(want[1]))


def _loss_and_grads(model, objective, params, batch, rng, microbatches=1):
  f = jax.jit(functools.partial(step_lib.loss_and_grads, model=model, objective=objective,
                                microbatches=microbatches))
  (loss, _, _), grads = f(params, batch, jnp.int32(0), rng, {})
  return float(loss), jax.tree.map(np.asarray, jax.device_get(grads))


def _batch(n=16):
  rng = np.random.default_rng(0)
  text = rng.integers(1, 49000, size=(n, 8)).astype(np.int32)
  text[:, -1] = 49407
  return {"image": jnp.asarray(rng.normal(size=(n, 32, 32, 3)).astype(np.float32)),
          "text": jnp.asarray(text)}


def test_gradcache_embeds_each_microbatch_with_one_mask(params):
  """GradCache embeds each micro-batch twice (without, then with gradient): both passes must drop
  the same patches, so its gradient is the true gradient of the loss at the embeddings it used."""
  model = _model(0.5)
  objective = make_objective(None, name="rankclip", cross_weight=1 / 16, inmodal_weight=1 / 16,
                             weight_schedule="constant", strategy="plain", chunk_size=0,
                             total_steps=10)
  batch, rng = _batch(), jax.random.key(7)
  loss, grads = _loss_and_grads(model, objective, params, batch, rng, microbatches=2)

  def direct(p):  # micro-batch k embedded with fold_in(rng, k), in one differentiable pass
    micro = jax.tree.map(lambda x: step_lib._split_microbatches(x, 2), batch)
    outs = [step_lib.embed_image_text(model, p, jax.tree.map(lambda x: x[k], micro),
                                  jax.random.fold_in(rng, k)) for k in range(2)]
    image = step_lib._merge_microbatches(jnp.stack([o[0]["image"] for o in outs]))
    text = step_lib._merge_microbatches(jnp.stack([o[0]["text"] for o in outs]))
    return objective({"image": image, "text": text}, outs[0][1], None, {}, jnp.int32(0))[0]

  want_loss, want = jax.jit(jax.value_and_grad(direct))(params)
  np.testing.assert_allclose(loss, float(want_loss), rtol=1e-5)
  want = jax.tree.map(np.asarray, jax.device_get(want))
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(grads)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  assert np.abs(grads["image"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]).max() > 0
  # And the draws matter: without dropout the same step gives another loss.
  assert abs(_loss_and_grads(_model(0.0), objective, params, batch, rng, 2)[0] - loss) > 1e-4
