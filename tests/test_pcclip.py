"""PC-CLIP: comparative pairs are true by construction, the pair pipeline counts bad rows, the
comparative evaluations compute what they say, and fine-tuning the text tower on synthetic pairs
(image tower frozen) raises pairwise comparison accuracy on held-out pairs."""

import csv
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import pcclip_synthetic
from rankclip_jax import checkpointing, evaluate, train
from rankclip_jax.config_validation import ConfigError, validate_config
from rankclip_jax.data import pairs
from rankclip_jax.data import synthetic as S
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import comparative
from rankclip_jax.evaluation.metrics import normalize


def test_synthetic_pair_captions_are_true():
  src = pairs.SyntheticPairs(200, split="test", image_size=32)
  seen = set()
  for i in range(len(src)):
    attribute, a, b, _ = src.scenes(i)
    ex = src[i]
    assert pairs.ATTRIBUTES[ex["attribute"]] == attribute and ex["caption"] != ex["opposite"]
    seen.add(attribute)
    if attribute == "colour":
      ca, cb = S.COLOUR_NAMES[a.main.colour], S.COLOUR_NAMES[b.main.colour]
      assert ca != cb and ex["caption"].index(ca) < ex["caption"].index(cb)
      continue
    more = {"size": a.main.size > b.main.size, "count": a.count > b.count,
            "horizontal": a.main.x < b.main.x, "vertical": a.main.y < b.main.y}[attribute]
    word = {"size": ("larger", "smaller"), "count": ("more", "fewer"),
            "horizontal": ("further left", "further right"),
            "vertical": ("higher", "lower")}[attribute][0 if more else 1]
    assert word in ex["caption"], (attribute, ex["caption"])
    if attribute in ("horizontal", "vertical"):
      assert abs(a.main.x - b.main.x if attribute == "horizontal" else a.main.y - b.main.y) >= 0.2
    if attribute != "count":
      assert a.count == b.count == 1
  assert seen == set(pairs.ATTRIBUTES)
  np.testing.assert_array_equal(src[7]["image_a"], src[7]["image_a"])  # a pure function of i


def test_csv_pairs_skip_bad_rows_and_count_them(tmp_path):
  for name, size in (("a.png", 40), ("b.png", 24)):
    Image.fromarray(S.SyntheticScenes(2, image_size=size)[0]["image"]).save(tmp_path / name)
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  rows = [("a.png", "b.png", "the first image shows a larger shape than the second."),
          ("a.png", "missing.png", "x"), ("a.png", "b.png", "  "), ("broken.jpg", "b.png", "y")]
  with open(tmp_path / "pairs.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image_a", "image_b", "caption"])
    w.writerows(rows * 4)
  source = pairs.CsvPairs(str(tmp_path / "pairs.csv"))
  it = pairs.pair_iterator(source, per_process_batch_size=2, seed=0,
                           tokenizer=ClipTokenizer(16), image_size=32)
  batch = next(it)
  assert batch["image_a"].shape == (2, 32, 32, 3) and batch["text"].shape == (2, 16)
  total = batch["skipped"].sum(axis=0)
  total += next(it)["skipped"].sum(axis=0)  # 4 good rows -> two batches cover them all
  from rankclip_jax.data.records import SKIP_INDEX  # pylint: disable=g-import-not-at-top
  assert total[SKIP_INDEX["missing_file"]] == 4 and total[SKIP_INDEX["empty_caption"]] == 4
  assert total[SKIP_INDEX["unreadable_image"]] == 4
  with pytest.raises(pairs.CsvPairsError, match="no column 'image_b'"):
    (tmp_path / "bad.csv").write_text("image_a,caption\na.png,x\n")
    pairs.CsvPairs(str(tmp_path / "bad.csv"))


def test_comparative_prompting_and_spearman_known_answers():
  t = normalize(np.array([[1.0, 0, 0], [0, 1.0, 0]]))
  d = np.zeros((2, 2, 3))
  d[0, 1] = [0, 1.0, 0]  # "a c0 differs from a c1": points at c1
  d[1, 0] = [1.0, 0, 0]
  got = comparative.comparative_class_embeddings(t, d, alpha=0.5)
  want = normalize(np.array([[1.0, -0.5, 0], [-0.5, 1.0, 0]]))
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert comparative._spearman(np.array([3, 1, 2]), np.array([30, 10, 20])) == pytest.approx(1)
  assert comparative._spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1)
  assert comparative._spearman(np.array([1, 1, 2]), np.array([5, 5, 9])) == pytest.approx(1)


def test_pcclip_config_validation():
  c = pcclip_synthetic.get_config("runs/nowhere")
  validate_config(c, num_devices=1, process_count=1)
  c.loss.name = "rankclip"
  with pytest.raises(ConfigError, match="pairs train only with it"):
    validate_config(c, num_devices=1, process_count=1)
  c.loss.name = "pcclip"
  c.loss.cross_weight = 0.1
  with pytest.raises(ConfigError, match="no ranking terms"):
    validate_config(c, num_devices=1, process_count=1)


def test_fine_tuning_raises_pairwise_accuracy(micro_run, tmp_path):
  """The shared micro CLIP run, before and after 150 PC-CLIP steps on synthetic pairs (image tower
  frozen), evaluated on the same 200 held-out pairs."""
  evals = pcclip_synthetic.pcclip_evals(200)
  del evals["zs_shape_comparative"]
  _, before = evaluate.evaluate_run(micro_run, evals=evals)

  ckpt = checkpointing.Checkpointer(micro_run + "/checkpoints", every_steps=1, keep=10)
  pretrained = ckpt.saved_config()
  ckpt.close()
  c = pcclip_synthetic.get_config(micro_run)
  c.image_size, c.context_length = pretrained.image_size, pretrained.context_length
  c.model = ml_collections.ConfigDict(dict(pretrained.model.to_dict(), init_from=micro_run))
  c.batch_size, c.total_steps, c.log_every_steps = 64, 150, 50
  c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 5
  c.checkpoint.every_steps, c.checkpoint.async_save = 150, False
  c.eval_every_steps, c.eval_batch_size = 10_000, 64
  c.evals = evals
  workdir = str(tmp_path / "pcclip")
  after = train.train_and_evaluate(c, workdir)
  print(f"pairwise accuracy {before['pairwise/accuracy']:.3f} -> {after['pairwise/accuracy']:.3f}"
        f"; vs opposite {before['pairwise/vs_opposite']:.3f} -> {after['pairwise/vs_opposite']:.3f}"
        f"; ranking {before['ranking/spearman_mean']:.3f} -> {after['ranking/spearman_mean']:.3f}")
  assert after["pairwise/accuracy"] >= before["pairwise/accuracy"] + 0.08
  assert after["pairwise/vs_opposite"] >= before["pairwise/vs_opposite"] + 0.08

  # The image tower did not move; the text tower did.
  ft = checkpointing.Checkpointer(workdir + "/checkpoints", every_steps=1, keep=10)
  import rankclip_jax  # pylint: disable=g-import-not-at-top
  new, old = rankclip_jax.load(workdir).params, rankclip_jax.load(micro_run).params
  ft.close()
  k_new = np.asarray(new["image"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"])
  np.testing.assert_array_equal(k_new,
                                np.asarray(old["image"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]))
  assert not np.allclose(np.asarray(new["text"]["proj"]["kernel"]),
                         np.asarray(old["text"]["proj"]["kernel"]))
  assert json.loads((tmp_path / "pcclip" / "results.json").read_text())["step"] == 150
