"""Plackett-Luce (ListMLE) negative log-likelihood of an order given by a key.

For one list, scores `x` and key `k` of length N, let `pi` sort `k` descending. Then

    PL(x; k) = sum_{j=0..N-1} [ logsumexp_{m >= j} x[pi(m)] - x[pi(j)] ]

i.e. the NLL of drawing the items in key order, each draw a softmax over the items not yet drawn.
For [R, N] arrays every row is its own list; `plackett_luce_nll_rows` returns the [R] row values and
`plackett_luce_nll` their mean. Each row depends only on that row of `scores` and `ranking_key`,
so rows can be sharded or chunked freely (no cross-row normalisation).

Conventions:
- The key enters only through the order it induces: it is wrapped in stop_gradient, and the gradient
  with respect to it is exactly zero.
- Ties in the key are broken by original column index ascending (a stable sort on the negated key).
  Note that the value does depend on this rule when tied items have different scores; the rule is
  fixed, so the result is deterministic.
- The suffix logsumexp is `lax.cumlogsumexp(reverse=True)` (pairwise logaddexp, each step stable), so
  no term is clamped however widely the scores spread; there is no epsilon anywhere.
- Computation is in float32 at least: bf16/fp16 inputs are upcast before sorting and summing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


# jit so that eager callers compile once per shape: op-by-op, the scan inside cumlogsumexp (and its
# JVP) dispatches dozens of tiny ops, each compiled separately (seconds on CPU). Inside an outer jit
# this is simply inlined.
@jax.jit
def plackett_luce_nll_rows(scores: jax.Array, ranking_key: jax.Array) -> jax.Array:
  """[R, N] scores, [R, N] key -> [R] per-row Plackett-Luce NLL (see module docstring)."""
  scores = jnp.asarray(scores)
  ranking_key = jnp.asarray(ranking_key)
  if scores.ndim != 2 or scores.shape != ranking_key.shape:
    raise ValueError(
        f"scores and ranking_key must both be [R, N]; got {scores.shape} and {ranking_key.shape}.")
  dtype = jnp.result_type(jnp.float32, scores.dtype, ranking_key.dtype)
  scores = scores.astype(dtype)
  # The key's sorted copy is discarded below, so no gradient could reach it anyway; stop_gradient
  # states the contract explicitly and keeps it if the implementation ever changes.
  neg_key = -jax.lax.stop_gradient(ranking_key.astype(dtype))
  # One multi-operand sort: ascending on -key == descending on key; is_stable keeps equal keys in
  # column order. The scores ride along (their gradient is scattered back by sort's JVP rule).
  _, sorted_scores = jax.lax.sort((neg_key, scores), dimension=1, num_keys=1, is_stable=True)
  # suffix_lse[:, j] = logsumexp(sorted_scores[:, j:]). lax ops reject negative axes, hence axis=1.
  suffix_lse = jax.lax.cumlogsumexp(sorted_scores, axis=1, reverse=True)
  # Each term is the NLL of one draw, >= 0, so summing them loses nothing to cancellation.
  return jnp.sum(suffix_lse - sorted_scores, axis=1)


def plackett_luce_nll(scores: jax.Array, ranking_key: jax.Array) -> jax.Array:
  """[R, N] scores, [R, N] key -> scalar: mean over rows of the per-row Plackett-Luce NLL."""
  return jnp.mean(plackett_luce_nll_rows(scores, ranking_key))
