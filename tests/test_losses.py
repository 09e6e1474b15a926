"""Losses against references written differently: float64 numpy loops, rax, finite differences."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import rax
from scipy.special import logsumexp

from rankclip_jax import losses

SCALE = 1.0 / 0.07


def unit_rows(seed, n, d=8):
  x = np.random.default_rng(seed).normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- float64 references


def np_clip_loss(img, txt, s):
  logits = s * np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T
  log_softmax_rows = logits - logsumexp(logits, axis=1, keepdims=True)
  log_softmax_cols = logits - logsumexp(logits, axis=0, keepdims=True)
  n = logits.shape[0]
  return 0.5 * (-np.trace(log_softmax_rows) / n - np.trace(log_softmax_cols) / n)


def pl_order(key_row, ties="index_ascending"):
  """Key descending; equal keys by column index ascending (or descending, to show it matters)."""
  sign = 1 if ties == "index_ascending" else -1
  return sorted(range(len(key_row)), key=lambda j: (-key_row[j], sign * j))


def np_pl_rows(x, k, ties="index_ascending"):
  x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
  out = []
  for xr, kr in zip(x, k):
    xs = xr[pl_order(list(kr), ties)]
    out.append(sum(logsumexp(xs[j:]) - xs[j] for j in range(len(xs))))
  return np.array(out)


def np_pl(x, k, ties="index_ascending"):
  return float(np.mean(np_pl_rows(x, k, ties)))


def np_rankclip(img, txt, s, cross_w, inmodal_w):
  img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
  n = img.shape[0]
  big_l, s_i, s_t = s * img @ txt.T, s * img @ img.T, s * txt @ txt.T
  cross = 0.5 * (np_pl(big_l, big_l.T) + np_pl(big_l.T, big_l)) / n
  inmodal = 0.5 * (np_pl(s_i, s_t) + np_pl(s_t, s_i)) / n
  clip = np_clip_loss(img, txt, s)
  return clip + cross_w * cross + inmodal_w * inmodal, clip, cross, inmodal


def central_fd(f, arrays, eps=1e-5):
  """Central finite differences of scalar f(*arrays) (float64) w.r.t. every entry of every array."""
  arrays = [np.array(a, np.float64) for a in arrays]
  grads = []
  for a in arrays:
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
      old = a[idx]
      a[idx] = old + eps
      plus = f(*arrays)
      a[idx] = old - eps
      minus = f(*arrays)
      a[idx] = old
      g[idx] = (plus - minus) / (2 * eps)
    grads.append(g)
  return grads


# ------------------------------------------------------------------ independent jax references


def jax_pl_reference(x, k):
  """argsort + take_along_axis + a python loop of suffix logsumexps (no lax.sort, no cumlogsumexp)."""
  order = jnp.argsort(-k, axis=1, stable=True)
  xs = jnp.take_along_axis(x, order, axis=1)
  n = x.shape[1]
  suffix = jnp.stack([jax.nn.logsumexp(xs[:, j:], axis=1) for j in range(n)], axis=1)
  return jnp.mean(jnp.sum(suffix - xs, axis=1))


def jax_rankclip_reference(img, txt, s, cross_w, inmodal_w):
  n = img.shape[0]
  big_l = s * jnp.einsum("id,jd->ij", img, txt)
  s_i = s * jnp.einsum("id,jd->ij", img, img)
  s_t = s * jnp.einsum("id,jd->ij", txt, txt)
  labels = jnp.arange(n)
  clip = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(big_l, labels).mean() +
                optax.softmax_cross_entropy_with_integer_labels(big_l.T, labels).mean())
  cross = 0.5 * (jax_pl_reference(big_l, big_l.T) + jax_pl_reference(big_l.T, big_l)) / n
  inmodal = 0.5 * (jax_pl_reference(s_i, s_t) + jax_pl_reference(s_t, s_i)) / n
  return clip + cross_w * cross + inmodal_w * inmodal


def naive_eps_pl(x, k, eps=1e-10):
  """The authors' scheme in float32: one row-max shift, cumsum of exps, log(. + eps)."""
  x, k = np.asarray(x, np.float32), np.asarray(k, np.float32)
  xs = np.take_along_axis(x, np.argsort(-k, axis=1, kind="stable"), axis=1)
  xs = xs - xs.max(axis=1, keepdims=True)
  cums = np.flip(np.cumsum(np.flip(np.exp(xs), axis=1), axis=1), axis=1)
  return float(np.mean(np.sum(np.log(cums + np.float32(eps)) - xs, axis=1)))


