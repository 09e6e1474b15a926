"""Linear probe on frozen image features: the protocol of CLIP's, CyCLIP's and RankCLIP's tables.

Multinomial logistic regression on the features of a frozen encoder; the L2 strength is chosen on
a validation split carved out of the training features, the model is refit on all of them with that
strength, and top-1 accuracy on the test features is reported.

Objective, for features x_i (standardised, below), labels y_i, weights W [D, C], biases b [C]:

    f(W, b) = (1/n) sum_i [ logsumexp_c (x_i W_c + b_c) - (x_i W_{y_i} + b_{y_i}) ] + l2/2 ||W||^2

with the biases not penalised. This is scikit-learn's `LogisticRegression(C=1 / (n * l2))`
(multinomial, lbfgs solver, which does not penalise the intercept): sklearn minimises
C * sum_i CE_i + ||W||^2 / 2, which is n * C times f. (Checked once against scikit-learn 1.9.1:
probabilities agree to 3e-6; tests/test_linear_probe.py repeats it where sklearn is installed.)

Features are standardised (each dimension to mean 0, std 1, with the mean and std of the features
the model is fit on; constant dimensions are only centred) so one l2 grid means the same for
every encoder, whatever the scale of its features.

Solver: L-BFGS (`optax.lbfgs`, memory 10, with its zoom line search satisfying the strong Wolfe
conditions), full batch, float32, inside one jitted `lax.while_loop`. The objective is smooth and
convex (strongly convex in W for l2 > 0), and L-BFGS reaches its optimum without the (D*C)^2
Hessian that Newton's method needs (10 GB in float32 for 512-d features and 100 classes, cubic in
cost to factor), and in far fewer steps than gradient descent on ill-conditioned (small-l2)
problems. The biases start at the log class frequencies (the optimum when W = 0), which matters
for large l2: W is then nearly 0 and the unpenalised biases are the badly conditioned part. The
solver stops when the largest entry of the gradient is at most `tol` (absolute, on the gradient of
the mean loss above), when a step leaves the parameters unchanged (float32 precision reached), or
after `max_steps`. On 60..2000 examples, 3..512 dimensions and 3..100 classes it met tol=1e-5 in
6..60 steps for every l2 in 1e-6..1e2. With a tiny l2 on separable features the exact optimum lies
far out, but the loss and its gradient are already tiny on the way there, so the solver stops at a
point that classifies like the optimum without reaching it.

Classes absent from the training labels get W_c = 0 and b_c = -inf: no optimum exists for them
(the loss keeps falling as b_c -> -inf), so they are left out of the softmax while fitting and are
never predicted; test examples of such a class count as errors.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rankclip_jax.evaluation import metrics as M

DEFAULT_L2_GRID = tuple(10.0 ** k for k in range(-6, 3))  # 1e-06, 1e-05, ..., 100.0


def _objective(params, x, y, present, l2):
  w, b = params
  logits = jnp.where(present, x @ w + b, -jnp.inf)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))
  return nll + 0.5 * l2 * jnp.sum(w * w)


@functools.partial(jax.jit, static_argnames=("memory_size",))
def _lbfgs(x, y, present, l2, w0, b0, max_steps, tol, memory_size=10):
  fun = functools.partial(_objective, x=x, y=y, present=present, l2=l2)
  solver = optax.lbfgs(memory_size=memory_size,
                       linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30))
  value_and_grad = optax.value_and_grad_from_state(fun)

  def grad_max(grad):
    return jnp.maximum(jnp.max(jnp.abs(grad[0])), jnp.max(jnp.abs(grad[1])))

  def cond(carry):
    _, _, step, gmax, moved = carry
    return (step < max_steps) & (gmax > tol) & moved

  def body(carry):
    params, state, step, _, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    new_params = optax.apply_updates(params, updates)
    moved = jnp.any(new_params[0] != params[0]) | jnp.any(new_params[1] != params[1])
    new_grad = optax.tree_utils.tree_get(state, "grad")
    return new_params, state, step + 1, grad_max(new_grad), moved

  params = (w0, b0)
  carry = (params, solver.init(params), jnp.int32(0), grad_max(jax.grad(fun)(params)),
           jnp.bool_(True))
  params, _, _, _, _ = jax.lax.while_loop(cond, body, carry)
  return params


def fit_logistic_regression(x, y, num_classes: int, l2: float, *, max_steps: int = 1000,
                            tol: float = 1e-5, init: tuple[np.ndarray, np.ndarray] | None = None):
  """Minimises the module's objective f(W, b) on x [N, D] (used as given: standardise first) and
  integer labels y [N] in [0, num_classes). Returns W float32 [D, C] and b float32 [C] (logits
  x @ W + b), with b = -inf for the classes absent from y.
  `init` = (W, b) warm-starts the solver (absent classes' entries are ignored).
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
    raise ValueError(f"Expected x [N, D] and y [N] with N > 0; got {x.shape} and {y.shape}.")
  if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"Labels must be integers in [0, {num_classes}).")
  if not l2 >= 0:
    raise ValueError(f"l2 must be >= 0, got {l2}.")
  counts = np.bincount(y, minlength=num_classes)
  present = counts > 0
  d = x.shape[1]
  if init is None:  # the optimum for W = 0: biases at the log class frequencies
    w0 = np.zeros((d, num_classes), np.float32)
    b0 = np.log(np.maximum(counts, 1) / len(y)).astype(np.float32)
  else:
    w0, b0 = (np.asarray(v, np.float32) for v in init)
    if w0.shape != (d, num_classes) or b0.shape != (num_classes,):
      raise ValueError(f"init must be W [{d}, {num_classes}] and b [{num_classes}].")
  w0 = np.where(present, np.nan_to_num(w0, posinf=0.0, neginf=0.0), 0.0)
  b0 = np.where(present, np.nan_to_num(b0, posinf=0.0, neginf=0.0), 0.0)
  w, b = _lbfgs(x, y.astype(np.int32), present, np.float32(l2), w0, b0, np.int32(max_steps),
                np.float32(tol))
  w = np.asarray(w, np.float32)
  b = np.where(present, np.asarray(b, np.float32), -np.inf).astype(np.float32)
  return w, b


