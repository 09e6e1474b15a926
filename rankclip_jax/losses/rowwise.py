"""One engine for every batch-coupled loss: sums of per-row terms, sharded and/or row-chunked.

Every loss in this package (CLIP, the RankCLIP ranking terms, CyCLIP's cyclic terms, SigLIP) is a sum
over the N pairs of the batch of a term that needs only *that row* of each N x N matrix it uses
(row i of L = s I T^T, of L^T = s T I^T, of S_I = s I I^T, of S_T = s T T^T). So each loss is written
once, as a function of a block of R rows against all N columns, and `sum_rows` runs it in one of
three ways that give the same value and gradient (to float tolerance):

1. plain (`axis_name=None`): the local arrays are the whole batch; one block of N rows.
2. sharded (`axis_name="data"` or a tuple of mesh axes, called inside `shard_map` with each device
   holding its own rows): the other devices' embeddings are all-gathered (with gradient: the
   transpose of all_gather is a reduce-scatter), each device computes only its rows, and the row sums
   are psum'ed. Per-device memory is (N/P) x N instead of N x N.
3. row-chunked (`chunk_size=R`): the local rows are processed R at a time in a `lax.scan` whose body
   is rematerialised (`jax.checkpoint`), so the backward pass recomputes each R x N block instead of
   storing it: peak memory O(R x N). Composes with 2.

Rows of L^T are computed directly as s * T_i . I (not by transposing L), so the plain and sharded
strategies see bit-identical key rows: ranking ties are then broken identically in every strategy.
"""

from __future__ import annotations

import functools
from typing import Callable, Hashable, Sequence, Union

import jax
import jax.numpy as jnp

AxisName = Union[Hashable, Sequence[Hashable], None]

# row_fn(rows, columns) -> dict of scalars, each the SUM over the block's rows of some per-row term.
#   rows:    dict with "image" [R, D], "text" [R, D], "index" [R] int32 (global row = column index
#            of the row's own pair), and sum_rows' `extra` arrays, [R, ...] each
#   columns: dict with "image" [N, D], "text" [N, D] (the whole global batch), and the `extra`
#            arrays named in `gathered`, [N, D] each
RowFn = Callable[[dict, dict], dict]


def _gloo_slow_reduce_scatter() -> bool:
  """Whether this run's collectives go over Gloo between CPU processes.

  There, once a reduce-scatter has run, every later large all-reduce of the process is slow: measured
  on jax 0.10 with 2 processes x 2 CPU devices, a 6 MB all-reduce (a tiny model's gradient) took
  ~20 ms before the first reduce-scatter and ~6 s after it. The gradient of all_gather is a
  reduce-scatter, so `gather_rows` gives it another backward there.
  """
  return jax.process_count() > 1 and jax.default_backend() == "cpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gather_rows_psum_backward(x, axis_name):
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def _gather_rows_fwd(x, axis_name):
  return _gather_rows_psum_backward(x, axis_name), None


def _gather_rows_bwd(axis_name, _, cotangent):
  # The transpose of a tiled all_gather, as a psum and this device's slice of it (the same sums as
  # reduce-scatter's, moving the whole [N, D] cotangent instead of its shards).
  n = cotangent.shape[0] // jax.lax.psum(1, axis_name)
  total = jax.lax.psum(cotangent, axis_name)
  start = jax.lax.axis_index(axis_name) * n
  return (jax.lax.dynamic_slice_in_dim(total, start, n, axis=0),)