# -------------------------------------------------------------------------------- clip_loss


def test_clip_loss_value_matches_float64_numpy():
  img, txt = unit_rows(0, 8), unit_rows(1, 8)
  for s in (1.0, SCALE, 100.0):
    got = losses.clip_loss(img, txt, jnp.float32(s))
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), np_clip_loss(img, txt, s), rtol=2e-6)


def test_clip_loss_gradients_match_optax_and_finite_differences():
  img, txt = unit_rows(2, 6), unit_rows(3, 6)
  s = jnp.float32(SCALE)

  def optax_ref(i, t, s):
    logits, labels = s * i @ t.T, jnp.arange(i.shape[0])
    return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() +
                  optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())

  got = jax.grad(losses.clip_loss, argnums=(0, 1, 2))(img, txt, s)
  want = jax.grad(optax_ref, argnums=(0, 1, 2))(img, txt, s)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
  fd = central_fd(np_clip_loss, [img, txt, np.float64(SCALE)])
  for g, w in zip(got, fd):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5)
  assert abs(float(got[2])) > 1e-3  # the scale really receives a gradient


# ------------------------------------------------------------------------ plackett_luce_nll


def test_pl_matches_bruteforce_on_random_lists():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, 7)).astype(np.float32) * 3
  k = rng.normal(size=(5, 7)).astype(np.float32)
  rows = losses.plackett_luce_nll_rows(x, k)
  assert rows.shape == (5,)
  np.testing.assert_allclose(np.asarray(rows), np_pl_rows(x, k), rtol=1e-5)
  np.testing.assert_allclose(float(losses.plackett_luce_nll(x, k)), np_pl(x, k), rtol=1e-5)


def test_pl_stable_for_widely_spread_logits_where_naive_eps_fails():
  # Logits as at s = 100: 100 * cosine similarities, spread over up to ~200.
  img, txt = unit_rows(5, 16), unit_rows(6, 16)
  x = (100.0 * img @ txt.T).astype(np.float32)
  assert x.max() - x.min() > 120
  other_key = (img @ img.T).astype(np.float32)
  for k in (x, other_key):  # key = scores puts the lowest logits alone in the last suffixes
    want = np_pl(x, k)
    got = float(losses.plackett_luce_nll(x, k))
    np.testing.assert_allclose(got, want, rtol=1e-5)
  # The single-shift + epsilon scheme clamps log-suffix terms at log(eps) ~ -23: badly wrong here
  # (about 678 instead of 1.5 for key = scores; 906 instead of 818 for the other key).
  for k in (x, other_key):
    assert abs(naive_eps_pl(x, k) - np_pl(x, k)) > 10.0


