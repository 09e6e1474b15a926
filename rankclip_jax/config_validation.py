"""Checks a config before any work starts, with errors that name the field and the fix.

The only place where fields are checked against each other and against the registries of names
(data sources, losses, loss strategies, weight schedules, evaluators, zero-shot tasks): the
builders downstream take what is checked here as given.

- validate_config: a training run (main.py): everything, including the range of every numeric
  field (_validate_ranges: seeds within 32 bits, counts and periods positive, shares in [0, 1],
  floats finite), so that no value fails later with a traceback.
- validate_for_evaluation: evaluating a run's checkpoint (evaluate.py): the model and the evals;
  the training fields were checked when the run trained, on its own device count.
"""

from __future__ import annotations

import math
import re

import jax

from rankclip_jax import metric_writer
from rankclip_jax import sharding as shd
from rankclip_jax.data import files, karpathy, labelled_images, synthetic, tar_stream, tfds_eval
from rankclip_jax.data.sources import SOURCES
from rankclip_jax.errors import ConfigError  # re-exported: callers catch it from here
from rankclip_jax.evaluation import evaluators as evals_lib
from rankclip_jax.losses import LOSSES, SCHEDULES
from rankclip_jax.models import platform_defaults
from rankclip_jax.models.transformer import REMAT_POLICIES
from rankclip_jax.models.two_towers import tower_sizes
from rankclip_jax.objective import STRATEGIES


def _require(cond: bool, msg: str):
  if not cond:
    raise ConfigError(msg)


def _choose(registry, name, field: str):
  _require(name in registry, registry.unknown(name, field))


def validate_config(config, *, num_devices: int | None = None,
                    process_count: int | None = None) -> None:
  """All of a training run's config (see the module docstring)."""
  n = jax.device_count() if num_devices is None else num_devices
  p = jax.process_count() if process_count is None else process_count
  _validate_model(config)
  _validate_run(config, n, p)
  _validate_loss(config, n)
  _validate_optim(config)
  _validate_data(config)
  _validate_evals(config)
  _validate_ranges(config)


def validate_for_evaluation(config) -> None:
  """What evaluating a run's checkpoint needs of its config: the model and the evals."""
  _require(config.eval_batch_size > 0,
           f"config.eval_batch_size={config.eval_batch_size} must be > 0.")
  _validate_model(config)
  _choose(LOSSES, config.loss.name, "config.loss.name")
  _validate_evals(config)


