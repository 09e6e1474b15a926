"""RankCLIP, ViT-B/32, on Conceptual Captions 3M: the authors' recipe (docs/method.md).

Data it expects: CC3M as webdataset tar shards written by img2dataset (`{key}.jpg` + `{key}.txt`
[+ `{key}.json`] per example), e.g.
  --config.data.train.path='/data/cc3m/{00000..00331}.tar'
or CSV/TSV files of (image path, caption) rows:
  --config.data.train.kind=csv --config.data.train.path=/data/cc3m/train.csv
docs/data.md, "Obtaining CC3M", says how to write them with img2dataset. The shards are indexed at
start-up (kind `webdataset`): at CC3M's size that costs seconds on a GPU host and ~0.3 GB a
process, for a global shuffle every epoch; `--config.data.train.kind=webdataset_stream` reads them
as streams instead, the better choice from a few tens of millions of pairs on
(docs/performance.md, "Tar shards: streamed vs random access").

Evaluation: zero-shot ImageNet-1k, -V2, -Sketch, -A, -R, CIFAR-10/100 from TFDS ArrayRecord files
under --config.data.eval_data_dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets); a set that is
not prepared stops the run at start-up with the command that prepares it. Choose the sets with the
config argument: --config=configs/rankclip_cc3m.py:cifar10,cifar100 (or :none).

Recipe: AdamW lr 5e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.1 (none on norms, biases,
logit_scale), 10k warmup steps then cosine, batch 128, 64 epochs of CC3M (~2.87M pairs), 224 px,
CLIP BPE tokenizer with context 77, ranking weights r(t)/16 with the ramp schedule.
"""

from configs import common

CC3M_TRAIN_PAIRS = 2_870_000  # what img2dataset typically retrieves of the 3.3M URLs
EPOCHS = 64


def get_config(evals: str | None = None):
  """evals: the config argument, a comma-separated list of zero-shot evaluation sets (default: the
  paper's, common.PAPER_ZERO_SHOT) or "none": --config=configs/rankclip_cc3m.py:cifar10,cifar100"""
  c = common.base_config()
  c.batch_size = 128
  c.total_steps = EPOCHS * CC3M_TRAIN_PAIRS // c.batch_size
  c.image_size = 224
  c.context_length = 77
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.model.size = "B/32"
  c.loss.cross_weight = 1 / 16
  c.loss.inmodal_weight = 1 / 16
  c.loss.weight_schedule = "ramp"
  c.optim.learning_rate = 5e-4
  c.optim.warmup_steps = 10_000
  c.optim.betas = (0.9, 0.999)
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.checkpoint.every_steps = 5000
  c.data.train = common.data_source("webdataset", path="")  # required: see the docstring
  c.data.worker_count = 8
  c.evals = common.tfds_evals(",".join(common.PAPER_ZERO_SHOT) if evals is None else evals)
  return c