def test_pl_ties_broken_by_index_ascending_deterministically():
  rng = np.random.default_rng(7)
  x = (rng.normal(size=(6, 9)) * 3).astype(np.float32)
  k = rng.integers(0, 3, size=(6, 9)).astype(np.float32)  # many exact ties
  got = np.asarray(losses.plackett_luce_nll_rows(x, k))
  np.testing.assert_allclose(got, np_pl_rows(x, k, ties="index_ascending"), rtol=1e-5)
  # The rule matters (tied items carry different scores), so this comparison can fail.
  assert np.abs(got - np_pl_rows(x, k, ties="index_descending")).max() > 1e-2
  # Deterministic: repeated, jitted and per-row calls agree bit for bit.
  again = np.asarray(losses.plackett_luce_nll_rows(x, k))
  jitted = np.asarray(jax.jit(losses.plackett_luce_nll_rows)(x, k))
  one_by_one = np.concatenate(
      [np.asarray(losses.plackett_luce_nll_rows(x[i:i + 1], k[i:i + 1])) for i in range(6)])
  np.testing.assert_array_equal(got, again)
  np.testing.assert_array_equal(got, jitted)
  np.testing.assert_array_equal(got, one_by_one)
  # Signed zeros are a tie too (ordered by index), not -0 < +0.
  xz = np.array([[1.0, 2.0, 3.0]], np.float32)
  kz = np.array([[-0.0, 0.0, -0.0]], np.float32)
  np.testing.assert_allclose(float(losses.plackett_luce_nll(xz, kz)),
                             np_pl(xz, np.zeros_like(kz)), rtol=1e-6)


def test_pl_matches_rax_listmle():
  # rax.listmle_loss sorts by labels descending, sums the per-position NLL over the list and, with
  # the default reduce_fn=jnp.mean, averages over lists; where=None means every item is valid.
  rng = np.random.default_rng(8)
  x = (rng.normal(size=(4, 10)) * 5).astype(np.float32)
  k = rng.permutation(40).reshape(4, 10).astype(np.float32)  # distinct keys: no tie convention
  np.testing.assert_allclose(float(losses.plackett_luce_nll(x, k)),
                             float(rax.listmle_loss(x, k)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(losses.plackett_luce_nll_rows(x, k)),
                             np.asarray(rax.listmle_loss(x, k, reduce_fn=None)), rtol=1e-6)
  # The gradient w.r.t. the scores too (what training uses): its entries reach O(0.1), so a sign
  # error, a lost 1/4 (the mean over the 4 lists) or a gradient-only bug is far outside atol 1e-6.
  got = np.asarray(jax.jit(jax.grad(losses.plackett_luce_nll))(x, k))  # jitted: eager is slower
  want = np.asarray(jax.jit(jax.grad(rax.listmle_loss))(x, k))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pl_gradients_match_argsort_reference_and_key_gets_none():
  rng = np.random.default_rng(9)
  x = (rng.normal(size=(5, 8)) * 4).astype(np.float32)
  k = rng.normal(size=(5, 8)).astype(np.float32)
  got = jax.grad(losses.plackett_luce_nll)(x, k)
  want = jax.jit(jax.grad(jax_pl_reference))(x, k)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  fd, = central_fd(lambda xx: np_pl(xx, k), [x])
  np.testing.assert_allclose(np.asarray(got), fd, rtol=1e-4, atol=1e-6)
  key_grad = jax.grad(losses.plackett_luce_nll, argnums=1)(x, k)
  np.testing.assert_array_equal(np.asarray(key_grad), np.zeros_like(k))


def test_pl_upcasts_low_precision_inputs_and_rows_are_independent():
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.normal(size=(3, 6)) * 20, jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(3, 6)), jnp.float16)
  got = losses.plackett_luce_nll_rows(x, k)
  assert got.dtype == jnp.float32
  want = losses.plackett_luce_nll_rows(x.astype(jnp.float32), k.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_allclose(np.asarray(got), np_pl_rows(np.float32(x), np.float32(k)), rtol=1e-5)
  # Changing row 2 leaves rows 0-1 untouched: no cross-row normalisation.
  x2 = x.at[2].set(x[2] * 3)
  k2 = k.at[2].set(-k[2])
  got2 = losses.plackett_luce_nll_rows(x2, k2)
  np.testing.assert_array_equal(np.asarray(got2[:2]), np.asarray(got[:2]))
  assert float(got2[2]) != float(got[2])


# ---------------------------------------------------------------------------- rankclip_loss


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (1 / 16, 0.125)])
def test_rankclip_value_matches_float64_numpy(weights):
  img, txt = unit_rows(11, 8), unit_rows(12, 8)
  cw, iw = weights
  loss, m = losses.rankclip_loss(img, txt, jnp.float32(SCALE), cross_weight=cw, inmodal_weight=iw)
  want, clip, cross, inmodal = np_rankclip(img, txt, SCALE, cw, iw)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(m["clip_loss"]), clip, rtol=1e-5)
  # Unweighted terms are reported whatever the weights (including 0).
  np.testing.assert_allclose(float(m["cross_rank_loss"]), cross, rtol=1e-5)
  np.testing.assert_allclose(float(m["inmodal_rank_loss"]), inmodal, rtol=1e-5)
  assert float(m["cross_weight"]) == pytest.approx(cw)
  assert float(m["inmodal_weight"]) == pytest.approx(iw)
  assert set(m) == {"loss", "clip_loss", "cross_rank_loss", "inmodal_rank_loss", "cross_weight",
                    "inmodal_weight", "i2t_top1", "t2i_top1"}
  assert all(v.shape == () for v in m.values())