def _standardizer(x: np.ndarray):
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return lambda z: ((np.asarray(z, np.float64) - mean) / std).astype(np.float32)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, val indices), both sorted: round(val_fraction * n_c) random examples of each
  class c go to val, but never a class's last example, so every class of y stays in train."""
  y = np.asarray(y)
  rng = np.random.default_rng(seed)
  val = []
  for c in np.unique(y):
    idx = np.flatnonzero(y == c)
    k = min(int(np.floor(val_fraction * len(idx) + 0.5)), len(idx) - 1)
    val.append(rng.permutation(idx)[:k])
  val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
  return np.setdiff1d(np.arange(len(y)), val), val


def _top1(w, b, x, y) -> float:
  return M.topk_accuracy(x @ w + b, y, ks=(1,))[1]


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, *,
                 val_fraction: float = 0.2, l2_grid: Sequence[float] = DEFAULT_L2_GRID,
                 seed: int = 0, max_steps: int = 1000, tol: float = 1e-5) -> dict:
  """Linear-probe top-1 accuracy of frozen features.

  1. Split a validation set off the training features, stratified by class (`stratified_split`,
     seeded by `seed`).
  2. For each l2 of the grid, largest first (each fit warm-starts the next), fit on the rest,
     standardised with its own statistics, and measure validation top-1.
  3. Choose the l2 with the best validation top-1; ties go to the larger l2 (the simpler model).
  4. Refit on all training features (standardised with their statistics) with that l2 and report
     test top-1 (ties in the logits counted against the model, as in metrics.py).

  Returns {"top1", "chosen_l2", "val_top1_per_l2": {l2: val top-1}, "absent_classes": classes
  with no training example (never predicted; their test examples count as errors)}.
  """
  train_x, test_x = np.asarray(train_x), np.asarray(test_x)
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"Features must be [N, D] with the same D; got {train_x.shape}, "
                     f"{test_x.shape}.")
  if not l2_grid:
    raise ValueError("l2_grid is empty.")
  grid = sorted({float(v) for v in l2_grid}, reverse=True)
  val_scores: dict[float, float] = {}
  chosen = grid[0]
  init = None
  if len(grid) > 1:
    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    if len(val_idx) == 0:
      raise ValueError(f"val_fraction={val_fraction} leaves no validation examples among "
                       f"{len(train_y)} to choose l2 from {len(grid)} values.")
    standardize = _standardizer(train_x[fit_idx])
    xf, xv = standardize(train_x[fit_idx]), standardize(train_x[val_idx])
    best = -1.0
    for l2 in grid:  # descending: on a tie the larger l2, seen first, is kept
      init = fit_logistic_regression(xf, train_y[fit_idx], num_classes, l2, max_steps=max_steps,
                                     tol=tol, init=init)
      val_scores[l2] = _top1(*init, xv, train_y[val_idx])
      if val_scores[l2] > best:
        best, chosen, best_init = val_scores[l2], l2, init
    init = best_init
  standardize = _standardizer(train_x)
  w, b = fit_logistic_regression(standardize(train_x), train_y, num_classes, chosen,
                                 max_steps=max_steps, tol=tol, init=init)
  absent = np.flatnonzero(np.bincount(train_y, minlength=num_classes) == 0)
  return {"top1": _top1(w, b, standardize(test_x), test_y), "chosen_l2": chosen,
          "val_top1_per_l2": val_scores, "absent_classes": absent.tolist()}
