"""Evaluators named in config.evals, run during training and at the end.

Each entry of config.evals is a ConfigDict with a `kind` ("zero_shot" or "retrieval") and the fields
of that kind; the metrics come back as {"<name>/<metric>": value}.

- zero_shot: classify held-out images by their nearest class embedding, the class embedding being
  CLIP's prompt ensemble over the templates. Top-1 (and top-3/5 below the class count). `dataset`
  is "synthetic" (the embedded scenes; `task` picks the attribute) or an evaluation set of
  rankclip_jax.data.tfds_eval.DATASETS (ImageNet-1k and its shifts, CIFAR, ...), read from TFDS
  ArrayRecord files under `data_dir` (default config.data.eval_data_dir).
- retrieval: image<->text recall@1/5/10. `dataset` "synthetic": held-out scenes, texts with
  identical wording relevant to each of their images; "coco" / "flickr30k": the Karpathy test
  split (`json_path` to dataset_coco.json / dataset_flickr30k.json, `image_root`), each image's
  own five captions relevant to it (data/karpathy.py).
- linear_probe: logistic regression on frozen image embeddings of a TFDS set (`dataset`): fit on
  `train_split` (default "train", first `num_train`, 0: all), L2 chosen on a validation split,
  top-1 on `split` (first `num_examples`, 0: all).
- diagnostics: modality gap, alignment, uniformity, ranking consistency (Spearman/Kendall between
  the rankings RankCLIP's terms compare) on held-out pairs, and a picture of the embedding space;
  the pairs are synthetic scenes, or the first num_examples of a real source given as `data`
  (a configs.common.data_source: webdataset or csv).

- pairwise, attribute_ranking: PC-CLIP's comparisons on held-out synthetic scene pairs
  (evaluation/comparative.py). A zero_shot entry with `comparative_alpha` > 0 uses PC-CLIP's
  comparative prompting (its `comparative_template` names two classes).

Every entry may set `every_steps` (default config.eval_every_steps).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from rankclip_jax.data import karpathy, pipeline, synthetic, tfds_eval
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.data import pairs as pairs_lib
from rankclip_jax.evaluation import comparative
from rankclip_jax.evaluation import diagnostics as D
from rankclip_jax.evaluation import linear_probe as linear_probe_lib
from rankclip_jax.evaluation import metrics as M
from rankclip_jax.evaluation.embed import Embedder

EVAL_KINDS = ("zero_shot", "retrieval", "diagnostics", "linear_probe", "pairwise",
              "attribute_ranking")


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
  comparative_alpha: float = 0.0
  comparative_template: str = "a {} differs from a {} in shape."

  def class_embeddings(self, embedder: Embedder, params) -> np.ndarray:
    prompts = [t.format(c) for t in self.templates for c in self.classnames]
    emb = embedder.texts(params, self.tokenizer(prompts))
    class_emb = M.ensemble_class_embeddings(
        emb.reshape(len(self.templates), len(self.classnames), -1))
    if self.comparative_alpha > 0:
      class_emb = comparative.comparative_zero_shot_embeddings(
          embedder, params, self.tokenizer, class_emb, self.classnames,
          self.comparative_template, self.comparative_alpha)
    return class_emb

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
    skips: dict[str, int] = {}
    batches = pipeline.eval_batches(self.source, batch_size=self.batch_size,
                                    tokenizer=self.tokenizer, image_size=self.image_size,
                                    captions=True, skip_counter=skips)
    image_emb, extras = embedder.images(params, batches)
    if "captions" in extras:  # each image its own captions (COCO / Flickr30k)
      texts, owner = karpathy.caption_relevance(extras["captions"])
      relevance = karpathy.owner_relevance(owner, len(image_emb))
    else:  # one caption per image; identical wording is relevant to each of its images
      texts, relevance = M.relevance_from_captions(extras["caption"])
    text_emb = embedder.texts(params, self.tokenizer(texts))
    recall = M.retrieval_recall(image_emb, text_emb, relevance)
    out = {f"{self.name}/{k}": v for k, v in recall.items()}
    out[f"{self.name}/num_images"] = int(len(image_emb))
    out[f"{self.name}/num_texts"] = int(len(texts))
    if skips:
      out[f"{self.name}/skipped"] = int(sum(skips.values()))
    return out


@dataclasses.dataclass
class LinearProbeEvaluator:
  """Multinomial logistic regression on frozen (normalised) image embeddings of a TFDS set's train
  split, L2 strength chosen on a stratified validation split, test top-1 (linear_probe.py)."""

  name: str
  train_source: Any
  test_source: Any
  num_classes: int
  batch_size: int
  tokenizer: ClipTokenizer
  image_size: int
  seed: int = 0

  def _features(self, embedder, params, source, skips):
    batches = pipeline.eval_batches(source, batch_size=self.batch_size, tokenizer=self.tokenizer,
                                    image_size=self.image_size, label_keys=("label",),
                                    skip_counter=skips)
    emb, extras = embedder.images(params, batches)
    return emb, extras["label"]

  def run(self, embedder: Embedder, params) -> dict[str, float]:
    skips: dict[str, int] = {}
    train_x, train_y = self._features(embedder, params, self.train_source, skips)
    test_x, test_y = self._features(embedder, params, self.test_source, skips)
    result = linear_probe_lib.linear_probe(train_x, train_y, test_x, test_y, self.num_classes,
                                           seed=self.seed)
    out = {f"{self.name}/top1": result["top1"], f"{self.name}/chosen_l2": result["chosen_l2"],
           f"{self.name}/num_train": int(len(train_y)), f"{self.name}/num_test": int(len(test_y))}
    if skips:
      out[f"{self.name}/skipped"] = int(sum(skips.values()))
    return out


@dataclasses.dataclass
class DiagnosticsEvaluator:
  """Modality gap, alignment, uniformity and ranking consistency on held-out pairs (one caption
  per image), plus a picture of the joint embedding space (evaluation/diagnostics.py)."""

  name: str
  source: Any
  batch_size: int
  tokenizer: ClipTokenizer
  image_size: int

  def run(self, embedder: Embedder, params) -> dict[str, Any]:
    skips: dict[str, int] = {}
    batches = pipeline.eval_batches(self.source, batch_size=self.batch_size,
                                    tokenizer=self.tokenizer, image_size=self.image_size,
                                    captions=True, skip_counter=skips)
    image_emb, extras = embedder.images(params, batches)
    text_emb = embedder.texts(params, self.tokenizer(extras["caption"]))
    out: dict[str, Any] = {f"{self.name}/{k}": v
                           for k, v in D.diagnostics(image_emb, text_emb).items()}
    out[f"{self.name}/num_pairs"] = int(len(image_emb))
    if skips:
      out[f"{self.name}/skipped"] = int(sum(skips.values()))
    out[f"{self.name}/embedding_space"] = D.embedding_picture(image_emb, text_emb)
    return out


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
      if cfg.get("comparative_alpha", 0.0):
        out[name].comparative_alpha = float(cfg.comparative_alpha)
        out[name].comparative_template = cfg.get("comparative_template",
                                                 out[name].comparative_template)
    elif cfg.kind == "pairwise":
      src = pairs_lib.SyntheticPairs(num_records=int(cfg.num_examples), seed=seed,
                                     split=cfg.get("split", "test"), image_size=size)
      out[name] = comparative.PairwiseEvaluator(name, src, bs, tokenizer)
    elif cfg.kind == "attribute_ranking":
      out[name] = comparative.AttributeRankingEvaluator(
          name, int(cfg.num_examples), size, bs, tokenizer, split=cfg.get("split", "test"),
          seed=seed)
    elif cfg.kind == "retrieval" and dataset != "synthetic":
      src = karpathy.KarpathyRetrievalSource(cfg.json_path, cfg.image_root,
                                             split=cfg.get("split") or "test")
      out[name] = RetrievalEvaluator(name, _Head(src, int(cfg.get("num_examples", 0))), bs,
                                     tokenizer, size)
    elif cfg.kind == "retrieval":
      src = _eval_source(cfg, image_size=size, seed=seed, caption_mode="full")
      out[name] = RetrievalEvaluator(name, src, bs, tokenizer, size)
    elif cfg.kind == "linear_probe":
      data_dir = cfg.get("data_dir") or eval_data_dir(config)
      train_src = tfds_eval.TfdsEvalSource(dataset, data_dir, split=cfg.get("train_split") or
                                           "train", min_size=size)
      test_src = tfds_eval.TfdsEvalSource(dataset, data_dir, split=cfg.get("split") or None,
                                          min_size=size)
      out[name] = LinearProbeEvaluator(
          name, _Head(train_src, int(cfg.get("num_train", 0))),
          _Head(test_src, int(cfg.get("num_examples", 0))), len(train_src.classnames), bs,
          tokenizer, size, seed=seed)
    elif cfg.kind == "diagnostics":
      if cfg.get("data") is not None and cfg.data.kind != "synthetic":
        src = _Head(pipeline.make_source(cfg.data, image_size=size, seed=seed,
                                         field=f"config.evals.{name}.data"), cfg.num_examples)
      else:
        src = _eval_source(cfg, image_size=size, seed=seed, caption_mode="full")
      out[name] = DiagnosticsEvaluator(name, src, bs, tokenizer, size)
    else:
      raise ValueError(f"config.evals.{name}.kind={cfg.kind!r}; choose one of {EVAL_KINDS}.")
  return out


def run_evaluators(evaluators: dict[str, Any], embedder: Embedder, params) -> dict[str, Any]:
  """{"<evaluator>/<metric>": float, ...}; pictures come as uint8 [H, W, 3] arrays (see
  split_pictures)."""
  metrics = {}
  for ev in evaluators.values():
    metrics.update(ev.run(embedder, params))
  return metrics


def split_pictures(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(scalars, pictures) of run_evaluators' output."""
  pictures = {k: v for k, v in metrics.items() if isinstance(v, np.ndarray) and v.ndim == 3}
  return {k: v for k, v in metrics.items() if k not in pictures}, pictures


def due(config, name: str, step: int) -> bool:
  """Whether evaluator `name` runs at `step`: every config.evals.<name>.every_steps steps
  (0 or absent: config.eval_every_steps)."""
  every = int(config.evals[name].get("every_steps", 0) or config.eval_every_steps)
  return step % every == 0
