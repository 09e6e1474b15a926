"""Evaluators named in config.evals, run during training and at the end.

Each entry of config.evals is a ConfigDict with a `kind` ("zero_shot" or "retrieval") and the fields
of that kind; the metrics come back as {"<name>/<metric>": value}.

- zero_shot: classify held-out images by their nearest class embedding, the class embedding being
  CLIP's prompt ensemble over the templates. Top-1 (and top-3/5 below the class count). `dataset`
  is "synthetic" (the embedded scenes; `task` picks the attribute) or an evaluation set of
  rankclip_jax.data.tfds_eval.DATASETS (ImageNet-1k and its shifts, CIFAR, ...), read from TFDS
  ArrayRecord files under `data_dir` (default config.data.eval_data_dir).
- retrieval: image<->text recall@1/5/10 on held-out pairs; texts with identical wording count as
  relevant to each of their images.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from rankclip_jax.data import pipeline, synthetic, tfds_eval
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import metrics as M
from rankclip_jax.evaluation.embed import Embedder

EVAL_KINDS = ("zero_shot", "retrieval")


def _eval_source(cfg, *, image_size: int, seed: int, caption_mode: str = "random"):
  return synthetic.SyntheticScenes(
      num_records=int(cfg.num_examples), seed=seed, split=cfg.split, image_size=image_size,
      min_objects=int(cfg.min_objects), max_objects=int(cfg.max_objects),
      caption_mode=caption_mode)


@dataclasses.dataclass
class ZeroShotEvaluator:
  """Zero-shot top-k of `source`'s images among `classnames`; class = example[label_key] - offset."""

  name: str
  source: Any
  classnames: list[str]
  templates: list[str]
  label_key: str
  batch_size: int
  tokenizer: ClipTokenizer
  image_size: int
  label_offset: int = 0

  def class_embeddings(self, embedder: Embedder, params) -> np.ndarray:
    prompts = [t.format(c) for t in self.templates for c in self.classnames]
    emb = embedder.texts(params, self.tokenizer(prompts))
    return M.ensemble_class_embeddings(
        emb.reshape(len(self.templates), len(self.classnames), -1))

  def run(self, embedder: Embedder, params) -> dict[str, float]:
    skips: dict[str, int] = {}
    batches = pipeline.eval_batches(self.source, batch_size=self.batch_size,
                                    tokenizer=self.tokenizer, image_size=self.image_size,
                                    label_keys=(self.label_key,), skip_counter=skips)
    image_emb, extras = embedder.images(params, batches)
    if not len(image_emb):
      raise ValueError(f"Evaluation {self.name!r}: none of the {len(self.source)} examples of "
                       f"{self.source!r} could be read ({skips}).")
    labels = extras[self.label_key] - self.label_offset
    ks = [k for k in (1, 3, 5) if k < len(self.classnames)]
    acc = M.zero_shot_classification(image_emb, self.class_embeddings(embedder, params), labels,
                                     ks=ks)
    out = {f"{self.name}/top{k}": v for k, v in acc.items()}
    out[f"{self.name}/chance"] = 1.0 / len(self.classnames)
    out[f"{self.name}/num_examples"] = int(len(image_emb))
    if skips:
      out[f"{self.name}/skipped"] = int(sum(skips.values()))
    return out


@dataclasses.dataclass
class RetrievalEvaluator:
  name: str
  source: Any
  batch_size: int
  tokenizer: ClipTokenizer
  image_size: int

  def run(self, embedder: Embedder, params) -> dict[str, float]:
    batches = pipeline.eval_batches(self.source, batch_size=self.batch_size,
                                    tokenizer=self.tokenizer, image_size=self.image_size,
                                    captions=True)
    image_emb, extras = embedder.images(params, batches)
    texts, relevance = M.relevance_from_captions(extras["caption"])
    text_emb = embedder.texts(params, self.tokenizer(texts))
    recall = M.retrieval_recall(image_emb, text_emb, relevance)
    return {f"{self.name}/{k}": v for k, v in recall.items()}


class _Head:
  """The first n examples of a random-access source (n <= 0: all of them)."""

  def __init__(self, source, n: int):
    self.source, self.n = source, (min(n, len(source)) if n > 0 else len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]

  def __repr__(self):
    return f"first {self.n} of {self.source!r}"


def eval_data_dir(config) -> str:
  """config.data.eval_data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's default)."""
  return os.path.expanduser(config.data.get("eval_data_dir") or os.environ.get("TFDS_DATA_DIR")
                            or "~/tensorflow_datasets")


def build_evaluators(config, tokenizer: ClipTokenizer) -> dict[str, Any]:
  """One evaluator per entry of config.evals. A TFDS evaluation set that is not prepared is an
  error here, naming the command that prepares it."""
  out = {}
  size, bs = config.image_size, config.eval_batch_size
  for name, cfg in config.evals.items():
    # Evaluation scenes use their own seed stream so they never depend on the training seed.
    seed = int(cfg.get("seed", 0))
    dataset = cfg.get("dataset", "synthetic")
    if cfg.kind == "zero_shot" and dataset != "synthetic":
      src = tfds_eval.TfdsEvalSource(dataset, cfg.get("data_dir") or eval_data_dir(config),
                                     split=cfg.get("split") or None, min_size=size)
      templates = tfds_eval.templates(cfg.get("templates") or dataset)
      out[name] = ZeroShotEvaluator(name, _Head(src, int(cfg.get("num_examples", 0))),
                                    src.classnames, templates, "label", bs, tokenizer, size)
    elif cfg.kind == "zero_shot":
      src = _eval_source(cfg, image_size=size, seed=seed)
      classnames, templates, label_key, offset = synthetic.zero_shot_task(
          cfg.task, min_objects=src.min_objects, max_objects=src.max_objects)
      out[name] = ZeroShotEvaluator(name, src, classnames, list(templates), label_key, bs,
                                    tokenizer, size, label_offset=offset)
    elif cfg.kind == "retrieval":
      src = _eval_source(cfg, image_size=size, seed=seed, caption_mode="full")
      out[name] = RetrievalEvaluator(name, src, bs, tokenizer, size)
    else:
      raise ValueError(f"config.evals.{name}.kind={cfg.kind!r}; choose one of {EVAL_KINDS}.")
  return out


def run_evaluators(evaluators: dict[str, Any], embedder: Embedder, params) -> dict[str, float]:
  metrics = {}
  for ev in evaluators.values():
    metrics.update(ev.run(embedder, params))
  return metrics
