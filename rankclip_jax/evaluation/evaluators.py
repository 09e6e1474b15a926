"""Evaluators named in config.evals, run during training and at the end.

Each entry of config.evals is a ConfigDict with a `kind` (a name of EVALUATORS, the one list of
them), an optional `every_steps` (0 or absent: config.eval_every_steps) and the fields of that kind;
the metrics come back as {"<name>/<metric>": value}. Each kind's builder takes its fields as
keyword arguments, so a field the kind does not have is an error, and
`inspect.signature(EVALUATORS.get(kind))` (or kind_fields(kind)) lists them. Unset fields take the
defaults below; a field the entry's `dataset` does not use is ignored.

- zero_shot: classify held-out images by their nearest class embedding, the class embedding being
  CLIP's prompt ensemble over the templates. Top-1 (and top-3/5 below the class count).
  Fields: dataset ("synthetic"), task, split (""), num_examples, min_objects (1), max_objects (1),
  seed (0), templates (""), data_dir (""), comparative_alpha (0.0), comparative_template, path
  (""), class_names (""), image_key ("image"), label_key ("label"), delimiter (""), image_root
  ("").
  `dataset` "synthetic": the embedded scenes of `split` ("": "test"), `task` (shape, colour, count,
  combo) picks the attribute, num_examples scenes of min..max_objects objects from `seed`'s stream.
  An evaluation set of rankclip_jax.data.tfds_eval.DATASETS (ImageNet-1k and its shifts, CIFAR,
  ...): read from TFDS ArrayRecord files under `data_dir` ("": config.data.eval_data_dir),
  `split` ("": its test/validation split), the first num_examples (0: all), prompts `templates`
  ("": the dataset's own).
  "folder" or "csv": the user's own labelled images (data/labelled_images.py). "folder": `path`
  holds one subfolder per class (the ImageFolder layout, e.g. an ImageNet validation folder),
  classes in sorted order, each one's images at any depth below it. "csv": `path` is a CSV/TSV
  file (or a directory, glob or list of them) with a header row, the image path in column
  `image_key` (relative to the file's folder, or to `image_root`), the class in column
  `label_key`, `delimiter` ("": tab for .tsv, else comma). `class_names`: a JSON file naming the
  classes, an object of readable names by subfolder name or label ({"n01440764": "tench", ...})
  or a list of names indexed by label; for "csv" it defines the classes (a label is one of them
  or an integer index into them); "": each class is named by its subfolder or label. The
  num_examples (0: all) are spread evenly over the listing, so a class-sorted folder is sampled
  across its classes; prompts `templates` ("": "imagenet1k", OpenAI's 80). A missing or
  unreadable image is skipped and counted (`<name>/skipped`); a missing folder or file, a class
  with no images, a label that is no class or a bad JSON file stops at build time, before training.
  `templates`: a templates.json key (such as "imagenet1k_simple") or dataset name, or a .json
  file holding a list of templates, each with exactly one "{}".
  `comparative_alpha` > 0: PC-CLIP's comparative prompting (evaluation/comparative.py), its
  `comparative_template` ("a {} differs from a {} in shape.") naming two classes.
- retrieval: image<->text recall@1/5/10. Fields: dataset ("synthetic"), split (""), num_examples,
  min_objects (1), max_objects (3), seed (0), json_path (""), image_root ("").
  `dataset` "synthetic": num_examples held-out scenes of `split` ("": "test"), texts with identical
  wording relevant to each of their images; "coco" / "flickr30k": the Karpathy split `split` ("":
  "test"; `json_path` to dataset_coco.json / dataset_flickr30k.json, `image_root`), its first
  num_examples images (0: all), each image's own five captions relevant to it (data/karpathy.py).
- diagnostics: modality gap, alignment, uniformity, ranking consistency (Spearman/Kendall between
  the rankings RankCLIP's terms compare) on held-out pairs, and a picture of the embedding space.
  Fields: split (""), num_examples, min_objects (1), max_objects (3), seed (0), data (None).
  The pairs are num_examples synthetic scenes of `split` ("": "test"), or the first num_examples
  (0: all) of a real source given as `data` (a rankclip_jax.defaults.data_source: webdataset or csv,
  built by rankclip_jax.data.sources.make_source; a `data` of kind synthetic means the scenes).
- linear_probe: logistic regression on frozen image embeddings of a TFDS set or of the user's
  own labelled images. Fields: dataset (required), train_split ("train"), split (""), num_train
  (0), num_examples (0), data_dir (""), seed (0), train_path (""), path (""), class_names (""),
  image_key ("image"), label_key ("label"), delimiter (""), image_root (""). A TFDS set: fit on
  the first num_train of `train_split` (0: all), L2 chosen on a validation split, top-1 on the
  first num_examples of `split` ("": the dataset's test/validation split; 0: all). `dataset`
  "folder" or "csv" (as for zero_shot): fit on the images at `train_path`, top-1 on those at
  `path`; the classes are the training set's (its subfolders, or `class_names`, or its labels),
  and every test subfolder or label must be one of them; num_train / num_examples of each (0:
  all) spread evenly over its listing.
- pairwise: PC-CLIP's comparison accuracy on num_examples (required) held-out synthetic scene
  pairs. Fields: num_examples, split ("test"), seed (0).
- attribute_ranking: Spearman between scenes' attribute values and their order along a
  comparative caption, num_examples (required) scenes per attribute. Fields: num_examples, split
  ("test"), seed (0). Both are in evaluation/comparative.py.

Synthetic evaluation scenes use their own seed stream (`seed`), never the training seed.
build_evaluators returns an Evaluators: the evaluators by name, each one's period (`due(step)`)
and `run`, which returns (scalars, pictures).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
from typing import Any, Callable, Iterable

import ml_collections
import numpy as np

from rankclip_jax.data import karpathy, labelled_images, pipeline, sources, synthetic, tfds_eval
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.data import pairs as pairs_lib
from rankclip_jax.evaluation import comparative
from rankclip_jax.evaluation import diagnostics as D
from rankclip_jax.evaluation import linear_probe as linear_probe_lib
from rankclip_jax.evaluation import metrics as M
from rankclip_jax.evaluation.embed import Embedder
from rankclip_jax.registry import Registry

# The evaluator kinds, each a builder(name, ctx: EvalContext, **the entry's fields) -> evaluator.
EVALUATORS: Registry[Callable[..., Any]] = Registry("config.evals.<name>.kind")

# Fields every entry may have besides its kind's; build_evaluators reads them, not the builders.
COMMON_FIELDS = ("kind", "every_steps")

DEFAULT_COMPARATIVE_TEMPLATE = "a {} differs from a {} in shape."

# The prompts of zero-shot classification on the user's own labelled images (dataset "folder" or
# "csv") when the entry names none: OpenAI's 80 ImageNet templates.
DEFAULT_LABELLED_TEMPLATES = "imagenet1k"


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
  # PC-CLIP's comparative prompting (comparative.comparative_zero_shot_embeddings) when > 0.
  comparative_alpha: float = 0.0
  comparative_template: str = DEFAULT_COMPARATIVE_TEMPLATE

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
  """Multinomial logistic regression on frozen (normalised) image embeddings of a training set (a
  TFDS set's train split, or labelled images), L2 strength chosen on a stratified validation split,
  test top-1 (linear_probe.py)."""

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


def eval_data_dir(value: str = "") -> str:
  """Where TFDS evaluation sets are prepared: `value` (config.data.eval_data_dir), else
  $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's default)."""
  return os.path.expanduser(value or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


_resolve_data_dir = eval_data_dir  # build_evaluators' keyword of the same name hides it there


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What every evaluator of a config shares; eval_data_dir is resolved (see eval_data_dir)."""

  tokenizer: ClipTokenizer
  image_size: int
  batch_size: int
  eval_data_dir: str


# ---------------------------------------------------------------------------------- the builders

def _scenes(ctx: EvalContext, *, split: str, num_examples: int, min_objects: int,
            max_objects: int, seed: int, caption_mode: str = "random") -> synthetic.SyntheticScenes:
  """An entry's held-out synthetic scenes (split "": the test split)."""
  return synthetic.SyntheticScenes(
      num_records=int(num_examples), seed=int(seed), split=split or "test",
      image_size=ctx.image_size, min_objects=int(min_objects), max_objects=int(max_objects),
      caption_mode=caption_mode)


def _labelled_source(name: str, dataset: str, path: str, *, path_field: str = "path",
                     classes: labelled_images.Classes | None = None, need_names: bool = False,
                     **fields) -> labelled_images.LabelledImageSource:
  """An entry's own labelled images (dataset "folder" or "csv"); errors name its fields."""
  return labelled_images.make_source(dataset, path, entry=f"config.evals.{name}",
                                     path_field=path_field, classes=classes,
                                     need_names=need_names, **fields)


@EVALUATORS.register("zero_shot")
def _zero_shot(name: str, ctx: EvalContext, *, dataset: str = "synthetic", task: str = "",
               split: str = "", num_examples: int = 0, min_objects: int = 1,
               max_objects: int = 1, seed: int = 0, templates: str = "", data_dir: str = "",
               comparative_alpha: float = 0.0,
               comparative_template: str = DEFAULT_COMPARATIVE_TEMPLATE, path: str = "",
               class_names: str = "", image_key: str = "image", label_key: str = "label",
               delimiter: str = "", image_root: str = "") -> ZeroShotEvaluator:
  comparative_args = dict(comparative_alpha=float(comparative_alpha),
                          comparative_template=comparative_template)
  templates_field = f"config.evals.{name}.templates"
  if dataset in labelled_images.LAYOUTS:
    src = _labelled_source(name, dataset, path, class_names=class_names, image_key=image_key,
                           label_key=label_key, delimiter=delimiter, image_root=image_root,
                           need_names=True)
    prompts = labelled_images.prompt_templates(templates or DEFAULT_LABELLED_TEMPLATES,
                                               field=templates_field)
    return ZeroShotEvaluator(name, src.evenly(int(num_examples)), src.classnames, prompts,
                             "label", ctx.batch_size, ctx.tokenizer, ctx.image_size,
                             **comparative_args)
  if dataset != "synthetic":
    prompts = labelled_images.prompt_templates(templates or dataset, field=templates_field)
    src = tfds_eval.TfdsEvalSource(dataset, data_dir or ctx.eval_data_dir, split=split or None,
                                   min_size=ctx.image_size)
    return ZeroShotEvaluator(name, _Head(src, int(num_examples)), src.classnames, prompts,
                             "label", ctx.batch_size, ctx.tokenizer, ctx.image_size,
                             **comparative_args)
  src = _scenes(ctx, split=split, num_examples=num_examples, min_objects=min_objects,
                max_objects=max_objects, seed=seed)
  classnames, prompts, label_key, offset = synthetic.zero_shot_task(
      task, min_objects=src.min_objects, max_objects=src.max_objects)
  return ZeroShotEvaluator(name, src, classnames, list(prompts), label_key, ctx.batch_size,
                           ctx.tokenizer, ctx.image_size, label_offset=offset, **comparative_args)


@EVALUATORS.register("retrieval")
def _retrieval(name: str, ctx: EvalContext, *, dataset: str = "synthetic", split: str = "",
               num_examples: int = 0, min_objects: int = 1, max_objects: int = 3, seed: int = 0,
               json_path: str = "", image_root: str = "") -> RetrievalEvaluator:
  if dataset != "synthetic":
    src = _Head(karpathy.KarpathyRetrievalSource(json_path, image_root, split=split or "test"),
                int(num_examples))
  else:
    src = _scenes(ctx, split=split, num_examples=num_examples, min_objects=min_objects,
                  max_objects=max_objects, seed=seed, caption_mode="full")
  return RetrievalEvaluator(name, src, ctx.batch_size, ctx.tokenizer, ctx.image_size)


@EVALUATORS.register("diagnostics")
def _diagnostics(name: str, ctx: EvalContext, *, split: str = "", num_examples: int = 0,
                 min_objects: int = 1, max_objects: int = 3, seed: int = 0,
                 data: Any = None) -> DiagnosticsEvaluator:
  if data is not None and not isinstance(data, ml_collections.ConfigDict):
    data = ml_collections.ConfigDict(data)
  if data is not None and data.kind != "synthetic":
    field = f"config.evals.{name}.data"
    src = _Head(sources.make_source(data, image_size=ctx.image_size, seed=int(seed), field=field),
                int(num_examples))
  else:
    src = _scenes(ctx, split=split, num_examples=num_examples, min_objects=min_objects,
                  max_objects=max_objects, seed=seed, caption_mode="full")
  return DiagnosticsEvaluator(name, src, ctx.batch_size, ctx.tokenizer, ctx.image_size)


@EVALUATORS.register("linear_probe")
def _linear_probe(name: str, ctx: EvalContext, *, dataset: str, train_split: str = "train",
                  split: str = "", num_train: int = 0, num_examples: int = 0, data_dir: str = "",
                  seed: int = 0, train_path: str = "", path: str = "", class_names: str = "",
                  image_key: str = "image", label_key: str = "label", delimiter: str = "",
                  image_root: str = "") -> LinearProbeEvaluator:
  if dataset in labelled_images.LAYOUTS:
    fields = dict(class_names=class_names, image_key=image_key, label_key=label_key,
                  delimiter=delimiter, image_root=image_root)
    train = _labelled_source(name, dataset, train_path, path_field="train_path", **fields)
    test = _labelled_source(name, dataset, path, classes=train.classes, **fields)
    return LinearProbeEvaluator(
        name, train.evenly(int(num_train)), test.evenly(int(num_examples)), len(train.classes),
        ctx.batch_size, ctx.tokenizer, ctx.image_size, seed=int(seed))
  data_dir = data_dir or ctx.eval_data_dir
  train_src = tfds_eval.TfdsEvalSource(dataset, data_dir, split=train_split or "train",
                                       min_size=ctx.image_size)
  test_src = tfds_eval.TfdsEvalSource(dataset, data_dir, split=split or None,
                                      min_size=ctx.image_size)
  return LinearProbeEvaluator(
      name, _Head(train_src, int(num_train)), _Head(test_src, int(num_examples)),
      len(train_src.classnames), ctx.batch_size, ctx.tokenizer, ctx.image_size, seed=int(seed))


@EVALUATORS.register("pairwise")
def _pairwise(name: str, ctx: EvalContext, *, num_examples: int, split: str = "test",
              seed: int = 0) -> comparative.PairwiseEvaluator:
  src = pairs_lib.SyntheticPairs(num_records=int(num_examples), seed=int(seed), split=split,
                                 image_size=ctx.image_size)
  return comparative.PairwiseEvaluator(name, src, ctx.batch_size, ctx.tokenizer)


@EVALUATORS.register("attribute_ranking")
def _attribute_ranking(name: str, ctx: EvalContext, *, num_examples: int, split: str = "test",
                       seed: int = 0) -> comparative.AttributeRankingEvaluator:
  return comparative.AttributeRankingEvaluator(name, int(num_examples), ctx.image_size,
                                               ctx.batch_size, ctx.tokenizer, split=split,
                                               seed=int(seed))


def kind_fields(kind: str) -> tuple[str, ...]:
  """The fields an entry of `kind` may set besides COMMON_FIELDS (its builder's keywords)."""
  params = inspect.signature(EVALUATORS.get(kind)).parameters.values()
  return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def required_fields(kind: str) -> tuple[str, ...]:
  """The fields an entry of `kind` must set (its builder's keywords without a default)."""
  params = inspect.signature(EVALUATORS.get(kind)).parameters
  return tuple(f for f in kind_fields(kind) if params[f].default is inspect.Parameter.empty)


# ------------------------------------------------------------------------------- the collection

class Evaluators(collections.abc.Mapping):
  """{name: evaluator} in config order, with each one's period in steps."""

  def __init__(self, evaluators: dict[str, Any], periods: dict[str, int]):
    if set(evaluators) != set(periods):
      raise ValueError(f"evaluators {list(evaluators)} and periods {list(periods)} differ.")
    self._evaluators = dict(evaluators)
    self.periods = {n: int(periods[n]) for n in self._evaluators}

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._evaluators)

  def __getitem__(self, name: str):
    return self._evaluators[name]

  def __iter__(self):
    return iter(self._evaluators)

  def __len__(self) -> int:
    return len(self._evaluators)

  def due(self, step: int) -> tuple[str, ...]:
    """The evaluators that run at `step`: those whose period divides it."""
    return tuple(n for n in self._evaluators if step % self.periods[n] == 0)

  def run(self, embedder: Embedder, params, names: Iterable[str] | None = None
          ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Runs all evaluators, or the named ones in that order: (scalars {"<name>/<metric>": value},
    pictures {"<name>/<picture>": uint8 [H, W, 3]})."""
    names = self.names if names is None else tuple(names)
    unknown = [n for n in names if n not in self._evaluators]
    if unknown:
      raise KeyError(f"no evaluator {unknown}; have {list(self._evaluators)}.")
    scalars: dict[str, Any] = {}
    pictures: dict[str, np.ndarray] = {}
    for n in names:
      for key, value in self._evaluators[n].run(embedder, params).items():
        if isinstance(value, np.ndarray) and value.ndim == 3:
          pictures[key] = value
        else:
          scalars[key] = value
    return scalars, pictures

  def __repr__(self):
    return "Evaluators(" + ", ".join(f"{n} every {p}" for n, p in self.periods.items()) + ")"


def build_evaluators(evals_config, *, tokenizer: ClipTokenizer, image_size: int, batch_size: int,
                     eval_data_dir: str = "", every_steps: int) -> Evaluators:
  """One evaluator per entry of `evals_config` (config.evals), each with its period: its own
  `every_steps`, 0 or absent meaning `every_steps` (config.eval_every_steps). eval_data_dir:
  config.data.eval_data_dir ("": see eval_data_dir). The entries are checked by config validation
  (kinds, fields, values); a TFDS evaluation set that is not prepared is a
  tfds_eval.EvalDataNotFound (naming the command that prepares it), raised here, before any work."""
  ctx = EvalContext(tokenizer=tokenizer, image_size=int(image_size), batch_size=int(batch_size),
                    eval_data_dir=_resolve_data_dir(eval_data_dir))
  evaluators, periods = {}, {}
  for name, entry in evals_config.items():
    fields = dict(entry.items())
    builder = EVALUATORS.get(fields.pop("kind", None), f"config.evals.{name}.kind")
    periods[name] = int(fields.pop("every_steps", 0) or 0) or int(every_steps)
    evaluators[name] = builder(name, ctx, **fields)
  return Evaluators(evaluators, periods)