def test_rankclip_gradients_match_independent_reference():
  img, txt = unit_rows(13, 6), unit_rows(14, 6)
  s, cw, iw = jnp.float32(SCALE), 0.5, 0.25
  ours = lambda i, t, s: losses.rankclip_loss(i, t, s, cross_weight=cw, inmodal_weight=iw)[0]
  ref = lambda i, t, s: jax_rankclip_reference(i, t, s, cw, iw)
  np.testing.assert_allclose(float(ours(img, txt, s)), float(ref(img, txt, s)), rtol=1e-5)
  got = jax.grad(ours, argnums=(0, 1, 2))(img, txt, s)
  want = jax.jit(jax.grad(ref, argnums=(0, 1, 2)))(img, txt, s)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
  # The ranking terms contribute to every gradient (else the check above would be vacuous).
  clip_grads = jax.grad(losses.clip_loss, argnums=(0, 1, 2))(img, txt, s)
  for g, c in zip(got, clip_grads):
    assert np.abs(np.asarray(g) - np.asarray(c)).max() > 1e-3
  # And the stop-gradient'ed keys give the true derivative (the order is locally constant):
  # directional central differences of the float64 numpy reference along random directions.
  rng = np.random.default_rng(20)
  eps = 1e-5
  for _ in range(3):
    v = [rng.normal(size=img.shape), rng.normal(size=txt.shape), rng.normal()]
    f = lambda sign: np_rankclip(img + sign * eps * v[0], txt + sign * eps * v[1],
                                 SCALE + sign * eps * v[2], cw, iw)[0]
    fd = (f(1) - f(-1)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(got, v))
    np.testing.assert_allclose(analytic, fd, rtol=1e-4)


def test_rankclip_zero_weights_equal_clip_loss_and_nonzero_weights_change_it():
  img, txt = unit_rows(15, 8), unit_rows(16, 8)
  s = jnp.float32(SCALE)
  clip = losses.clip_loss(img, txt, s)
  zero, m = losses.rankclip_loss(img, txt, s, cross_weight=0.0, inmodal_weight=0.0)
  assert float(zero) == float(clip)
  zero_arr, _ = losses.rankclip_loss(img, txt, s, cross_weight=jnp.float32(0.0),
                                     inmodal_weight=jnp.float32(0.0))
  assert float(zero_arr) == float(clip)
  assert float(m["cross_rank_loss"]) > 0 and float(m["inmodal_rank_loss"]) > 0
  cross_only, _ = losses.rankclip_loss(img, txt, s, cross_weight=1.0, inmodal_weight=0.0)
  inmodal_only, _ = losses.rankclip_loss(img, txt, s, cross_weight=0.0, inmodal_weight=1.0)
  both, _ = losses.rankclip_loss(img, txt, s, cross_weight=1.0, inmodal_weight=1.0)
  assert float(cross_only) > float(clip) and float(inmodal_only) > float(clip)
  np.testing.assert_allclose(float(both), float(clip) + float(m["cross_rank_loss"]) +
                             float(m["inmodal_rank_loss"]), rtol=1e-6)