_gather_rows_psum_backward.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def gather_rows(x, axis_name: AxisName):
  """all_gather(x, axis_name, axis=0, tiled=True): [n, ...] local rows -> [N, ...], with gradient.

  Its gradient is a reduce-scatter, except between CPU processes (Gloo; see
  `_gloo_slow_reduce_scatter`), where it is a psum and a slice.
  """
  if _gloo_slow_reduce_scatter():
    return _gather_rows_psum_backward(x, axis_name)
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def gather_columns(image_emb, text_emb, axis_name: AxisName):
  """(all images [N, D], all texts [N, D], global index of the local rows [n])."""
  n = image_emb.shape[0]
  local = jnp.arange(n, dtype=jnp.int32)
  if axis_name is None:
    return image_emb, text_emb, local
  all_image = gather_rows(image_emb, axis_name)
  all_text = gather_rows(text_emb, axis_name)
  offset = jax.lax.axis_index(axis_name).astype(jnp.int32) * n
  return all_image, all_text, local + offset


def sum_rows(row_fn: RowFn, image_emb: jax.Array, text_emb: jax.Array, *,
             axis_name: AxisName = None, chunk_size: int | None = None,
             extra: dict | None = None, gathered: tuple[str, ...] = ()) -> tuple[dict, int]:
  """Runs `row_fn` over all rows of the global batch; returns (dict of global sums, global N).

  image_emb, text_emb: [n, D] local rows (the whole batch when axis_name is None).
  chunk_size: rows per block (must divide n); None or 0 processes all local rows at once.
  extra: more local per-row arrays {name: [n, ...]} (a second caption's embeddings, per-row
    weights), given to row_fn in `rows` under their names, in the same blocks as the embeddings;
    those named in `gathered` ([n, D] embeddings) are also all-gathered, with gradient, into
    `columns`.
  """
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(
        f"image_emb and text_emb must both be [N, D]; got {image_emb.shape} and {text_emb.shape}.")
  n = image_emb.shape[0]
  all_image, all_text, index = gather_columns(image_emb, text_emb, axis_name)
  columns = {"image": all_image, "text": all_text}
  rows = {"image": image_emb, "text": text_emb, "index": index}
  for name, x in (extra or {}).items():
    if x.shape[0] != n:
      raise ValueError(f"extra[{name!r}] has {x.shape[0]} rows; the embeddings have {n}.")
    rows[name] = x
    if name in gathered:
      columns[name] = x if axis_name is None else gather_rows(x, axis_name)

  if not chunk_size or chunk_size >= n:
    sums = row_fn(rows, columns)
  else:
    if n % chunk_size:
      raise ValueError(
          f"chunk_size={chunk_size} must divide the number of local rows {n} (the per-device "
          f"batch); set config.loss.chunk_size to a divisor of it, or 0 for no chunking.")
    num_chunks = n // chunk_size
    blocks = jax.tree.map(lambda x: x.reshape(num_chunks, chunk_size, *x.shape[1:]), rows)

    # Rematerialised: the backward pass recomputes the block's R x N matrices from its rows.
    @jax.checkpoint
    def block_sums(block):
      return row_fn(block, columns)

    def body(total, block):
      return jax.tree.map(jnp.add, total, block_sums(block)), None

    first = jax.tree.map(lambda x: x[0], blocks)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(block_sums, first))
    sums, _ = jax.lax.scan(body, zeros, blocks)

  global_n = n
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
    global_n = all_image.shape[0]
  return sums, global_n


def own_column(matrix: jax.Array, index: jax.Array) -> jax.Array:
  """[R, N] rows, [R] global indices -> [R] entries matrix[r, index[r]] (each row's own pair)."""
  return jnp.take_along_axis(matrix, index[:, None], axis=1)[:, 0]


def strictly_best(matrix: jax.Array, index: jax.Array) -> jax.Array:
  """[R] 1.0 where the row's own entry is strictly above every other entry of its row, else 0.0.

  Ties count against the model (a collapsed model scores 0), as in evaluation.metrics.
  """
  own = own_column(matrix, index)
  is_own = jnp.arange(matrix.shape[1])[None, :] == index[:, None]
  others = jnp.max(jnp.where(is_own, -jnp.inf, matrix), axis=1)
  return (own > others).astype(matrix.dtype)
