"""Configs: every experiment file parses, overrides work, typos fail before any work."""

import glob
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common

from rankclip_jax.config_validation import ConfigError, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every experiment config (configs/common.py and __init__.py hold shared pieces, no get_config).
CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if "def get_config(" in open(p, encoding="utf-8").read())
# What a user adds to the configs that need it, as in their docstrings and the README: the config
# argument after ":" (each config's default too, "") and the data the real-data configs train on.
CC3M = ["--config.data.train.path=/data/cc3m/{00000..00331}.tar"]
CONFIG_ARGS = {"configs/pcclip_synthetic.py": [("", []), (":runs/other", [])],
               "configs/rankclip_cc3m.py": [("", CC3M), (":cifar10,cifar100", CC3M),
                                            (":none", CC3M)],
               "configs/clip_cc3m.py": [("", CC3M), (":cifar10", CC3M)]}


def parse(argv):
  """Parses argv the way main.py does, with a fresh flag registry."""
  fv = flags.FlagValues()
  # config_flags registers one flag per override it finds in argv when the flag is defined.
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=["prog"] + argv)
  fv(["prog"] + argv)
  return fv.config


@pytest.mark.parametrize("path,arg,extra", [
    pytest.param(path, arg, extra, id=path + arg) for path in CONFIGS
    for arg, extra in CONFIG_ARGS.get(path, [("", [])])])
def test_every_config_parses_and_validates(path, arg, extra):
  c = parse([f"--config={path}{arg}"] + extra)
  validate_config(c, num_devices=8, process_count=1)  # a ConfigError fails the test
  if path == "configs/pcclip_synthetic.py":
    assert c.model.init_from == (arg[1:] or "runs/demo")
  if "cc3m" in path:  # the argument chooses the evaluation sets; the paper's by default
    names = [n for n in arg[1:].split(",") if n != "none"] if arg else common.PAPER_ZERO_SHOT
    assert sorted(c.evals) == sorted(names)


def test_the_config_list_is_complete():
  assert {"configs/rankclip_synthetic.py", "configs/pcclip_synthetic.py",
          "configs/clip_cc3m.py"} <= set(CONFIGS) and "configs/common.py" not in CONFIGS
  assert set(CONFIG_ARGS) <= set(CONFIGS)  # no stale entries


def test_override_plain_fields():
  c = parse(["--config=configs/rankclip_synthetic.py", "--config.total_steps=7",
             "--config.batch_size=16", "--config.seed=3", "--config.loss.cross_weight=0.5",
             "--config.loss.inmodal_weight=0", "--config.model.size=micro",
             "--config.optim.betas=(0.9,0.98)", "--config.sharding.rules=(('.*kernel','fsdp'),)"])
  assert (c.total_steps, c.batch_size, c.seed) == (7, 16, 3)
  assert c.loss.cross_weight == 0.5 and c.loss.inmodal_weight == 0.0
  assert c.model.size == "micro"
  assert tuple(c.optim.betas) == (0.9, 0.98)
  assert tuple(map(tuple, c.sharding.rules)) == ((".*kernel", "fsdp"),)


def test_clip_config_is_rankclip_with_zero_weights():
  r = parse(["--config=configs/rankclip_synthetic.py"])
  c = parse(["--config=configs/clip_synthetic.py"])
  assert c.loss.cross_weight == 0 and c.loss.inmodal_weight == 0
  r.loss.cross_weight = 0.0
  r.loss.inmodal_weight = 0.0
  assert r.to_dict() == c.to_dict()


def test_typo_in_override_is_an_error():
  with pytest.raises(Exception, match="crossweight"):
    parse(["--config=configs/rankclip_synthetic.py", "--config.loss.crossweight=0.1"])


def test_typo_fails_main_before_any_work(tmp_path):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/rankclip_synthetic.py",
       f"--workdir={tmp_path / 'run'}", "--config.totl_steps=5"],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "totl_steps" in proc.stderr
  assert not (tmp_path / "run").exists()  # nothing was created


