"""Sharded, batched embedding of evaluation data with a trained TwoTowers model."""

from __future__ import annotations

from typing import Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from rankclip_jax import sharding as shd


def padded_size(n: int, multiple: int = 1) -> int:
  """The number of rows a batch of n (> 0) is padded to before a jitted encoder: the next power of
  two, then a multiple of `multiple` (the device count). Every new batch size is one more
  compilation of a tower, and evaluation's prompt and caption lists and a notebook's calls come in
  many lengths (the synthetic evaluations of a micro run on 8 devices: 16, 24, 32 and 192 prompts
  or captions, rounded 16, 32 and 256: one compilation fewer)."""
  size = 1 << (n - 1).bit_length()
  return size + (-size) % multiple


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """x with its last row repeated up to `size` rows."""
  n = x.shape[0]
  return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)]) if size > n else x


class Embedder:
  """Runs encode_image / encode_text jitted over the mesh: batch split over devices, output
  replicated back to the host. Image batches are padded to a multiple of the device count (an
  evaluation's batches are all of one size), text batches to padded_size."""

  def __init__(self, model, mesh: Mesh):
    self.mesh = mesh
    self._in = shd.batch_sharding(mesh)
    out = shd.replicated(mesh)
    self._image = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"),
                          in_shardings=(None, self._in), out_shardings=out)
    self._text = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_text"),
                         in_shardings=(None, self._in), out_shardings=out)

  def _run(self, fn, params, x: np.ndarray, round_up: bool = False) -> np.ndarray:
    """fn on x's rows, padded to a multiple of the device count (to padded_size if round_up)."""
    n = x.shape[0]
    x = pad_rows(x, padded_size(n, self.mesh.size) if round_up else n + (-n) % self.mesh.size)
    y = fn(params, jax.device_put(x, self._in))
    return np.asarray(jax.device_get(y))[:n]

  def images(self, params, batches: Iterable[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Embeds every real (mask=True) example; returns embeddings and the other per-example fields."""
    embs, extras = [], {}
    for batch in batches:
      mask = np.asarray(batch["mask"])
      embs.append(self._run(self._image, params, batch["image"])[mask])
      for k, v in batch.items():
        if k in ("image", "mask", "text"):
          continue
        v = [x for x, m in zip(v, mask) if m] if isinstance(v, list) else np.asarray(v)[mask]
        extras.setdefault(k, []).append(v)
    out = {k: (sum(v, []) if isinstance(v[0], list) else np.concatenate(v))
           for k, v in extras.items()}
    return np.concatenate(embs), out

  def texts(self, params, tokens: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    chunks = [tokens[i:i + batch_size] for i in range(0, tokens.shape[0], batch_size)]
    return np.concatenate([self._run(self._text, params, c, round_up=True) for c in chunks])


