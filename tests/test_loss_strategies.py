"""The three execution strategies of every loss (plain, sharded over an 8-device CPU mesh, row-chunked,
and sharded + chunked) give the same value and gradient; the baselines match float64 references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P
from scipy.special import log_expit

from rankclip_jax import losses

N, D = 32, 8


def unit_rows(seed, n=N, d=D, spread=1.0):
  x = np.random.default_rng(seed).normal(size=(n, d)) * spread
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tied_rows(seed):
  """Embeddings with exact duplicates: many tied keys in every ranking term."""
  img, txt = unit_rows(seed), unit_rows(seed + 1)
  img[8:16] = img[0]     # eight identical images
  txt[20:24] = txt[3]    # four identical texts
  img[28], txt[28] = img[5], txt[5]  # a duplicated pair
  return img, txt


def mesh(shape=(8,), names=("data",)):
  return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


# name -> (loss(img, txt, scale, bias, axis_name=, chunk_size=) -> (loss, metrics))
LOSSES = {
    "clip": lambda i, t, s, b, **kw: losses.clip_loss_and_metrics(i, t, s, **kw),
    "rankclip": lambda i, t, s, b, **kw: losses.rankclip_loss(
        i, t, s, cross_weight=0.7, inmodal_weight=0.3, **kw),
    "cyclip": lambda i, t, s, b, **kw: losses.cyclip_loss(
        i, t, s, cross_weight=0.25, inmodal_weight=0.5, **kw),
    "siglip": lambda i, t, s, b, **kw: losses.siglip_loss(i, t, s, b, **kw),
}


def run(name, img, txt, scale, bias, *, strategy, chunk_size=None, mesh_=None):
  """(loss, metrics, grads w.r.t. (img, txt, scale, bias)) under one strategy."""
  fn = LOSSES[name]
  if strategy == "plain":
    f = lambda i, t, s, b: fn(i, t, s, b, chunk_size=chunk_size)
  else:
    axes = tuple(mesh_.axis_names)
    axis_name = axes if len(axes) > 1 else axes[0]
    f = jax.shard_map(functools.partial(fn, axis_name=axis_name, chunk_size=chunk_size),
                      mesh=mesh_, in_specs=(P(axes), P(axes), P(), P()), out_specs=(P(), P()))
  (loss, metrics), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(
      img, txt, jnp.float32(scale), jnp.float32(bias))
  return loss, metrics, grads


def assert_same(a, b, rtol=2e-5, atol=1e-6):
  (la, ma, ga), (lb, mb, gb) = a, b
  np.testing.assert_allclose(la, lb, rtol=rtol, atol=atol)
  assert set(ma) == set(mb)
  for k in ma:
    np.testing.assert_allclose(ma[k], mb[k], rtol=rtol, atol=atol, err_msg=k)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * 10)


CASES = [
    pytest.param(lambda: (unit_rows(0), unit_rows(1)), 1 / 0.07, id="random"),
    pytest.param(lambda: (unit_rows(2), unit_rows(3)), 100.0, id="scale100"),
    pytest.param(lambda: tied_rows(4), 30.0, id="exact_ties"),
]


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("make,scale", CASES)
def test_sharded_and_chunked_equal_plain(name, make, scale):
  img, txt = make()
  plain = run(name, img, txt, scale, -3.0, strategy="plain")
  assert np.isfinite(plain[0]) and all(np.isfinite(g).all() for g in plain[2])
  assert np.abs(plain[2][0]).max() > 0 and np.abs(plain[2][2]) > 0  # gradients really flow
  assert_same(run(name, img, txt, scale, -3.0, strategy="plain", chunk_size=8), plain)
  m8 = mesh()
  assert_same(run(name, img, txt, scale, -3.0, strategy="sharded", mesh_=m8), plain)
  # 4 local rows per device, in blocks of 2.
  assert_same(run(name, img, txt, scale, -3.0, strategy="sharded", mesh_=m8, chunk_size=2), plain)


def test_sharded_over_two_mesh_axes_equals_plain():
  img, txt = unit_rows(5), unit_rows(6)
  plain = run("rankclip", img, txt, 20.0, 0.0, strategy="plain")
  m42 = mesh((4, 2), ("data", "fsdp"))
  assert_same(run("rankclip", img, txt, 20.0, 0.0, strategy="sharded", mesh_=m42, chunk_size=2),
              plain)


@pytest.mark.parametrize("name", list(LOSSES))
def test_psum_backward_of_the_gather_equals_plain(name, monkeypatch):
  """Between CPU processes the gathered columns' gradient is a psum and a slice instead of a
  reduce-scatter (rowwise._gloo_slow_reduce_scatter); forced on here, in one process, it gives the
  plain strategy's value and gradients like the default backward."""
  img, txt = unit_rows(8), unit_rows(9)
  plain = run(name, img, txt, 30.0, -3.0, strategy="plain")
  monkeypatch.setattr(losses.rowwise, "_gloo_slow_reduce_scatter", lambda: True)
  m42 = mesh((4, 2), ("data", "fsdp"))
  assert_same(run(name, img, txt, 30.0, -3.0, strategy="sharded", mesh_=m42, chunk_size=2), plain)