def test_entry_points_import_together():
  """main, evaluate and convert share --workdir and --step (absl flags are global to a process:
  a notebook or a script may import all three)."""
  proc = subprocess.run(
      [sys.executable, "-c", "import main, rankclip_jax.evaluate, rankclip_jax.convert\n"
       "from absl import flags\n"
       "flags.FLAGS(['prog', '--workdir=runs/x', '--step=3'])\n"
       "print(flags.FLAGS.workdir, flags.FLAGS.step, rankclip_jax.evaluate._WORKDIR())"],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["runs/x", "3", "runs/x"]


@pytest.mark.parametrize("field,value,match", [
    ("model.size", "B/33", "config.model.size"),
    ("batch_size", 12, "divisible by the 8 devices"),
    ("loss.weight_schedule", "linear", "config.loss.weight_schedule"),
    ("loss.cross_weight", -1.0, "config.loss.cross_weight"),
    ("image_size", 60, "multiple of the patch size"),
    ("optim.warmup_steps", 5000, "config.optim.warmup_steps"),
    ("loss.name", "infonce", "config.loss.name"),
    ("loss.strategy", "ring", "config.loss.strategy"),
    ("loss.chunk_size", 3, "config.loss.chunk_size=3 must be 0 .* divide the 8 rows"),
    ("microbatches", 3, "config.microbatches=3"),
    ("model.patch_dropout", 1.0, "config.model.patch_dropout=1.0 must be in"),
    ("model.init_scale", 0.0, "config.model.init_scale"),
    ("model.remat_policy", "dots", "config.model.remat_policy='dots'; choose one of"),
    # Every numeric field: its value, and the values it takes, on one line.
    ("seed", -1, r"config.seed=-1 must be an integer in \[0, 2\*\*32 - 1\]"),
    ("seed", 2 ** 32, r"config.seed=4294967296 must be an integer in \[0, 2\*\*32 - 1\]"),
    ("data.num_threads", -2, r"config.data.num_threads=-2 must be >= 0 \(0: grain reads"),
    ("data.worker_count", -1, "config.data.worker_count=-1 must be >= 0"),
    ("image_size", 0, "config.image_size=0 must be > 0"),
    ("image_size", 8, r"config.image_size=8 must be in \[16, 1024\]: config.data.train draws"),
    ("context_length", 2, "config.context_length=2 must be >= 3"),
    ("log_every_steps", 0, "config.log_every_steps=0 must be > 0"),
    ("eval_every_steps", -5, "config.eval_every_steps=-5 must be > 0"),
    ("eval_batch_size", 0, "config.eval_batch_size=0 must be > 0"),
    ("checkpoint.every_steps", 0, "config.checkpoint.every_steps=0 must be > 0"),
    ("checkpoint.keep", -1, "config.checkpoint.keep=-1 must be > 0"),
    ("model.ln_eps", 0.0, "config.model.ln_eps=0.0 must be > 0"),
    ("model.init_bias", float("nan"), "config.model.init_bias=nan must be a finite number"),
    ("optim.learning_rate", float("inf"), "config.optim.learning_rate=inf must be a finite"),
    ("optim.final_lr_fraction", 1.5, r"config.optim.final_lr_fraction=1.5 must be in \[0, 1\]"),
    ("optim.eps", -1e-8, "config.optim.eps=-1e-08 must be >= 0"),
    ("optim.weight_decay", -0.1, "config.optim.weight_decay=-0.1 must be >= 0"),
    ("optim.grad_clip_norm", -1.0, r"config.optim.grad_clip_norm=-1.0 must be >= 0 \(0: no"),
    ("mesh.data", 0, r"config.mesh.data=0 must be -1 \(the devices the other axis leaves\) or"),
    ("mesh.fsdp", -1, "config.mesh.data=-1 and config.mesh.fsdp=-1: set one of them"),
    ("sharding.fsdp_min_size", -1, "config.sharding.fsdp_min_size=-1 must be >= 0"),
    ("data.train.monochrome_fraction", 2.0, "config.data.train.monochrome_fraction=2.0 must be"),
    ("data.train.max_objects", 9, r"config.data.train: min_objects=1, max_objects=9; need 1 <="),
    ("evals.zs_shape.seed", -1, r"config.evals.zs_shape.seed=-1 must be an integer in \[0, 2"),
    ("evals.zs_count.min_objects", 0, "config.evals.zs_count: min_objects=0, max_objects=3;"),
])
def test_bad_values_are_rejected_with_the_field_named(field, value, match):
  c = parse(["--config=configs/rankclip_synthetic.py"])
  node = c
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError, match=match) as e:
    validate_config(c, num_devices=8, process_count=1)
  assert "\n" not in str(e.value)


