"""Representation diagnostics on cases with known answers, and the standalone evaluation command."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rankclip_jax.evaluation import diagnostics as D
from tests.cli_runs import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _basis(n, d, idx):
  x = np.zeros((n, d))
  x[:, idx] = 1.0
  return x


def test_modality_gap_alignment_uniformity_known_values():
  image, text = _basis(4, 3, 0), _basis(4, 3, 1)
  assert D.modality_gap(image, text) == pytest.approx(np.sqrt(2))
  assert D.alignment(image, text) == pytest.approx(2.0)  # |e0 - e1|^2
  assert D.modality_gap(image, image) == 0 and D.alignment(image, image) == 0
  assert D.alignment(image, -image) == pytest.approx(4.0)
  # Two antipodal points: every pair at squared distance 4 -> log exp(-2 * 4) = -8.
  assert D.uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
  # Collapsed embeddings are the least uniform possible: log exp(0) = 0.
  assert D.uniformity(_basis(5, 3, 2)) == pytest.approx(0.0)
  # The regular simplex's 3 points on a circle (squared distance 3) are more uniform than 3 points
  # in a tight cluster.
  angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
  simplex = np.stack([np.cos(angles), np.sin(angles)], 1)
  assert D.uniformity(simplex) == pytest.approx(-6.0)
  cluster = np.stack([np.cos(angles / 30), np.sin(angles / 30)], 1)
  assert D.uniformity(cluster) > D.uniformity(simplex)


def test_ranking_consistency_perfect_reversed_and_tied():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 6))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  # Identical towers: I T^T is symmetric (cross lists equal) and I I^T = T T^T (in-modal equal).
  same = D.ranking_consistency(x, x)
  assert all(v == pytest.approx(1.0) for v in same.values()), same
  # Rows against their reverses: -1; constant rows (ties only) are left out, all-constant -> nan.
  a = rng.normal(size=(5, 9))
  assert D._row_correlations(a, -a) == pytest.approx((-1.0, -1.0))  # pylint: disable=protected-access
  b = np.vstack([a, np.ones((2, 9))])
  assert D._row_correlations(b, b) == pytest.approx((1.0, 1.0))  # pylint: disable=protected-access
  assert all(np.isnan(D._row_correlations(np.ones((3, 4)), a[:3, :4])))  # pylint: disable=protected-access
  # Independent random towers: consistency near 0.
  y = rng.normal(size=(200, 32))
  z = rng.normal(size=(200, 32))
  rc = D.ranking_consistency(y / np.linalg.norm(y, axis=1, keepdims=True),
                             z / np.linalg.norm(z, axis=1, keepdims=True))
  assert all(abs(v) < 0.1 for v in rc.values()), rc


def test_embedding_picture_shows_both_modalities():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(30, 8)) + 3 * np.eye(8)[0]
  text = rng.normal(size=(30, 8)) - 3 * np.eye(8)[0]
  pic = D.embedding_picture(image, text, size=128)
  assert pic.shape == (128, 128, 3) and pic.dtype == np.uint8
  colours = {tuple(c) for c in pic.reshape(-1, 3)}
  assert D.IMAGE_COLOUR in colours and D.TEXT_COLOUR in colours
  # The two clouds are separated along the first principal axis: images on one side.
  xy = D.pca_2d(np.concatenate([image, text]))
  assert np.all(np.sign(xy[:30, 0]) == -np.sign(xy[30:, 0]))
  np.testing.assert_array_equal(pic, D.embedding_picture(image, text, size=128))


def test_standalone_evaluation_reproduces_the_runs_final_results(tmp_path, uninterrupted_run):
  """`python -m rankclip_jax.evaluate --workdir` on the last checkpoint of a finished `main.py` run
  (a copy of the session's reference run, 2 devices) on another device count (4) gives the numbers
  the run itself reported at the end, and writes the JSON, Markdown, PNG and events."""
  import shutil
  from tests import cli_runs
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted_run, workdir)
  events = set(glob.glob(str(workdir / "events.out.tfevents.*")))
  final = json.load(open(workdir / "results.json"))
  step = cli_runs.REFERENCE_STEPS
  assert final["step"] == step and (workdir / "pictures" /
                                    f"diagnostics_embedding_space_{step}.png").exists()
  proc = subprocess.run(
      [sys.executable, "-m", "rankclip_jax.evaluate", f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS=xla_flags(4)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Evaluation of {workdir} at step {step}:" in proc.stdout
  assert "| zs_shape/top1 |" in proc.stdout and "| diagnostics/modality_gap |" in proc.stdout
  standalone = json.load(open(workdir / "eval" / f"results_{step}.json"))
  assert standalone["step"] == step
  for key, value in final.items():
    assert standalone[key] == pytest.approx(value, abs=1e-4), key  # 2 devices then, 4 now
  assert "| retrieval/i2t_r1 |" in open(workdir / "eval" / f"results_{step}.md").read()
  written = set(glob.glob(str(workdir / "events.out.tfevents.*"))) - events
  assert len(written) == 1 and cli_runs.logged(workdir, "zs_shape/top1")[step] == pytest.approx(
      final["zs_shape/top1"], abs=1e-4)
  # An earlier checkpoint by --step, and a clear error for one that does not exist.
  have = cli_runs.checkpoint_steps(workdir)
  proc = subprocess.run(
      [sys.executable, "-m", "rankclip_jax.evaluate", f"--workdir={workdir}", "--step=3"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and f"no checkpoint for step 3; have {have}" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def micro_model():
  from rankclip_jax import train
  from test_train import micro_config
  config = micro_config()
  trainer = train.Trainer(config)
  return config, trainer, trainer.init().params


def _run_evaluator(micro_model, name, entry, **data):
  import ml_collections
  from rankclip_jax.evaluation.embed import Embedder
  from test_synthetic_evals import evaluators_of
  config, trainer, params = micro_model
  config = config.copy_and_resolve_references()
  config.evals = ml_collections.ConfigDict({name: entry})
  for k, v in data.items():
    config.data[k] = v
  ev = evaluators_of(config, trainer.tokenizer)[name]
  return ev.run(Embedder(trainer.model, trainer.mesh), params)


def _embed(micro_model, images_uint8=None, texts=None):
  import jax
  from rankclip_jax.data.pipeline import normalize_image
  _, trainer, params = micro_model
  p = jax.device_get(params)
  if images_uint8 is not None:
    x = np.stack([normalize_image(im) for im in images_uint8])
    return np.asarray(trainer.model.apply({"params": p}, x, method="encode_image"))
  return np.asarray(trainer.model.apply({"params": p}, trainer.tokenizer(texts),
                                        method="encode_text"))


def test_coco_karpathy_retrieval_through_the_config(tmp_path, micro_model):
  """Recall on a Karpathy-format test split equals recall computed here by brute force (each
  image's own captions relevant; ties against the model); the missing image is counted."""
  from PIL import Image
  from configs import common
  from test_karpathy import write_split
  json_path, root, expected = write_split(tmp_path, "coco")
  m = _run_evaluator(micro_model, "coco", common.karpathy_retrieval("coco", str(json_path),
                                                                    str(root)))
  present = [(path, i) for i, (path, _) in enumerate(expected) if os.path.exists(path)]
  pics = [np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BICUBIC))
          for p, _ in present]
  entries = json.load(open(json_path))["images"]
  test_entries = [e for e in entries if e["split"] == "test"]
  captions = [[s["raw"].strip() for s in test_entries[i]["sentences"][:5]] for _, i in present]
  owner = np.repeat(np.arange(len(present)), [len(c) for c in captions])
  image_emb = _embed(micro_model, images_uint8=pics)
  text_emb = _embed(micro_model, texts=sum(captions, []))
  sim = image_emb @ text_emb.T
  for k in (1, 5, 10):
    i2t = np.mean([np.sum(sim[i][owner != i] >= sim[i][owner == i].max()) < k
                   for i in range(len(present))])
    t2i = np.mean([np.sum(np.delete(sim[:, t], owner[t]) >= sim[owner[t], t]) < k
                   for t in range(len(owner))])
    assert m[f"coco/i2t_r{k}"] == pytest.approx(i2t, abs=1e-6), k
    assert m[f"coco/t2i_r{k}"] == pytest.approx(t2i, abs=1e-6), k
  assert m["coco/num_images"] == 3 and m["coco/num_texts"] == 15 and m["coco/skipped"] == 1


def test_linear_probe_through_the_config(tmp_path, micro_model):
  """Classes that differ in colour are linearly separable even in a random model's embeddings:
  the probe must find that, and match the probe run here on independently computed features."""
  from configs import common
  from rankclip_jax.evaluation.linear_probe import linear_probe
  from tfds_fixtures import write_tiny_tfds_splits
  colours = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 220], [230, 220, 40]])

  def image_fn(label, rng):
    return np.clip(colours[label] + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)

  written = write_tiny_tfds_splits(tmp_path, "cifar10", {"train": 40, "test": 20},
                                   num_classes=4, image_fn=image_fn)
  m = _run_evaluator(micro_model, "probe", common.linear_probe("cifar10"),
                     eval_data_dir=str(tmp_path))
  feats = {s: (_embed(micro_model, images_uint8=[im for im, _ in written[s]]),
               np.array([y for _, y in written[s]])) for s in ("train", "test")}
  ref = linear_probe(*feats["train"], *feats["test"], 10)
  assert m["probe/top1"] == pytest.approx(ref["top1"]) and m["probe/top1"] >= 0.9
  assert m["probe/chosen_l2"] == ref["chosen_l2"]
  assert m["probe/num_train"] == 40 and m["probe/num_test"] == 20