def test_strategies_break_ties_identically():
  # Exact ties: the value depends on the tie rule (test_losses), so equal values here mean every
  # strategy saw the same order, not merely close ones.
  img, txt = tied_rows(7)
  img[:] = img[0]  # every image identical: every in-modal key row is all ties
  plain = run("rankclip", img, txt, 50.0, 0.0, strategy="plain")
  assert_same(run("rankclip", img, txt, 50.0, 0.0, strategy="sharded", mesh_=mesh(), chunk_size=2),
              plain, rtol=1e-6)


def test_chunk_size_must_divide_the_local_rows():
  img, txt = unit_rows(0), unit_rows(1)
  with pytest.raises(ValueError, match="chunk_size=5 must divide the number of local rows 32"):
    losses.rankclip_loss(img, txt, 10.0, cross_weight=1.0, inmodal_weight=1.0, chunk_size=5)


def test_chunking_bounds_peak_memory():
  # Measured on XLA's own buffer assignment for the compiled forward+backward, not on timing: the
  # unchunked loss holds several N x N float32 buffers at once; in blocks of R rows the scratch
  # memory is O(R x N): it shrinks with R/N and doubles when R doubles.
  n, d, r = 1024, 16, 64
  img, txt = unit_rows(0, n, d), unit_rows(1, n, d)

  def temp_bytes(chunk):
    f = jax.grad(lambda i, t: losses.rankclip_loss(
        i, t, 20.0, cross_weight=1.0, inmodal_weight=1.0, chunk_size=chunk)[0], argnums=(0, 1))
    return jax.jit(f).lower(img, txt).compile().memory_analysis().temp_size_in_bytes

  full, chunked, chunked2 = temp_bytes(None), temp_bytes(r), temp_bytes(2 * r)
  assert full > 4 * n * n * 4, full                   # the four N x N matrices at least
  assert chunked < 2 * full * r / n, (chunked, full)  # ~ full * R / N
  assert 1.5 * chunked < chunked2 < 2.5 * chunked, (chunked, chunked2)


# ------------------------------------------------------------------ baselines vs float64 numpy


