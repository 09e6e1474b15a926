"""Linear probe: the solver reaches the optimum of the documented objective (checked with numpy and,
when installed, scikit-learn), and the probe's l2 selection, refit and absent classes."""

import importlib
import os

import numpy as np
import pytest

from rankclip_jax.evaluation.linear_probe import (DEFAULT_L2_GRID, fit_logistic_regression,
                                                  linear_probe, stratified_split)

# The solver runs many small iterations: running costs more than compiling (conftest.py).
pytestmark = pytest.mark.usefixtures("optimized_xla")


def blobs(n, d, c, scale, seed):
  """Gaussian classes: centres N(0, scale^2) per dimension, unit noise, labels 0..c-1 in turn."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d)) * scale
  y = np.arange(n) % c
  return centers[y] + rng.normal(size=(n, d)), y


def softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def objective_and_grad(w, b, x, y, l2):
  """The module's objective and its gradient, derived by hand, in float64."""
  n, c = len(y), w.shape[1]
  p = softmax(x @ w + b)
  onehot = np.eye(c)[y]
  f = -np.mean(np.log(p[np.arange(n), y])) + 0.5 * l2 * np.sum(w * w)
  return f, x.T @ (p - onehot) / n + l2 * w, (p - onehot).mean(axis=0)


def newton_reference(x, y, c, l2, steps=30):
  """Damped Newton on theta = [W; b] (rows: features then bias), float64. The Hessian is singular
  along a common shift of the biases (which changes nothing), so steps use the pseudo-inverse."""
  n, d = x.shape
  xt = np.concatenate([x, np.ones((n, 1))], axis=1)
  theta = np.zeros((d + 1, c))
  ridge = np.kron(np.diag(np.r_[np.ones(d), 0.0]), np.eye(c)) * l2
  for _ in range(steps):
    w, b = theta[:d], theta[d]
    f, gw, gb = objective_and_grad(w, b, x, y, l2)
    p = softmax(x @ w + b)
    h = sum(np.kron(np.outer(xi, xi), np.diag(pi) - np.outer(pi, pi)) for xi, pi in zip(xt, p))
    step = -(np.linalg.pinv(h / n + ridge) @ np.concatenate([gw, gb[None]]).ravel()).reshape(
        d + 1, c)
    t = 1.0
    while objective_and_grad(theta[:d] + t * step[:d], theta[d] + t * step[d], x, y, l2)[0] > f:
      t /= 2
    theta = theta + t * step
  return theta[:d], theta[d]


def test_separable_blobs_are_classified_perfectly():
  x, y = blobs(400, 8, 4, 6.0, seed=0)
  r = linear_probe(x[:200], y[:200], x[200:], y[200:], 4)
  assert r["top1"] == 1.0
  assert set(r["val_top1_per_l2"]) == set(DEFAULT_L2_GRID)
  assert r["chosen_l2"] in DEFAULT_L2_GRID and r["absent_classes"] == []


def test_solution_is_the_optimum_of_the_objective():
  x, y = blobs(60, 3, 3, 1.0, seed=1)  # overlapping classes: a finite, interesting optimum
  x = (x - x.mean(0)) / x.std(0)
  l2 = 0.05
  w, b = fit_logistic_regression(x, y, 3, l2, tol=1e-6)
  # Converged: the gradient of the objective, by hand in float64, vanishes at the solution.
  f, gw, gb = objective_and_grad(w.astype(np.float64), b.astype(np.float64), x, y, l2)
  assert np.abs(gw).max() < 1e-5 and np.abs(gb).max() < 1e-5
  # An independent solver (Newton in float64) reaches the same model and the same minimum.
  w_ref, b_ref = newton_reference(x, y, 3, l2)
  f_ref, gw_ref, _ = objective_and_grad(w_ref, b_ref, x, y, l2)
  assert np.abs(gw_ref).max() < 1e-10
  assert f == pytest.approx(f_ref, rel=1e-6)
  np.testing.assert_allclose(w, w_ref, atol=2e-5)  # W is unique (strictly convex in W)
  grid = np.random.default_rng(2).normal(size=(50, 3)) * 2
  np.testing.assert_allclose(softmax(grid @ w + b), softmax(grid @ w_ref + b_ref), atol=1e-5)


