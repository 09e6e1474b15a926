"""Representation diagnostics of paired image/text embeddings (numpy in, floats or pictures out).

RankCLIP claims a better-structured joint space than CLIP: a smaller modality gap and rankings that
agree across and within modalities. These measure it on held-out pairs (rows of `image` and `text`
are L2-normalised embeddings of the same N pairs):

- modality_gap: || mean(image) - mean(text) ||, the distance between the two centroids (Liang et
  al. 2022, "Mind the Gap"); 0 when the modalities share one cloud.
- alignment: E || image_i - text_i ||^2 over pairs (Wang & Isola 2020; lower is better, in [0, 4]).
- uniformity: log E_{i != j} exp(-2 || x_i - x_j ||^2) per modality (Wang & Isola; lower is more
  uniform on the sphere).
- ranking consistency: how far the rankings that RankCLIP's terms compare already agree, as mean
  Spearman and Kendall correlations over rows:
    cross:   the order of texts for image i (row i of I T^T) vs the order of images for text i
             (column i), the lists of the cross-modal term;
    inmodal: image i's similarities to the other images (row i of I I^T) vs text i's to the other
             texts (row i of T T^T), without the diagonal, the lists of the in-modal term.
- embedding_picture: the 2-D PCA projection of both modalities, images and texts in two colours,
  a thin line joining each pair, as an RGB uint8 array (PNG for the run folder, image for TensorBoard).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from rankclip_jax.evaluation.metrics import normalize

IMAGE_COLOUR = (31, 119, 180)  # blue
TEXT_COLOUR = (255, 127, 14)  # orange


def _check_pairs(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
  if image.ndim != 2 or image.shape != text.shape:
    raise ValueError(f"Expected image and text embeddings of one shape [N, D]; got {image.shape} "
                     f"and {text.shape}.")
  if image.shape[0] < 3:
    raise ValueError(f"Diagnostics need at least 3 pairs; got {image.shape[0]}.")
  return image, text


def modality_gap(image: np.ndarray, text: np.ndarray) -> float:
  image, text = _check_pairs(image, text)
  return float(np.linalg.norm(image.mean(0) - text.mean(0)))


def alignment(image: np.ndarray, text: np.ndarray) -> float:
  image, text = _check_pairs(image, text)
  return float(np.mean(np.sum((image - text) ** 2, axis=1)))


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
  x = np.asarray(x, np.float64)
  sq = np.maximum(np.sum(x ** 2, 1)[:, None] + np.sum(x ** 2, 1)[None, :] - 2 * x @ x.T, 0.0)
  off = ~np.eye(len(x), dtype=bool)
  v = -t * sq[off]
  return float(np.log(np.mean(np.exp(v - v.max()))) + v.max())


def _row_correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """Mean Spearman and Kendall (tau-b, ties handled) correlation of a[i] vs b[i] over rows; rows
  where either list is constant (correlation undefined) are left out."""
  from scipy import stats  # pylint: disable=g-import-not-at-top  (0.7 s; not at every run's start)
  spearman, kendall = [], []
  for x, y in zip(a, b):
    if np.ptp(x) == 0 or np.ptp(y) == 0:
      continue
    spearman.append(stats.spearmanr(x, y).statistic)
    kendall.append(stats.kendalltau(x, y).statistic)
  if not spearman:
    return float("nan"), float("nan")
  return float(np.mean(spearman)), float(np.mean(kendall))


def ranking_consistency(image: np.ndarray, text: np.ndarray) -> dict[str, float]:
  image, text = _check_pairs(image, text)
  n = len(image)
  logits = image @ text.T
  out = {}
  out["cross_spearman"], out["cross_kendall"] = _row_correlations(logits, logits.T)
  off = ~np.eye(n, dtype=bool)
  s_image = (image @ image.T)[off].reshape(n, n - 1)
  s_text = (text @ text.T)[off].reshape(n, n - 1)
  out["inmodal_spearman"], out["inmodal_kendall"] = _row_correlations(s_image, s_text)
  return out


def diagnostics(image: np.ndarray, text: np.ndarray) -> dict[str, float]:
  """Every scalar diagnostic of this module on N held-out pairs."""
  image, text = normalize(image), normalize(text)
  out = {"modality_gap": modality_gap(image, text), "alignment": alignment(image, text),
         "uniformity_image": uniformity(image), "uniformity_text": uniformity(text)}
  out.update(ranking_consistency(image, text))
  return out


def pca_2d(x: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, 2]: coordinates on the two leading principal axes (sign fixed so that the
  largest-magnitude loading of each axis is positive, for stable pictures)."""
  x = np.asarray(x, np.float64)
  centred = x - x.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  axes = vt[:2]
  signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
  return centred @ (axes * signs[:, None]).T


def embedding_picture(image: np.ndarray, text: np.ndarray, size: int = 512,
                      max_lines: int = 64) -> np.ndarray:
  """Both modalities in one 2-D PCA projection: uint8 [size, size, 3] (white background, images
  blue, texts orange, grey lines joining the first `max_lines` pairs)."""
  image, text = _check_pairs(image, text)
  n = len(image)
  xy = pca_2d(np.concatenate([normalize(image), normalize(text)]))
  lo, hi = xy.min(0), xy.max(0)
  margin = 12
  scale = (size - 2 * margin) / max(float(np.max(hi - lo)), 1e-9)
  px = (xy - lo) * scale + margin
  px[:, 1] = size - px[:, 1]  # y up
  canvas = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i in range(min(n, max_lines)):
    draw.line([tuple(px[i]), tuple(px[n + i])], fill=(200, 200, 200), width=1)
  r = 3
  for i, (x, y) in enumerate(px):
    colour = IMAGE_COLOUR if i < n else TEXT_COLOUR
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
  draw.text((margin, 2), "images", fill=IMAGE_COLOUR)
  draw.text((margin + 60, 2), "texts", fill=TEXT_COLOUR)
  return np.asarray(canvas)