def test_cyclip_matches_float64_reference():
  img, txt = unit_rows(8), unit_rows(9)
  s = 1 / 0.07
  i64, t64 = img.astype(np.float64), txt.astype(np.float64)
  big_l, s_i, s_t = s * i64 @ t64.T, s * i64 @ i64.T, s * t64 @ t64.T
  lse = lambda x, ax: np.log(np.exp(x - x.max(ax, keepdims=True)).sum(ax)) + x.max(ax)
  clip = 0.5 * (np.mean(lse(big_l, 1) - np.diag(big_l)) + np.mean(lse(big_l, 0) - np.diag(big_l)))
  cross = N * np.mean((big_l - big_l.T) ** 2) / s ** 2
  inmodal = N * np.mean((s_i - s_t) ** 2) / s ** 2
  loss, m = losses.cyclip_loss(img, txt, s, cross_weight=0.25, inmodal_weight=0.5)
  np.testing.assert_allclose(m["clip_loss"], clip, rtol=1e-5)
  np.testing.assert_allclose(m["cross_cyclic_loss"], cross, rtol=1e-4)
  np.testing.assert_allclose(m["inmodal_cyclic_loss"], inmodal, rtol=1e-4)
  np.testing.assert_allclose(loss, clip + 0.25 * cross + 0.5 * inmodal, rtol=1e-5)
  # Zero weights: exactly CLIP.
  zero, _ = losses.cyclip_loss(img, txt, s, cross_weight=0.0, inmodal_weight=0.0)
  assert float(zero) == float(losses.clip_loss(img, txt, s))


def test_siglip_matches_float64_reference_and_gradients_reach_scale_and_bias():
  img, txt = unit_rows(10), unit_rows(11)
  s, b = 10.0, -10.0
  z = s * img.astype(np.float64) @ txt.astype(np.float64).T + b
  labels = 2 * np.eye(N) - 1
  want = -np.sum(log_expit(labels * z)) / N
  loss, m = losses.siglip_loss(img, txt, s, b)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(m["bias"]) == b
  # d/db = (1/N) sum_ij (sigmoid(z_ij) - [i == j]); d/ds = (1/N) sum_ij (...) * cos_ij.
  sig = 1 / (1 + np.exp(-z))
  g_s, g_b = jax.grad(lambda s_, b_: losses.siglip_loss(img, txt, s_, b_)[0], argnums=(0, 1))(
      jnp.float32(s), jnp.float32(b))
  np.testing.assert_allclose(g_b, np.sum(sig - np.eye(N)) / N, rtol=1e-4)
  cos = img.astype(np.float64) @ txt.astype(np.float64).T
  np.testing.assert_allclose(g_s, np.sum((sig - np.eye(N)) * cos) / N, rtol=1e-4)
  # A perfect, confident model has a small loss; a swapped one a large loss.
  eye = np.eye(N, dtype=np.float32)
  perfect, _ = losses.siglip_loss(eye, eye, 30.0, -15.0)
  assert float(perfect) < 0.05 < float(loss)


def test_clip_by_name_is_rankclip_at_weight_zero_without_the_ranking_terms():
  """config.loss.name="clip" trains exactly as "rankclip" with both weights 0 (same loss, gradient
  and CLIP metrics) but computes no ranking term: no sort in its program."""
  img, txt = unit_rows(0), unit_rows(1)

  def by_name(name, weight):
    fn = losses.LOSSES.get(name).fn
    hp = {"cross_weight": weight, "inmodal_weight": weight}

    def f(i, t, s):
      loss, metrics, _ = fn({"image": i, "text": t}, s, jnp.float32(0.0), {}, hp,
                            axis_name=None, chunk_size=None)
      return loss, metrics
    return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True), f

  (clip_loss, clip_metrics), clip_grads = jax.jit(by_name("clip", 0.0)[0])(img, txt, 14.3)
  (rank_loss, rank_metrics), rank_grads = jax.jit(by_name("rankclip", 0.0)[0])(img, txt, 14.3)
  np.testing.assert_allclose(clip_loss, rank_loss, rtol=1e-6)
  for k in ("clip_loss", "i2t_top1", "t2i_top1", "loss"):
    np.testing.assert_allclose(clip_metrics[k], rank_metrics[k], rtol=1e-6, err_msg=k)
  for a, b in zip(clip_grads, rank_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  primitives = lambda f: str(jax.make_jaxpr(jax.grad(lambda *a: f(*a)[0], argnums=(0, 1)))(
      img, txt, 14.3))
  assert " sort" not in primitives(by_name("clip", 0.0)[1])
  assert " sort" in primitives(by_name("rankclip", 0.0)[1])