def test_matches_scikit_learn():
  # scikit-learn is in requirements.txt: in CI (.ci/run sets RANKCLIP_JAX_CI=1) a missing one fails.
  if os.environ.get("RANKCLIP_JAX_CI"):
    sklearn_linear = importlib.import_module("sklearn.linear_model")
  else:
    sklearn_linear = pytest.importorskip(
        "sklearn.linear_model", reason="scikit-learn is not installed in this venv; the numpy "
        "gradient check and Newton reference above cover the optimum")
  x, y = blobs(60, 3, 3, 1.0, seed=1)
  x = (x - x.mean(0)) / x.std(0)
  l2 = 0.05
  w, b = fit_logistic_regression(x, y, 3, l2, tol=1e-6)
  # sklearn minimises C * sum_i CE_i + ||W||^2 / 2 = n * C * (our objective) when C = 1 / (n l2).
  ref = sklearn_linear.LogisticRegression(C=1.0 / (len(y) * l2), tol=1e-10, max_iter=10000)
  ref.fit(x, y)
  grid = np.random.default_rng(2).normal(size=(50, 3)) * 2
  np.testing.assert_allclose(softmax(grid @ w + b), ref.predict_proba(grid), atol=1e-4)


def test_noise_dominated_features_choose_a_larger_l2():
  # 10 classes whose centres differ by 0.25 noise std in each of 100 dimensions: 24 training
  # examples per class interpolate the noise unless the weights are kept small.
  x, y = blobs(600, 100, 10, 0.25, seed=0)
  r = linear_probe(x[:300], y[:300], x[300:], y[300:], 10)
  v = r["val_top1_per_l2"]
  assert r["chosen_l2"] > min(DEFAULT_L2_GRID)
  assert v[r["chosen_l2"]] >= v[min(DEFAULT_L2_GRID)] + 0.05
  assert v[r["chosen_l2"]] == max(v.values())
  # Ties go to the larger l2: the first of the best in descending order.
  assert r["chosen_l2"] == max(l2 for l2, a in v.items() if a == max(v.values()))
  unregularised = linear_probe(x[:300], y[:300], x[300:], y[300:], 10, l2_grid=(1e-6,))
  assert unregularised["val_top1_per_l2"] == {}
  assert r["top1"] > unregularised["top1"] + 0.05


def test_class_without_training_examples():
  x, y = blobs(400, 6, 4, 6.0, seed=3)
  train = y[:200] != 3  # class 3 only in the test half
  w, b = fit_logistic_regression(x[:200][train], y[:200][train], 4, 1e-2)
  assert np.all(np.isfinite(w)) and np.all(w[:, 3] == 0)
  assert b[3] == -np.inf and np.all(np.isfinite(b[:3]))
  r = linear_probe(x[:200][train], y[:200][train], x[200:], y[200:], 4)
  assert r["absent_classes"] == [3]
  # Everything else is separable: the test examples of class 3 are exactly the errors.
  assert r["top1"] == pytest.approx(np.mean(y[200:] != 3))


def test_stratified_split_and_input_errors():
  y = np.array([0] * 10 + [1] * 5 + [2])
  tr, va = stratified_split(y, 0.2, seed=0)
  assert np.bincount(y[va], minlength=3).tolist() == [2, 1, 0]  # class 2 keeps its only example
  assert sorted(np.r_[tr, va].tolist()) == list(range(16))
  assert not np.array_equal(va, stratified_split(y, 0.2, seed=1)[1])
  x = np.zeros((16, 2))
  with pytest.raises(ValueError, match="no validation examples"):
    linear_probe(x[:3], np.arange(3), x, y, 3)
  with pytest.raises(ValueError, match="Labels must be integers in \\[0, 2\\)"):
    fit_logistic_regression(x, y, 2, 1.0)
  with pytest.raises(ValueError, match="same D"):
    linear_probe(x, y, np.zeros((4, 3)), y[:4], 3)