def test_siglip_rejects_ranking_weights():
  c = parse(["--config=configs/siglip_synthetic.py", "--config.loss.cross_weight=0.1"])
  with pytest.raises(ConfigError, match="siglip.*cross_weight=0"):
    validate_config(c, num_devices=8, process_count=1)


def test_each_loss_owns_its_fields():
  """A loss's own numbers (losses.Loss.fields) are config.loss fields at their defaults, checked
  only when that loss is chosen, and reach its function; make_objective refuses a field no loss
  has."""
  from rankclip_jax.losses import LOSSES, loss_fields  # pylint: disable=g-import-not-at-top
  from rankclip_jax.objective import make_objective  # pylint: disable=g-import-not-at-top
  c = parse(["--config=configs/rankclip_synthetic.py"])
  fields = loss_fields()
  assert set(fields) == set(LOSSES.get("alip").fields) and fields
  for name, spec in fields.items():
    assert c.loss[name] == spec.default
  c.loss.alip_temperature = -1.0  # not ALIP's run: not its business
  validate_config(c, num_devices=8, process_count=1)
  kw = dict(name="rankclip", cross_weight=0.0, inmodal_weight=0.0, weight_schedule="constant",
            strategy="plain", chunk_size=0, total_steps=10)
  make_objective(None, **kw, alip_momentum=0.5)
  with pytest.raises(TypeError, match="alip_momentun"):
    make_objective(None, **kw, alip_momentun=0.5)
  # ALIP's momentum reaches its function: at 0 the running means become this batch's means.
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rankclip_jax.losses import alip_initial_state  # pylint: disable=g-import-not-at-top
  emb = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in zip(
      ("image", "text", "synthetic_text"), np.random.default_rng(0).normal(size=(3, 8, 4)))}
  means = {}
  for momentum in (0.0, 0.99):
    objective = make_objective(None, **dict(kw, name="alip"), alip_momentum=momentum)
    _, _, state = objective(emb, np.float32(0.0), None, alip_initial_state(), 0)
    means[momentum] = {k: float(v) for k, v in state.items()}
  cos = lambda a, b: float(np.mean(np.sum(emb[a] * emb[b], axis=1)))  # pylint: disable=unnecessary-lambda-assignment
  assert means[0.0]["mean_it"] == pytest.approx(cos("image", "text"), abs=1e-5), means
  assert means[0.99]["mean_it"] == pytest.approx(0.99 + 0.01 * cos("image", "text"), abs=1e-5)


def test_cc3m_config_says_what_data_it_expects():
  c = parse(["--config=configs/rankclip_cc3m.py"])
  assert c.model.size == "B/32" and c.image_size == 224 and c.context_length == 77
  assert c.batch_size == 128 and c.optim.learning_rate == 5e-4 and c.optim.warmup_steps == 10000
  with pytest.raises(ConfigError, match="webdataset"):
    validate_config(c, num_devices=8, process_count=1)
