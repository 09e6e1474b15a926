"""PC-CLIP's evaluations (docs/method.md): comparisons between images, read off embedding differences.

- pairwise: on held-out pairs with a true comparative caption t about (i, j),
    accuracy    = mean[cos(t, normalize(v_i - v_j)) > 0]  (PC-CLIP's criterion), and
    vs_opposite = mean[cos(t, d) > cos(t_opposite, d)]     (the caption against its reversal),
  overall and per attribute.
- attribute_ranking: images ranked by v . t_more, t_more the caption "the first image shows a
  larger shape than the second." (resp. more shapes, further left, higher): Spearman correlation
  between that order and the true attribute value, per attribute and on average.
- comparative prompting (zero-shot, a zero_shot evaluator option): class embeddings
    t_c' = normalize(a * t_c + (1 - a) * mean_j (t_c - d_cj)),
  d_cj the embedding of "a {c} differs from a {j} ..." (comparative_template).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rankclip_jax.data import pairs as pairs_lib
from rankclip_jax.data import synthetic as S
from rankclip_jax.data.pipeline import normalize_image
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import metrics as M
from rankclip_jax.evaluation.embed import Embedder


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman's rank correlation (average ranks for ties); 0.0 when a side is constant."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  if x.size < 2 or (x == x[0]).all() or (y == y[0]).all():
    return 0.0  # no order to correlate (scipy gives nan)
  from scipy import stats  # pylint: disable=g-import-not-at-top  (0.7 s; not at every run's start)
  return float(stats.spearmanr(x, y).statistic)


def embed_uint8(embedder: Embedder, params, images: np.ndarray, batch_size: int) -> np.ndarray:
  """uint8 [N, S, S, 3] already at the model's size -> normalised embeddings [N, D]."""
  def batches():
    for start in range(0, len(images), batch_size):
      chunk = np.stack([normalize_image(im) for im in images[start:start + batch_size]])
      mask = np.ones(batch_size, bool)
      if len(chunk) < batch_size:
        mask[len(chunk):] = False
        chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:],
                                                chunk.dtype)])
      yield {"image": chunk, "mask": mask}
  emb, _ = embedder.images(params, batches())
  return emb


def pair_differences(image_a: np.ndarray, image_b: np.ndarray) -> np.ndarray:
  return M.normalize(M.normalize(image_a) - M.normalize(image_b))


@dataclasses.dataclass
class PairwiseEvaluator:
  name: str
  source: pairs_lib.SyntheticPairs
  batch_size: int
  tokenizer: ClipTokenizer

  def run(self, embedder: Embedder, params) -> dict[str, float]:
    examples = [self.source[i] for i in range(len(self.source))]
    emb = lambda key: embed_uint8(embedder, params, np.stack([e[key] for e in examples]),  # pylint: disable=g-long-lambda
                                  self.batch_size)
    d = pair_differences(emb("image_a"), emb("image_b"))
    text = embedder.texts(params, self.tokenizer([e["caption"] for e in examples]))
    opposite = embedder.texts(params, self.tokenizer([e["opposite"] for e in examples]))
    cos, cos_opp = np.sum(text * d, axis=1), np.sum(opposite * d, axis=1)
    attribute = np.array([e["attribute"] for e in examples])
    out = {f"{self.name}/accuracy": float(np.mean(cos > 0)),
           f"{self.name}/vs_opposite": float(np.mean(cos > cos_opp)),
           f"{self.name}/num_pairs": len(examples)}
    for i, attr in enumerate(pairs_lib.ATTRIBUTES):
      if np.any(attribute == i):
        out[f"{self.name}/accuracy_{attr}"] = float(np.mean(cos[attribute == i] > 0))
    return out


_RANKED = ("size", "count", "horizontal", "vertical")


@dataclasses.dataclass
class AttributeRankingEvaluator:
  """Spearman between the true attribute values of `num_examples` held-out scenes per attribute
  and their order along the caption direction t_more."""

  name: str
  num_examples: int
  image_size: int
  batch_size: int
  tokenizer: ClipTokenizer
  split: str = "test"
  seed: int = 0

  def scenes(self, attribute: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, 4243, S.SPLITS.index(self.split),
                                 _RANKED.index(attribute)])
    max_objects = S.MAX_OBJECTS if attribute == "count" else 1
    scenes = [S.sample_scene(rng, split=self.split, min_objects=1, max_objects=max_objects)
              for _ in range(self.num_examples)]
    values = np.array([pairs_lib.attribute_value(s, attribute) for s in scenes])
    return np.stack([S.render_scene(s, self.image_size) for s in scenes]), values

  def run(self, embedder: Embedder, params) -> dict[str, float]:
    direction = embedder.texts(params, self.tokenizer(
        [pairs_lib.comparison(a, True) for a in _RANKED]))
    out = {}
    for i, attribute in enumerate(_RANKED):
      images, values = self.scenes(attribute)
      scores = M.normalize(embed_uint8(embedder, params, images, self.batch_size)) @ direction[i]
      out[f"{self.name}/spearman_{attribute}"] = _spearman(scores, values)
    out[f"{self.name}/spearman_mean"] = float(np.mean(
        [out[f"{self.name}/spearman_{a}"] for a in _RANKED]))
    return out


def comparative_class_embeddings(class_emb: np.ndarray, difference_emb: np.ndarray,
                                 alpha: float) -> np.ndarray:
  """t_c' = normalize(alpha t_c + (1 - alpha) mean_{j != c} (t_c - d_cj)).

  class_emb [C, D]; difference_emb [C, C, D] with d_cj at [c, j] (the diagonal is ignored)."""
  c = class_emb.shape[0]
  off = ~np.eye(c, dtype=bool)
  mean_diff = np.stack([(class_emb[i] - difference_emb[i][off[i]]).mean(axis=0)
                        for i in range(c)])
  return M.normalize(alpha * class_emb + (1 - alpha) * mean_diff)


def difference_prompts(classnames: Sequence[str], template: str) -> list[str]:
  """The C x C statements "a {c} differs from a {j} ..." in row-major order."""
  return [template.format(a, b) for a in classnames for b in classnames]


def comparative_zero_shot_embeddings(embedder: Embedder, params, tokenizer: ClipTokenizer,
                                     class_emb: np.ndarray, classnames: Sequence[str],
                                     template: str, alpha: float) -> np.ndarray:
  c = len(classnames)
  diff = embedder.texts(params, tokenizer(difference_prompts(classnames, template)))
  return comparative_class_embeddings(class_emb, diff.reshape(c, c, -1), alpha)
