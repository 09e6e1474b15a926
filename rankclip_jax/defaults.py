"""The default config and the shared pieces of every experiment config. Each experiment's
get_config() (configs/*.py) starts from base_config() and changes what it needs; every field here
can be overridden on the command line (`--config.loss.cross_weight=0.1`), and configs are locked, so
a misspelt field is an error.

It lives in the package because the library needs it too: a run's saved config is read over these
defaults (so runs written before a field existed still load), and converted models start from them.
`configs/common.py` re-exports this module for the experiment configs.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict

from rankclip_jax import losses

# CLIP's: no weight decay on LayerNorm parameters, biases, the logit scale, position embeddings and
# the class token (paths look like "image/encoder/block_0/ln_1/scale").
NO_DECAY_REGEX = r".*(bias|scale|logit_scale|pos_embedding|cls)$"


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 64  # global, over all devices and processes
  c.image_size = 64
  c.context_length = 32
  c.log_every_steps = 20
  c.eval_every_steps = 500
  c.eval_batch_size = 256
  # Throughput: MFU uses this device's dense peak from rankclip_jax/flops.py, or this (TFLOP/s per
  # device; 0: the table). A jax.profiler trace of steps [first, last) goes to <workdir>/profile
  # when first > 0 (view in TensorBoard's profile tab or Perfetto).
  c.peak_tflops = 0.0
  # TensorBoard event files by CLU's writer where TensorFlow imports ("auto"), or by the tensorboard
  # package alone ("tensorboard": no TensorFlow import, ~4 s less start-up), or "clu" (required).
  c.metric_writer = "auto"
  c.profile_steps = (0, 0)
  # A step whose loss or gradient is not finite (NaN, inf) changes nothing (its update is skipped,
  # counted as train/skipped_nonfinite_steps); this many such steps in a row stop the run.
  c.max_nonfinite_steps = 10

  c.model = ml_collections.ConfigDict()
  c.model.size = "tiny"  # micro | tiny | S/16 | B/32 | B/16 | L/14 (models.SIZES) | custom
  # The towers for size "custom" (set by the OpenCLIP converter for models of other sizes).
  c.model.custom = ml_collections.ConfigDict(dict(
      patch_size=0, image_width=0, image_depth=0, image_heads=0, text_width=0, text_depth=0,
      text_heads=0, embed_dim=0))
  c.model.act = "gelu"  # gelu | gelu_tanh | quick_gelu (OpenAI's CLIP weights)
  c.model.ln_eps = 1e-6  # LayerNorm epsilon (torch's, and so OpenCLIP weights': 1e-5)
  # Start from these weights instead of a random initialisation: a run's workdir (or one of its
  # checkpoints), a model converted by `python -m rankclip_jax.convert`, or an OpenCLIP/OpenAI
  # state dict (.safetensors, .pt). The towers must match config.model (the error says how).
  c.model.init_from = ""
  c.model.pool = "cls"  # cls | gap
  c.model.stem = "patch"  # patch (CLIP's linear patchify) | conv (3x3 stride-2 convolutions)
  # Recompute each transformer block's activations in the backward pass (memory for compute);
  # remat_policy says what is kept: nothing_saveable (the block input only),
  # dots_with_no_batch_dims_saveable (also the projection/MLP matmul outputs), dots_saveable (every
  # matmul output). models/transformer.py REMAT_POLICIES. Pair it with scan_layers=True: on CPU
  # XLA realises the saving only for scanned blocks (docs/performance.md, "Rematerialisation policies").
  c.model.remat = False
  c.model.remat_policy = "nothing_saveable"
  # The next three change how the step computes, never the parameters or (beyond round-off) the
  # numbers. Left at "auto" / None they take the value chosen for the platform the model runs on
  # (models/platform_defaults.py: CPU values measured; GPU and TPU values not measured yet).
  # How attention is computed: auto | einsum (hand-written) | xla (jax.nn.dot_product_attention) |
  # cudnn (its cuDNN fused kernel: GPU, bfloat16/float16 only). models/transformer.py SelfAttention.
  c.model.attention = "auto"
  # Recompute each block's LayerNorm outputs and MLP activation in the backward pass rather than
  # keep them (the same numbers up to round-off, less working memory; on CPU also a shorter step).
  # Independent of remat. models/transformer.py EncoderBlock. None: by platform (CPU: on).
  c.model.recompute_elementwise = config_dict.placeholder(bool)
  # The last block of a tower that pools one token (the text tower's end-of-text token; the image
  # tower's class token with pool="cls") computes that token only: every token's keys and values,
  # one query and one MLP row per example. The same numbers up to round-off, less work; unscanned
  # layers only (scan_layers applies one body to every layer). models/transformer.py Encoder.
  # None: by platform (CPU: on).
  c.model.last_block_pooled_only = config_dict.placeholder(bool)
  # nn.scan over each tower's blocks: parameters stacked on a leading [depth] axis, the step
  # compiled once per tower rather than once per layer (same numbers; see models/transformer.py).
  c.model.scan_layers = False
  # FLIP-style patch dropout (Li et al. 2023): the share of each training image's patch tokens
  # dropped at random before the image tower (class token kept; a new draw per image and step, from
  # (seed, step) and the image's row in the global batch: a resumed run draws what the uninterrupted
  # one would have on the same number of processes; another process count orders a batch's rows
  # differently, so the draws go to other images). The image tower's cost falls by less than the
  # share (the conv stem sees the whole image). Never at evaluation, in rankclip_jax.load or export.
  c.model.patch_dropout = 0.0
  c.model.init_scale = 1 / 0.07  # initial exp(logit_scale), clamped to 100 (CLIP); SigLIP: 10
  c.model.init_bias = -10.0  # initial logit bias, for losses that have one (SigLIP)
  c.model.dtype = "float32"  # compute dtype; parameters and optimizer state stay float32

  c.loss = ml_collections.ConfigDict()
  # Every name of losses.LOSSES: rankclip (CLIP + the ranking terms; both weights 0: CLIP's loss
  # and gradient, the ranking terms still computed and logged, the studies' CLIP) | clip (CLIP
  # alone, nothing else computed: the same loss and gradient at CLIP's own cost) | cyclip (the
  # weights are CyCLIP's lambda_2, lambda_1) | siglip (pairwise sigmoid with a learnable bias; the
  # weights must be 0) | pcclip (PC-CLIP fine-tuning on image pairs; the weights must be 0) | alip
  # (CLIP on the raw text and on a synthetic caption of each image, weighted by consistency gates;
  # the weights must be 0; the training data must give synthetic captions). docs/method.md.
  c.loss.name = "rankclip"
  c.loss.cross_weight = 1 / 16  # cross-modal term's weight (RankCLIP authors: r(t) / 16)
  c.loss.inmodal_weight = 1 / 16  # in-modal term's weight
  c.loss.weight_schedule = "ramp"  # ramp: weight * clip(3 * step / total_steps, 0, 2) | constant
  # How the loss runs over the mesh (rankclip_jax/losses/rowwise.py): "sharded" (each device its own
  # rows against the gathered batch: (N/P) x N memory) | "plain" (full N x N matrices, XLA decides).
  c.loss.strategy = "sharded"
  c.loss.chunk_size = 0  # rows per rematerialised block (0: all local rows at once)
  # Each loss's own numbers, with their defaults: the `fields` of its entry in losses.LOSSES
  # (losses/__init__.py), which also says what each is and the values it may take. Today ALIP's
  # alip_momentum (0.99) and alip_temperature (2.0).
  for field, spec in losses.loss_fields().items():
    c.loss[field] = spec.default

  # Contrastive gradient accumulation (GradCache): embed the global batch in this many micro-batches
  # without gradient, take the loss gradient w.r.t. the embeddings on the whole batch, then
  # backpropagate micro-batch by micro-batch. The gradient equals the full-batch one.
  c.microbatches = 1

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 5e-4
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.0
  c.optim.betas = (0.9, 0.999)
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.no_decay_regex = NO_DECAY_REGEX
  c.optim.grad_clip_norm = 0.0  # 0: no clipping
  # Parameters whose path (e.g. "image/encoder/block_0/attn/query/kernel") fully matches this regex
  # are not trained ("": all are). PC-CLIP freezes the image tower: "image/.*".
  c.optim.freeze_regex = ""

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axis
  c.mesh.fsdp = 1

  c.sharding = ml_collections.ConfigDict()
  # (regex over parameter paths, policy) pairs, first match wins; policy "replicate" or "fsdp"
  # (split the largest divisible dimension over the fsdp mesh axis). Unmatched: replicated.
  c.sharding.rules = ((".*", "replicate"),)
  c.sharding.fsdp_min_size = 2 ** 14  # arrays smaller than this stay replicated under "fsdp"

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.data = ml_collections.ConfigDict()
  c.data.train = synthetic_source(split="train", num_records=1_000_000)
  c.data.worker_count = 0  # grain worker processes (0: read in the main process with threads)
  # Training crop: a random box of this fraction of the image area (aspect 3/4..4/3), resized to
  # image_size (open_clip's CLIP recipe). Evaluation: resize the shorter side + centre crop.
  c.data.crop_scale = (0.9, 1.0)
  # Where TFDS evaluation sets (ImageNet, CIFAR, ...) are prepared as ArrayRecord; empty:
  # $TFDS_DATA_DIR, else ~/tensorflow_datasets. See rankclip_jax/data/tfds_eval.py.
  c.data.eval_data_dir = ""
  c.data.num_threads = 4

  c.evals = synthetic_evals()
  return c


def data_source(kind: str = "synthetic", **fields) -> ml_collections.ConfigDict:
  """A training data source. Every kind's fields are present (the ones a kind does not use are
  ignored), so that the source can be switched on the command line of any config:

    --config.data.train.kind=csv --config.data.train.path=/data/cc3m/train.csv
    --config.data.train.kind=webdataset --config.data.train.path='/data/cc3m/{00000..00331}.tar'

  kind: synthetic (the embedded scenes) | webdataset (img2dataset tar shards) | csv (CSV/TSV).
  path: file, directory, glob or brace pattern; several separated by commas (webdataset, csv).
  image_key / caption_key: webdataset member extensions ('jpg;png' tries each in turn; default
    'jpg;jpeg;png;webp' and 'txt') or csv column names (default 'image' and 'caption', the
    RankCLIP/CyCLIP CSV format); empty means that default.
  delimiter: csv only; empty means tab for .tsv files and comma otherwise.
  synthetic_caption_key: a second, synthetic caption of each image (made by any captioning model),
    read only when the loss needs one (ALIP): the csv column, or the webdataset member extension
    (e.g. 'syn.txt' for members <key>.syn.txt). An empty or missing one skips the example, counted
    as an empty caption.
  captioner_error: synthetic only, for ALIP: the share of attributes the embedded scenes'
    "captioner" gets wrong (see data/synthetic/captioner.py).
  max_unreadable_shard_fraction: webdataset only: shards damaged before their first member are
    skipped (counted, named in the log) until more than this share of all shards is; then the run
    stops at start-up. 0.1: a wrong path or a mostly broken corpus stops, while the few bad shards
    of a web corpus (well under 1%) do not (data/webdataset.py).
  weights, names: webdataset_stream only, for several sources in one `path` ('a::b'): their
    weights ('1::3'; empty: equal) and names in the logged shares data/source_share/<name>
    ('cc12m::laion'; empty: the last folder of each path).
  cycle_length, shuffle_window: webdataset_stream only: shards each reader keeps open and takes
    examples from in turn (16), and the window of examples drawn in random order (1024): a batch
    of 256 then holds examples of all 16 shards (data/tar_stream.py).
  The synthetic fields (split, num_records, ...) are described in synthetic_source.
  """
  c = ml_collections.ConfigDict(dict(
      kind=kind, path="", image_key="", caption_key="", delimiter="", synthetic_caption_key="",
      max_unreadable_shard_fraction=0.1, weights="", names="", cycle_length=16,
      shuffle_window=1024,
      split="train", num_records=1_000_000, min_objects=1, max_objects=3, caption_mode="random",
      monochrome_fraction=0.0, captioner_error=0.2))
  c.update(fields)
  return c


def synthetic_source(*, split: str, num_records: int, min_objects: int = 1, max_objects: int = 3,
                     caption_mode: str = "random", monochrome_fraction: float = 0.0
                     ) -> ml_collections.ConfigDict:
  """The embedded procedurally generated scenes (rankclip_jax.data.synthetic).

  monochrome_fraction: share of grey-level images with colourless captions (takes away the colour
  shortcut so that shape is learnt; see SyntheticScenes).
  """
  return data_source("synthetic", split=split, num_records=num_records, min_objects=min_objects,
                     max_objects=max_objects, caption_mode=caption_mode,
                     monochrome_fraction=monochrome_fraction)


def synthetic_evals(num_examples: int = 512) -> ml_collections.ConfigDict:
  """Zero-shot shape / colour / count / unseen shape-colour combination, and retrieval."""
  def zero_shot(task, split="test", min_objects=1, max_objects=1):
    return dict(kind="zero_shot", task=task, split=split, min_objects=min_objects,
                max_objects=max_objects, num_examples=num_examples, seed=0)
  return ml_collections.ConfigDict(dict(
      zs_shape=zero_shot("shape"),
      zs_colour=zero_shot("colour"),
      zs_count=zero_shot("count", max_objects=3),
      zs_heldout_combo=zero_shot("combo", split="held_out"),
      retrieval=dict(kind="retrieval", split="test", min_objects=1, max_objects=3,
                     num_examples=num_examples, seed=0),
      # Modality gap, alignment/uniformity, ranking consistency, embedding-space picture.
      diagnostics=dict(kind="diagnostics", split="test", min_objects=1, max_objects=3,
                       num_examples=num_examples, seed=0),
  ))


# The zero-shot benchmarks of the RankCLIP paper (ImageNet-1k, its shifts, CIFAR) by our dataset names
# (rankclip_jax.data.tfds_eval.DATASETS).
PAPER_ZERO_SHOT = ("imagenet1k", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r",
                   "cifar10", "cifar100")


def tfds_zero_shot(dataset: str, *, split: str = "", num_examples: int = 0, templates: str = "",
                   data_dir: str = "") -> dict:
  """Zero-shot classification on a TFDS evaluation set (split "": its test/validation split;
  num_examples 0: all; templates "": the dataset's own, e.g. "imagenet1k_simple" for OpenAI's 7;
  data_dir "": config.data.eval_data_dir)."""
  return dict(kind="zero_shot", dataset=dataset, split=split, num_examples=num_examples,
              templates=templates, data_dir=data_dir)


def tfds_evals(names: str) -> ml_collections.ConfigDict:
  """config.evals from a comma-separated list of evaluation sets ("none" or "": no evaluation);
  the config argument of the real-data configs: --config=configs/rankclip_cc3m.py:cifar10,cifar100"""
  names = [] if names.strip() in ("", "none") else [n.strip() for n in names.split(",") if n.strip()]
  return ml_collections.ConfigDict({n: tfds_zero_shot(n) for n in names})


def karpathy_retrieval(dataset: str, json_path: str, image_root: str, *, split: str = "test",
                       num_examples: int = 0) -> dict:
  """Image<->text retrieval on MSCOCO 5k ("coco") or Flickr30k 1k ("flickr30k") test: the
  Karpathy split file (dataset_coco.json / dataset_flickr30k.json) and the folder of images
  (COCO: the folder holding val2014/; Flickr30k: flickr30k-images/)."""
  return dict(kind="retrieval", dataset=dataset, json_path=json_path, image_root=image_root,
              split=split, num_examples=num_examples)


def linear_probe(dataset: str, *, train_split: str = "train", split: str = "",
                 num_train: int = 0, num_examples: int = 0, data_dir: str = "") -> dict:
  """Linear probe on a TFDS evaluation set (the paper's Table 3): fit on train_split, report top-1
  on split ("": the dataset's test/validation split); counts 0: all examples."""
  return dict(kind="linear_probe", dataset=dataset, train_split=train_split, split=split,
              num_train=num_train, num_examples=num_examples, data_dir=data_dir)


def over_defaults(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A config saved with a run (a checkpoint's JSON) over today's base_config(), so that runs
  written before a field existed still load with that field's default; `evals` is taken as saved
  (a run's evaluators are its own), not merged."""

  def merge(node, values: dict[str, Any]):
    for key, value in values.items():
      if (isinstance(value, dict) and key in node
          and isinstance(node[key], ml_collections.ConfigDict)):
        merge(node[key], value)
      else:
        node[key] = value

  config = base_config()
  saved = dict(saved)
  evals = saved.pop("evals", {})
  merge(config, saved)
  config.evals = ml_collections.ConfigDict(evals)
  return config
