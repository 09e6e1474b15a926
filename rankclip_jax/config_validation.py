"""Checks a config before any work starts, with errors that name the field and the fix."""

from __future__ import annotations

import jax

from rankclip_jax.data import tfds_eval
from rankclip_jax.data.pipeline import PAIR_KINDS, SOURCE_KINDS
from rankclip_jax.evaluation.evaluators import EVAL_KINDS
from rankclip_jax.models.transformer import REMAT_POLICIES
from rankclip_jax.models.two_towers import tower_sizes

LOSSES = ("rankclip", "cyclip", "siglip", "pcclip")
LOSS_STRATEGIES = ("sharded", "plain")
WEIGHT_SCHEDULES = ("ramp", "constant")
RETRIEVAL_SETS = ("coco", "flickr30k")
ZERO_SHOT_TASKS = ("shape", "colour", "count", "combo")


class ConfigError(ValueError):
  """A config field has a value that cannot work; the message names the field and the fix."""


def _require(cond: bool, msg: str):
  if not cond:
    raise ConfigError(msg)


def validate_config(config, *, num_devices: int | None = None,
                    process_count: int | None = None) -> None:
  c = config
  n = jax.device_count() if num_devices is None else num_devices
  p = jax.process_count() if process_count is None else process_count
  _require(c.total_steps > 0, f"config.total_steps={c.total_steps} must be > 0.")
  _require(c.batch_size > 0, f"config.batch_size={c.batch_size} must be > 0.")
  _require(c.batch_size % n == 0,
           f"config.batch_size={c.batch_size} (global) must be divisible by the {n} devices; "
           f"e.g. --config.batch_size={max(n, c.batch_size // n * n)}.")
  _require(c.batch_size % p == 0,
           f"config.batch_size={c.batch_size} must be divisible by the {p} processes.")
  for field in ("log_every_steps", "eval_every_steps", "eval_batch_size"):
    _require(c[field] > 0, f"config.{field}={c[field]} must be > 0.")
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
  _require(c.model.init_scale > 0, f"config.model.init_scale={c.model.init_scale} must be > 0.")
  _require(c.context_length >= 3, f"config.context_length={c.context_length} must be >= 3.")
  _require(c.loss.name in LOSSES, f"config.loss.name={c.loss.name!r}; choose one of {LOSSES}.")
  for w in ("cross_weight", "inmodal_weight"):
    _require(c.loss[w] >= 0, f"config.loss.{w}={c.loss[w]} must be >= 0 (0 switches it off).")
  if c.loss.name == "siglip":
    _require(c.loss.cross_weight == 0 and c.loss.inmodal_weight == 0,
             "config.loss.name='siglip' has no ranking or cyclic terms: set "
             "--config.loss.cross_weight=0 --config.loss.inmodal_weight=0 (or use "
             "configs/siglip_synthetic.py).")
  pairs = c.data.train.kind in PAIR_KINDS
  if c.loss.name == "pcclip" or pairs:
    _require(c.loss.name == "pcclip" and pairs,
             f"config.loss.name={c.loss.name!r} with config.data.train.kind="
             f"{c.data.train.kind!r}: PC-CLIP fine-tuning (loss 'pcclip') trains on image pairs "
             f"({' or '.join(PAIR_KINDS)}) and pairs train only with it; see "
             "configs/pcclip_synthetic.py.")
    _require(c.loss.cross_weight == 0 and c.loss.inmodal_weight == 0,
             "config.loss.name='pcclip' has no ranking terms: set --config.loss.cross_weight=0 "
             "--config.loss.inmodal_weight=0.")
  _require(c.loss.strategy in LOSS_STRATEGIES,
           f"config.loss.strategy={c.loss.strategy!r}; choose one of {LOSS_STRATEGIES}.")
  _require(c.microbatches >= 1 and c.batch_size % (c.microbatches * n) == 0,
           f"config.microbatches={c.microbatches}: the global batch {c.batch_size} must split into "
           f"that many micro-batches, each divisible by the {n} devices.")
  local_rows = c.batch_size // n if c.loss.strategy == "sharded" else c.batch_size
  _require(c.loss.chunk_size >= 0 and (c.loss.chunk_size == 0 or local_rows % c.loss.chunk_size == 0),
           f"config.loss.chunk_size={c.loss.chunk_size} must be 0 (no chunking) or divide the "
           f"{local_rows} rows each device computes (batch {c.batch_size}, strategy "
           f"{c.loss.strategy!r}, {n} devices).")
  _require(c.loss.weight_schedule in WEIGHT_SCHEDULES,
           f"config.loss.weight_schedule={c.loss.weight_schedule!r}; choose one of "
           f"{WEIGHT_SCHEDULES}.")
  _require(0 <= c.optim.warmup_steps <= c.total_steps,
           f"config.optim.warmup_steps={c.optim.warmup_steps} must be in "
           f"[0, config.total_steps={c.total_steps}].")
  _require(c.optim.learning_rate > 0,
           f"config.optim.learning_rate={c.optim.learning_rate} must be > 0.")
  _require(len(c.optim.betas) == 2,
           f"config.optim.betas={c.optim.betas} must be a pair, e.g. (0.9, 0.999).")
  _require(c.checkpoint.every_steps > 0 and c.checkpoint.keep > 0,
           "config.checkpoint.every_steps and config.checkpoint.keep must be > 0.")
  _require(c.get("peak_tflops", 0) >= 0, f"config.peak_tflops={c.get('peak_tflops')} must be >= 0 "
           "(0: the device's peak from rankclip_jax/flops.py).")
  profile = tuple(c.get("profile_steps", (0, 0)))
  _require(len(profile) == 2 and 0 <= profile[0] and (profile[0] == 0 or profile[1] > profile[0]),
           f"config.profile_steps={profile} must be (first, last) with last > first > 0, or (0, 0) "
           "for no profile.")
  _validate_source(c.data.train, "config.data.train")
  lo, hi = c.data.crop_scale
  _require(0 < lo <= hi <= 1, f"config.data.crop_scale={tuple(c.data.crop_scale)} must satisfy "
           "0 < low <= high <= 1 (fractions of the image area), e.g. (0.9, 1.0).")
  _require(c.data.worker_count >= 0, f"config.data.worker_count={c.data.worker_count} must be >= 0.")
  for name, ev in c.evals.items():
    _require(ev.kind in EVAL_KINDS, f"config.evals.{name}.kind={ev.kind!r}; choose one of "
             f"{EVAL_KINDS}.")
    _require(ev.get("every_steps", 0) >= 0,
             f"config.evals.{name}.every_steps must be >= 0 (0: config.eval_every_steps).")
    if ev.kind == "diagnostics" and ev.get("data") is not None:
      _validate_source(ev.data, f"config.evals.{name}.data")
    dataset = ev.get("dataset", "synthetic")
    if ev.kind == "retrieval" and dataset != "synthetic":
      _require(dataset in RETRIEVAL_SETS, f"config.evals.{name}.dataset={dataset!r}; choose "
               f"'synthetic' or one of {RETRIEVAL_SETS}.")
      for field in ("json_path", "image_root"):
        _require(bool(ev.get(field)), f"config.evals.{name}.{field} is required for {dataset} "
                 "retrieval (the Karpathy split file dataset_{coco,flickr30k}.json and the folder "
                 "of images); see configs/common.py: karpathy_retrieval.")
      continue
    if ev.kind in ("zero_shot", "linear_probe") and dataset != "synthetic":
      _require(dataset in tfds_eval.DATASETS,
               f"config.evals.{name}.dataset={dataset!r}; choose 'synthetic' or one of "
               f"{sorted(tfds_eval.DATASETS)}.")
      _require(ev.get("num_examples", 0) >= 0,
               f"config.evals.{name}.num_examples must be >= 0 (0: the whole split).")
      continue
    _require(ev.kind != "linear_probe", f"config.evals.{name}: linear_probe needs a TFDS "
             f"`dataset`, one of {sorted(tfds_eval.DATASETS)}.")
    if ev.kind == "zero_shot":
      _require(ev.task in ZERO_SHOT_TASKS, f"config.evals.{name}.task={ev.task!r}; choose one of "
               f"{ZERO_SHOT_TASKS}.")
    _require(ev.num_examples > 0, f"config.evals.{name}.num_examples must be > 0.")


_PATH_EXAMPLES = {"webdataset": "'/data/cc3m/{00000..00331}.tar'", "csv": "/data/cc3m/train.csv",
                  "csv_pairs": "/data/pairs.csv"}


def _validate_source(src, field: str) -> None:
  _require(src.kind in SOURCE_KINDS,
           f"{field}.kind={src.kind!r}; choose one of {SOURCE_KINDS}.")
  if src.kind == "synthetic_pairs":
    _require(src.num_records > 0, f"{field}.num_records={src.num_records} must be > 0.")
    return
  if src.kind == "synthetic":
    _require(src.num_records > 0, f"{field}.num_records={src.num_records} must be > 0.")
    _require(1 <= src.min_objects <= src.max_objects,
             f"{field}: need 1 <= min_objects ({src.min_objects}) <= max_objects "
             f"({src.max_objects}).")
    return
  path = src.path
  _require(bool(path) and (not isinstance(path, str) or path.strip()),
           f"{field}.path is empty: kind={src.kind!r} reads files; give them with "
           f"--{field}.path={_PATH_EXAMPLES[src.kind]}.")
