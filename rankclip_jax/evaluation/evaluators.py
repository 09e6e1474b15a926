"""Evaluators named in config.evals, run during training and at the end.

Each entry of config.evals is a ConfigDict with a `kind` ("zero_shot" or "retrieval") and the fields
of that kind; the metrics come back as {"<name>/<metric>": value}.

- zero_shot: classify held-out images by their nearest class embedding, the class embedding being
  CLIP's prompt ensemble over the task's templates. Top-1 (and top-k up to the class count).
- retrieval: image<->text recall@1/5/10 on held-out pairs; texts with identical wording count as
  relevant to each of their images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rankclip_jax.data import pipeline, synthetic
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
  name: str
  source: Any
  task: str
  batch_size: int
  tokenizer: ClipTokenizer

  def __post_init__(self):
    self.classnames, self.templates, self.label_key, self.label_offset = (
        synthetic.zero_shot_task(self.task, min_objects=self.source.min_objects,
                                 max_objects=self.source.max_objects))

  def class_embeddings(self, embedder: Embedder, params) -> np.ndarray:
    prompts = [t.format(c) for t in self.templates for c in self.classnames]
    emb = embedder.texts(params, self.tokenizer(prompts))
    return M.ensemble_class_embeddings(
        emb.reshape(len(self.templates), len(self.classnames), -1))

  def run(self, embedder: Embedder, params) -> dict[str, float]:
    batches = pipeline.eval_batches(self.source, batch_size=self.batch_size,
                                    tokenizer=self.tokenizer, label_keys=(self.label_key,))
    image_emb, extras = embedder.images(params, batches)
    labels = extras[self.label_key] - self.label_offset
    ks = [k for k in (1, 3, 5) if k < len(self.classnames)]
    acc = M.zero_shot_classification(image_emb, self.class_embeddings(embedder, params), labels,
                                     ks=ks)
    out = {f"{self.name}/top{k}": v for k, v in acc.items()}
    out[f"{self.name}/chance"] = 1.0 / len(self.classnames)
    return out


@dataclasses.dataclass
class RetrievalEvaluator:
  name: str
  source: Any
  batch_size: int
  tokenizer: ClipTokenizer

  def run(self, embedder: Embedder, params) -> dict[str, float]:
    batches = pipeline.eval_batches(self.source, batch_size=self.batch_size,
                                    tokenizer=self.tokenizer, captions=True)
    image_emb, extras = embedder.images(params, batches)
    texts, relevance = M.relevance_from_captions(extras["caption"])
    text_emb = embedder.texts(params, self.tokenizer(texts))
    recall = M.retrieval_recall(image_emb, text_emb, relevance)
    return {f"{self.name}/{k}": v for k, v in recall.items()}


def build_evaluators(config, tokenizer: ClipTokenizer) -> dict[str, Any]:
  """One evaluator per entry of config.evals, on sources held out from training."""
  out = {}
  for name, cfg in config.evals.items():
    # Evaluation scenes use their own seed stream so they never depend on the training seed.
    seed = int(cfg.get("seed", 0))
    if cfg.kind == "zero_shot":
      src = _eval_source(cfg, image_size=config.image_size, seed=seed)
      out[name] = ZeroShotEvaluator(name, src, cfg.task, config.eval_batch_size, tokenizer)
    elif cfg.kind == "retrieval":
      src = _eval_source(cfg, image_size=config.image_size, seed=seed, caption_mode="full")
      out[name] = RetrievalEvaluator(name, src, config.eval_batch_size, tokenizer)
    else:
      raise ValueError(f"config.evals.{name}.kind={cfg.kind!r}; choose one of {EVAL_KINDS}.")
  return out


def run_evaluators(evaluators: dict[str, Any], embedder: Embedder, params) -> dict[str, float]:
  metrics = {}
  for ev in evaluators.values():
    metrics.update(ev.run(embedder, params))
  return metrics