def _validate_model(c) -> None:
  _require(c.get("metric_writer", "auto") in metric_writer.CHOICES,
           f"config.metric_writer={c.get('metric_writer')!r}; choose one of "
           f"{list(metric_writer.CHOICES)}.")
  try:
    patch = tower_sizes(c.model).patch_size
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(c.image_size % patch == 0,
           f"config.image_size={c.image_size} must be a multiple of the patch size {patch} of "
           f"model size {c.model.size!r}.")
  _require(c.model.remat_policy in REMAT_POLICIES,
           f"config.model.remat_policy={c.model.remat_policy!r}; choose one of "
           f"{sorted(REMAT_POLICIES)}.")
  try:  # the attention name, and cudnn where it cannot run (off a GPU, a 32-bit dtype)
    platform_defaults.resolve(c.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(0.0 <= c.model.patch_dropout < 1.0,
           f"config.model.patch_dropout={c.model.patch_dropout} must be in [0, 1) (the share of "
           "patch tokens dropped in training; 0: none).")
  _require(c.model.init_scale > 0, f"config.model.init_scale={c.model.init_scale} must be > 0.")
  _require(c.context_length >= 3, f"config.context_length={c.context_length} must be >= 3.")
  try:
    shd.validate_rules(c.sharding.rules)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate_run(c, n: int, p: int) -> None:
  _require(c.total_steps > 0, f"config.total_steps={c.total_steps} must be > 0.")
  _require(c.batch_size > 0, f"config.batch_size={c.batch_size} must be > 0.")
  _require(c.batch_size % n == 0,
           f"config.batch_size={c.batch_size} (global) must be divisible by the {n} devices; "
           f"e.g. --config.batch_size={max(n, c.batch_size // n * n)}.")
  _require(c.batch_size % p == 0,
           f"config.batch_size={c.batch_size} must be divisible by the {p} processes.")
  for field in ("log_every_steps", "eval_every_steps", "eval_batch_size"):
    _require(c[field] > 0, f"config.{field}={c[field]} must be > 0.")
  _require(c.microbatches >= 1 and c.batch_size % (c.microbatches * n) == 0,
           f"config.microbatches={c.microbatches}: the global batch {c.batch_size} must split into "
           f"that many micro-batches, each divisible by the {n} devices.")
  _require(c.get("max_nonfinite_steps", 1) >= 1,
           f"config.max_nonfinite_steps={c.get('max_nonfinite_steps')} must be >= 1.")
  for field in ("every_steps", "keep"):
    _require(c.checkpoint[field] > 0,
             f"config.checkpoint.{field}={c.checkpoint[field]} must be > 0.")
  _require(c.get("peak_tflops", 0) >= 0, f"config.peak_tflops={c.get('peak_tflops')} must be >= 0 "
           "(0: the device's peak from rankclip_jax/flops.py).")
  profile = tuple(c.get("profile_steps", (0, 0)))
  _require(len(profile) == 2 and 0 <= profile[0] and (profile[0] == 0 or profile[1] > profile[0]),
           f"config.profile_steps={profile} must be (first, last) with last > first > 0, or (0, 0) "
           "for no profile.")


# jax.random.key folds a seed to 32 bits (2**32 trains like seed 0) and grain's shuffle refuses
# larger ones; numpy's generators refuse negative ones.
_SEED = ("an integer in [0, 2**32 - 1]", lambda v: 0 <= v < 2 ** 32)
_POSITIVE = ("> 0", lambda v: v > 0)
_NON_NEGATIVE = (">= 0", lambda v: v >= 0)
_SHARE = ("in [0, 1]", lambda v: 0 <= v <= 1)
_MESH_AXIS = ("-1 (the devices the other axis leaves) or >= 1", lambda v: v == -1 or v >= 1)
# The numeric fields the checks above leave open: (field, (allowed values, test)).
_RANGES = (
    ("seed", _SEED), ("image_size", _POSITIVE), ("model.ln_eps", _POSITIVE),
    ("optim.eps", _NON_NEGATIVE), ("optim.weight_decay", _NON_NEGATIVE),
    ("optim.grad_clip_norm", (">= 0 (0: no clipping)", _NON_NEGATIVE[1])),
    ("optim.final_lr_fraction", _SHARE), ("mesh.data", _MESH_AXIS), ("mesh.fsdp", _MESH_AXIS),
    ("sharding.fsdp_min_size", _NON_NEGATIVE),
    ("data.num_threads", (">= 0 (0: grain reads in the main thread)", _NON_NEGATIVE[1])),
    ("data.train.monochrome_fraction", _SHARE),
)


def _field(c, dotted: str):
  for key in dotted.split("."):
    c = c[key]
  return c


def _validate_ranges(c) -> None:
  """Every numeric field within what the code that reads it takes (see _RANGES): one line
  naming the field, its value and the values allowed."""
  _require_finite(c, "config")
  for field, (allowed, ok) in _RANGES:
    value = _field(c, field)
    _require(ok(value), f"config.{field}={value!r} must be {allowed}.")
  _require(c.mesh.data != -1 or c.mesh.fsdp != -1,
           "config.mesh.data=-1 and config.mesh.fsdp=-1: set one of them (-1: the rest).")
  train = c.data.train
  synthetic_train = not SOURCES.get(train.kind).path_example  # checked by _validate_source
  sources = ([("config.data.train", train)] if synthetic_train else []) + [
      (f"config.evals.{name}", ev) for name, ev in c.evals.items()]
  draws = [where for where, src in sources if src is train or _draws_scenes(src)]
  _require(not draws or 16 <= c.image_size <= 1024,
           f"config.image_size={c.image_size} must be in [16, 1024]: "
           f"{(draws or [''])[0]} draws synthetic scenes, which are made at that size.")
  for where, src in sources:
    for key, (allowed, ok) in (("seed", _SEED), ("num_train", _NON_NEGATIVE)):
      _require(key not in src or ok(src[key]), f"{where}.{key}={src.get(key)!r} must be "
               f"{allowed}.")
    if "max_objects" in src and (src is train or _draws_scenes(src)):
      _require(1 <= src.min_objects <= src.max_objects <= synthetic.MAX_OBJECTS,
               f"{where}: min_objects={src.min_objects}, max_objects={src.max_objects}; need "
               f"1 <= min_objects <= max_objects <= {synthetic.MAX_OBJECTS}.")


def _draws_scenes(ev) -> bool:
  """An evaluation on synthetic scenes (the default dataset of every kind that has one)."""
  return ev.get("dataset", "synthetic") == "synthetic"


def _require_finite(node, where: str) -> None:
  """No float field (nor tuple element) is NaN or infinite."""
  for key, value in node.items():
    field = f"{where}.{key}"
    if hasattr(value, "items"):
      _require_finite(value, field)
    elif any(isinstance(v, float) and not math.isfinite(v)
             for v in (value if isinstance(value, (tuple, list)) else (value,))):
      _require(False, f"{field}={value!r} must be a finite number.")


def _validate_loss(c, n: int) -> None:
  _choose(LOSSES, c.loss.name, "config.loss.name")
  loss = LOSSES.get(c.loss.name)
  for w in ("cross_weight", "inmodal_weight"):
    _require(c.loss[w] >= 0, f"config.loss.{w}={c.loss[w]} must be >= 0 (0 switches it off).")
  if not loss.weighted and not loss.pairs:
    _require(c.loss.cross_weight == 0 and c.loss.inmodal_weight == 0,
             f"config.loss.name={c.loss.name!r} has no ranking or cyclic terms: set "
             "--config.loss.cross_weight=0 --config.loss.inmodal_weight=0 (or use "
             f"configs/{c.loss.name}_synthetic.py).")
  for field, spec in loss.fields.items():  # the loss's own numbers (losses.LOSSES)
    value = c.loss[field]
    _require(spec.allowed(value),
             f"config.loss.{field}={value} must be {spec.allowed_text} (loss {c.loss.name!r}: "
             f"{spec.doc}; default {spec.default}).")
  _choose(SOURCES, c.data.train.kind, "config.data.train.kind")
  if "synthetic_text" in loss.texts:
    _validate_synthetic_captions(c)
  pairs = SOURCES.get(c.data.train.kind).pairs
  if loss.pairs or pairs:
    pair_losses = [k for k, v in LOSSES.items() if v.pairs]
    pair_kinds = [k for k, v in SOURCES.items() if v.pairs]
    _require(loss.pairs and pairs,
             f"config.loss.name={c.loss.name!r} with config.data.train.kind="
             f"{c.data.train.kind!r}: PC-CLIP fine-tuning (loss {' or '.join(map(repr, pair_losses))})"
             f" trains on image pairs ({' or '.join(pair_kinds)}) and pairs train only with it; "
             "see configs/pcclip_synthetic.py.")
    _require(c.loss.cross_weight == 0 and c.loss.inmodal_weight == 0,
             f"config.loss.name={c.loss.name!r} has no ranking terms: set "
             "--config.loss.cross_weight=0 --config.loss.inmodal_weight=0.")
  _choose(STRATEGIES, c.loss.strategy, "config.loss.strategy")
  local_rows = c.batch_size // n if c.loss.strategy == "sharded" else c.batch_size
  _require(c.loss.chunk_size >= 0 and (c.loss.chunk_size == 0 or local_rows % c.loss.chunk_size == 0),
           f"config.loss.chunk_size={c.loss.chunk_size} must be 0 (no chunking) or divide the "
           f"{local_rows} rows each device computes (batch {c.batch_size}, strategy "
           f"{c.loss.strategy!r}, {n} devices).")
  _choose(SCHEDULES, c.loss.weight_schedule, "config.loss.weight_schedule")


def _validate_synthetic_captions(c) -> None:
  """A loss that trains on a second, synthetic caption of each image (ALIP): a training source that
  gives one."""
  name = c.loss.name
  src = c.data.train
  kind = SOURCES.get(src.kind)
  with_captions = [k for k, v in SOURCES.items() if v.synthetic_captions]
  _require(kind.synthetic_captions,
           f"config.loss.name={name!r} trains on a synthetic caption of each image besides its "
           f"text, and config.data.train.kind={src.kind!r} has none: use one of "
           f"{', '.join(with_captions)} (see configs/alip_synthetic.py and docs/data.md, "
           "'Synthetic captions').")
  if kind.path_example:  # files: the column or member holding the captions
    _require(bool(src.get("synthetic_caption_key", "").strip()),
             f"config.loss.name={name!r} trains on a synthetic caption of each image besides its "
             "text, and config.data.train.synthetic_caption_key is empty: name where your "
             "captioner's captions are, --config.data.train.synthetic_caption_key=<column> for "
             "kind 'csv', or the member extension, e.g. =syn.txt for <key>.syn.txt, for kind "
             "'webdataset'.")
  else:
    _require(0 <= src.get("captioner_error", 0.0) <= 1,
             f"config.data.train.captioner_error={src.get('captioner_error')} must be in [0, 1].")


def _validate_optim(c) -> None:
  _require(0 <= c.optim.warmup_steps <= c.total_steps,
           f"config.optim.warmup_steps={c.optim.warmup_steps} must be in "
           f"[0, config.total_steps={c.total_steps}].")
  _require(c.optim.learning_rate > 0,
           f"config.optim.learning_rate={c.optim.learning_rate} must be > 0.")
  _require(len(c.optim.betas) == 2,
           f"config.optim.betas={c.optim.betas} must be a pair, e.g. (0.9, 0.999).")
  for field in ("no_decay_regex", "freeze_regex"):
    try:
      re.compile(c.optim.get(field, ""))
    except re.error as e:
      raise ConfigError(f"config.optim.{field}={c.optim[field]!r} is not a valid regex: {e}."
                        ) from None


def _validate_data(c) -> None:
  _validate_source(c.data.train, "config.data.train")
  lo, hi = c.data.crop_scale
  _require(0 < lo <= hi <= 1, f"config.data.crop_scale={tuple(c.data.crop_scale)} must satisfy "
           "0 < low <= high <= 1 (fractions of the image area), e.g. (0.9, 1.0).")
  _require(c.data.worker_count >= 0, f"config.data.worker_count={c.data.worker_count} must be >= 0.")


def _validate_source(src, field: str) -> None:
  _choose(SOURCES, src.kind, f"{field}.kind")
  kind = SOURCES.get(src.kind)
  if kind.path_example:  # reads files
    path = src.path
    _require(bool(path) and (not isinstance(path, str) or path.strip()),
             f"{field}.path is empty: kind={src.kind!r} reads files; give them with "
             f"--{field}.path={kind.path_example}.")
    if src.kind == "webdataset_stream":
      try:
        tar_stream.parse_sources(path, src.weights, src.names, field)
      except (tar_stream.StreamConfigError, files.DataPathError) as e:
        _require(False, str(e))
      _require(src.cycle_length >= 1 and src.shuffle_window >= 1,
               f"{field}.cycle_length={src.cycle_length} and {field}.shuffle_window="
               f"{src.shuffle_window} must be >= 1 (shards open per reader, examples per "
               "shuffle window).")
    fraction = src.get("max_unreadable_shard_fraction", 0.1)
    _require(0 <= fraction <= 1, f"{field}.max_unreadable_shard_fraction={fraction} must be in "
             "[0, 1] (the share of tar shards that may be unreadable; 0.1 by default).")
    return
  _require(src.num_records > 0, f"{field}.num_records={src.num_records} must be > 0.")
  if src.kind == "synthetic":
    _require(1 <= src.min_objects <= src.max_objects,
             f"{field}: need 1 <= min_objects ({src.min_objects}) <= max_objects "
             f"({src.max_objects}).")


def _validate_evals(c) -> None:
  for name, ev in c.evals.items():
    field = f"config.evals.{name}"
    _choose(evals_lib.EVALUATORS, ev.get("kind"), f"{field}.kind")
    _require(ev.get("every_steps", 0) >= 0, f"{field}.every_steps={ev.get('every_steps')} must "
             "be >= 0 (0: config.eval_every_steps).")
    _validate_eval_fields(ev, field)
    if ev.kind == "diagnostics" and ev.get("data") is not None:
      _validate_source(ev.data, f"{field}.data")
    dataset = ev.get("dataset", "synthetic")
    if ev.kind == "retrieval" and dataset != "synthetic":
      _require(dataset in karpathy.RETRIEVAL_SETS, f"{field}.dataset={dataset!r}; choose "
               f"'synthetic' or one of {karpathy.RETRIEVAL_SETS}.")
      for f in ("json_path", "image_root"):
        _require(bool(ev.get(f)), f"{field}.{f} is required for {dataset} retrieval (the "
                 "Karpathy split file dataset_{coco,flickr30k}.json and the folder of images); "
                 "see rankclip_jax/defaults.py: karpathy_retrieval.")
      continue
    if ev.kind in ("zero_shot", "linear_probe") and dataset != "synthetic":
      _require(dataset in tfds_eval.DATASETS or dataset in labelled_images.LAYOUTS,
               f"{field}.dataset={dataset!r}; choose 'synthetic', one of "
               f"{sorted(tfds_eval.DATASETS)}, or {' or '.join(map(repr, labelled_images.LAYOUTS))}"
               " for your own labelled images.")
      _validate_labelled_fields(ev, field, dataset)
      continue
    _require(ev.kind != "linear_probe", f"{field}: linear_probe needs a `dataset`: one of "
             f"{sorted(tfds_eval.DATASETS)}, or {' or '.join(map(repr, labelled_images.LAYOUTS))}"
             " for your own labelled images.")
    if ev.kind == "zero_shot":
      _choose(synthetic.ZERO_SHOT_TASKS, ev.get("task"), f"{field}.task")
    _require(ev.num_examples > 0, f"{field}.num_examples must be > 0.")


def _validate_labelled_fields(ev, field: str, dataset: str) -> None:
  """The fields of a zero_shot or linear_probe entry on a TFDS set or on the user's own labelled
  images (dataset "folder" or "csv"; their files are read when the evaluators are built)."""
  _require(ev.get("num_examples", 0) >= 0,
           f"{field}.num_examples must be >= 0 (0: the whole split or set).")
  templates = ev.get("templates", "")
  if templates and not labelled_images.is_templates_file(templates):
    try:
      tfds_eval.templates(templates)
    except KeyError as e:
      _require(False, f"{field}.templates={templates!r}: {e.args[0]} Or give a .json file "
               "holding a list of templates, each with one '{}'.")
  if dataset not in labelled_images.LAYOUTS:
    return
  what = ("a folder with one subfolder per class" if dataset == "folder"
          else "a CSV/TSV of (image path, label) rows")
  for key in ("train_path", "path") if ev.kind == "linear_probe" else ("path",):
    value = ev.get(key, "")
    _require(bool(value) and (not isinstance(value, str) or value.strip()),
             f"{field}.{key} is empty: dataset={dataset!r} reads {what}; give it with "
             f"--{field}.{key}=<path>.")
  if dataset == "csv":
    _require(ev.get("image_key", "image") != ev.get("label_key", "label"),
             f"{field}.image_key and {field}.label_key are both {ev.get('image_key')!r}; name the "
             "column of image paths and the column of labels.")


def _validate_eval_fields(ev, field: str) -> None:
  """Every field of an evals entry is one its kind's builder takes (a misspelt field in a config
  file would otherwise be ignored), and the ones it needs are there."""
  takes = evals_lib.COMMON_FIELDS + evals_lib.kind_fields(ev.kind)
  unknown = [key for key in ev if key not in takes]
  _require(not unknown, f"{field}: {ev.kind} has no field {', '.join(map(repr, unknown))}; its "
           f"fields: {', '.join(takes)}.")
  missing = [key for key in evals_lib.required_fields(ev.kind) if key not in ev]
  _require(not missing, f"{field}: {ev.kind} needs {', '.join(map(repr, missing))} "
           f"(e.g. --{field}.{missing[0] if missing else ''}=...).")
