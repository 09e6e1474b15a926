"""Sharded, batched embedding of evaluation data with a trained TwoTowers model."""

from __future__ import annotations

from typing import Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from rankclip_jax import sharding as shd


class Embedder:
  """Runs encode_image / encode_text jitted over the mesh: batch split over devices, output
  replicated back to the host. Batches are padded to a multiple of the device count."""

  def __init__(self, model, mesh: Mesh):
    self.mesh = mesh
    self._in = shd.batch_sharding(mesh)
    out = shd.replicated(mesh)
    self._image = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"),
                          in_shardings=(None, self._in), out_shardings=out)
    self._text = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_text"),
                         in_shardings=(None, self._in), out_shardings=out)

  def _run(self, fn, params, x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    pad = (-n) % self.mesh.size
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
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
    return np.concatenate([self._run(self._text, params, tokens[i:i + batch_size])
                           for i in range(0, tokens.shape[0], batch_size)])