def test_rankclip_jit_with_traced_weights_and_schedule():
  img, txt = unit_rows(17, 8), unit_rows(18, 8)
  s = jnp.float32(SCALE)
  traces = []

  @jax.jit
  def step_fn(i, t, s, step, cw, iw):
    traces.append(1)
    mult = losses.ranking_weight_multiplier(step, 300, "ramp")
    return jax.value_and_grad(
        lambda s: losses.rankclip_loss(i, t, s, cross_weight=cw * mult,
                                       inmodal_weight=iw * mult), has_aux=True)(s)

  for step, cw, iw in [(0, 1 / 16, 1 / 16), (150, 1 / 16, 0.0), (250, 0.5, 0.25)]:
    (loss, m), g = step_fn(img, txt, s, jnp.int32(step), jnp.float32(cw), jnp.float32(iw))
    mult = min(3 * step / 300, 2.0)
    eager, _ = losses.rankclip_loss(img, txt, s, cross_weight=cw * mult, inmodal_weight=iw * mult)
    np.testing.assert_allclose(float(loss), float(eager), rtol=1e-6)
    np.testing.assert_allclose(float(m["cross_weight"]), cw * mult, rtol=1e-6)
    np.testing.assert_allclose(float(m["inmodal_weight"]), iw * mult, rtol=1e-6)
    assert np.isfinite(float(g))
  assert len(traces) == 1  # weights and step are traced values, not baked-in constants


def test_rankclip_top1_metrics():
  img = unit_rows(19, 6)
  _, m = losses.rankclip_loss(img, img, SCALE, cross_weight=0.0, inmodal_weight=0.0)
  assert float(m["i2t_top1"]) == 1.0 and float(m["t2i_top1"]) == 1.0
  # Texts 0 and 1 swapped: images 0, 1 (and texts 0, 1) now prefer the other's partner.
  txt = img[[1, 0, 2, 3, 4, 5]]
  _, m = losses.rankclip_loss(img, txt, SCALE, cross_weight=0.0, inmodal_weight=0.0)
  assert float(m["i2t_top1"]) == pytest.approx(4 / 6)
  assert float(m["t2i_top1"]) == pytest.approx(4 / 6)
  # A collapsed model (all logits tied) scores 0, not a lucky 1.
  same = np.tile(img[:1], (6, 1))
  _, m = losses.rankclip_loss(same, same, SCALE, cross_weight=0.0, inmodal_weight=0.0)
  assert float(m["i2t_top1"]) == 0.0 and float(m["t2i_top1"]) == 0.0


# ------------------------------------------------------------------ ranking_weight_multiplier


def test_ranking_weight_multiplier_schedules():
  total = 300
  for step, want in [(0, 0.0), (50, 0.5), (100, 1.0), (200, 2.0), (300, 2.0), (1000, 2.0),
                     (-5, 0.0)]:
    got = losses.ranking_weight_multiplier(step, total, "ramp")
    assert got.dtype == jnp.float32 and got.shape == ()
    assert float(got) == want, (step, float(got))
  jitted = jax.jit(lambda st: losses.ranking_weight_multiplier(st, total, "ramp"))
  assert float(jitted(jnp.int32(100))) == 1.0
  assert float(jitted(jnp.int32(25))) == 0.25
  for step in (0, 77, 10**6):
    assert float(losses.ranking_weight_multiplier(step, total, "constant")) == 1.0
  with pytest.raises(ValueError, match="ramp.*constant"):
    losses.ranking_weight_multiplier(0, total, "cosine")
  with pytest.raises(ValueError, match="total_steps"):
    losses.ranking_weight_multiplier(0, 0, "ramp")
