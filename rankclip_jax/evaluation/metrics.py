"""Evaluation metrics as pure functions of embeddings (numpy in, floats out).

Ties are counted against the model: an example is correct at k only if fewer than k wrong candidates
score at least as high as the best right one. A constant (collapsed) model therefore scores 0, not a
lucky 100%.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def ensemble_class_embeddings(template_embeddings: np.ndarray) -> np.ndarray:
  """[num_templates, num_classes, D] -> [num_classes, D].

  CLIP's prompt ensemble: normalise each template's embedding, average over templates, renormalise.
  """
  if template_embeddings.ndim != 3:
    raise ValueError(
        f"Expected [num_templates, num_classes, D], got shape {template_embeddings.shape}.")
  return normalize(normalize(template_embeddings).mean(axis=0))


def _rank_of_best_relevant(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
  """For each row: how many irrelevant candidates score >= the best relevant one.

  Rows with no relevant candidate get rank = number of candidates (never counted as correct).
  """
  scores = np.asarray(scores, np.float64)
  relevant = np.asarray(relevant, bool)
  if scores.shape != relevant.shape:
    raise ValueError(f"scores {scores.shape} and relevance {relevant.shape} differ in shape.")
  best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
  rank = np.sum((scores >= best) & ~relevant, axis=1)
  return np.where(relevant.any(axis=1), rank, scores.shape[1])


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1,)
                  ) -> dict[int, float]:
  """Fraction of rows whose label is among the top k logits, for each k."""
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  n, c = logits.shape
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape ({n},), got {labels.shape}.")
  if n == 0:
    raise ValueError("topk_accuracy needs at least one example.")
  if labels.min() < 0 or labels.max() >= c:
    raise ValueError(f"labels must be in [0, {c}); got range [{labels.min()}, {labels.max()}].")
  relevant = np.zeros((n, c), bool)
  relevant[np.arange(n), labels] = True
  rank = _rank_of_best_relevant(logits, relevant)
  return {k: float(np.mean(rank < k)) for k in ks}


def zero_shot_classification(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray,
                             ks: Sequence[int] = (1,)) -> dict[int, float]:
  """Top-k accuracy of classifying each image as its most similar class embedding."""
  return topk_accuracy(np.asarray(image_emb) @ np.asarray(class_emb).T, labels, ks)


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, relevance: np.ndarray,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Image->text and text->image recall@k.

  relevance: bool [num_images, num_texts], True where a text describes an image (several captions
  per image, or one caption shared by several images, are both fine). I->T R@k is the fraction of
  images with a relevant text in their top k; T->I likewise for texts.
  """
  scores = np.asarray(image_emb) @ np.asarray(text_emb).T
  i2t = _rank_of_best_relevant(scores, relevance)
  t2i = _rank_of_best_relevant(scores.T, np.asarray(relevance).T)
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = float(np.mean(i2t < k))
    out[f"t2i_r{k}"] = float(np.mean(t2i < k))
  return out


def relevance_from_captions(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """Unique captions and the [num_images, num_unique] relevance of pairs with identical text."""
  unique = sorted(set(captions))
  index = {c: j for j, c in enumerate(unique)}
  relevance = np.zeros((len(captions), len(unique)), bool)
  relevance[np.arange(len(captions)), [index[c] for c in captions]] = True
  return unique, relevance
