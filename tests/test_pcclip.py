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
from rankclip_jax.data.csv_files import CsvFormatError
from rankclip_jax.data import pairs
from rankclip_jax.data import synthetic as S
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import comparative
from rankclip_jax.evaluation.metrics import normalize
from rankclip_jax.data import records
from test_synthetic_evals import (IMAGE_SIZE, TableEmbedder, demo_config, evaluators_of,
                                  image_table, scenes_of, unit)


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
  # A pure function of (seed, split, i): an instance built anew gives the same pair, whatever was
  # read before it.
  again = pairs.SyntheticPairs(200, split="test", image_size=32)[7]
  for key, value in src[7].items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)


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
  seed = 0
  it = pairs.pair_iterator(source, per_process_batch_size=2, seed=seed,
                           tokenizer=ClipTokenizer(16), image_size=32)
  batch = next(it)
  assert batch["image_a"].shape == (2, 32, 32, 3) and batch["text"].shape == (2, 16)
  total = batch["skipped"].sum(axis=0)
  total += next(it)["skipped"].sum(axis=0)  # 4 good rows -> two batches cover them all
  # The bad rows met before the 4th good one in the shuffled order: derived from the rows written
  # (row i is rows[i % 4]), not a count that holds for one shuffle seed only.
  from test_data_sources import _expected_skips  # pylint: disable=g-import-not-at-top
  kinds = [None, "missing_file", "empty_caption", "unreadable_image"]
  expected = _expected_skips([kinds[i % 4] for i in range(len(source))], len(source), seed=seed,
                             good_wanted=4)
  assert records.skip_counts(total) == expected
  assert sum(expected.values()) > 0
  with pytest.raises(CsvFormatError, match="no column 'image_b'.*image_key=<a_column>,<b_column>"):
    (tmp_path / "bad.csv").write_text("image_a,caption\na.png,x\n")
    pairs.CsvPairs(str(tmp_path / "bad.csv"))
  # Read by the CSV reader of (image, caption) files: a byte-order mark (Excel's "UTF-8 CSV") and
  # a .tsv's tab delimiter are understood.
  (tmp_path / "bom.tsv").write_text("\ufeffimage_a\timage_b\tcaption\na.png\tb.png\tz\n",
                                    encoding="utf-8")
  bom = pairs.CsvPairs(str(tmp_path / "bom.tsv"))
  assert len(bom) == 1 and bom[0]["caption"] == "z" and bom[0]["image_b"].shape == (24, 24, 3)


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


def test_comparative_prompting_in_the_zero_shot_evaluator_known_answer():
  """A zero_shot entry with comparative_alpha (PC-CLIP's prompting) on hand-built text embeddings:
  every prompt of class c is e_c, "a c differs from a j in shape." is -w_c (j != c; the c == c
  statement is junk that must be ignored), so with alpha = 0.25 the class embeddings are exactly
  normalize(0.25 e_c + 0.75 (e_c + w_c)) = normalize(e_c + 0.75 w_c) (alpha != 1 - alpha, so the
  two weights cannot be swapped unnoticed). Planted images are right with plain prompts only, with
  comparative ones only, with both or with neither: both top-1s are known."""
  alpha, template = 0.25, "a {} differs from a {} in shape."
  base = dict(kind="zero_shot", task="shape", split="test", min_objects=1, max_objects=1,
              num_examples=24, seed=0)
  cfgs = {"plain": base, "comparative": dict(base, comparative_alpha=alpha,
                                             comparative_template=template)}
  evs = evaluators_of(demo_config(cfgs))
  c = len(S.SHAPES)
  d = 2 * c + 1  # e_0..e_7, w_0..w_7, junk
  e, w, junk = (lambda k: unit(d, k)), (lambda k: unit(d, c + k)), unit(d, 2 * c)
  texts = {t.format(name): e(k) for t in S.PROMPTS["shape"] for k, name in enumerate(S.SHAPES)}
  for a, name_a in enumerate(S.SHAPES):
    for b, name_b in enumerate(S.SHAPES):
      texts[template.format(name_a, name_b)] = 5 * junk + 3 * e(a) if a == b else -w(a)
  _, examples = scenes_of(base)
  # Per image (true class p, rival q): 0 right only with comparative prompts, 1 right with both,
  # 2 right with plain prompts only, 3 wrong with both.
  patterns = [(0, 0, 1, 1, 2, 3)[i % 6] for i in range(len(examples))]
  images = []
  for ex, pattern in zip(examples, patterns):
    p = int(ex["shape"])
    q = (p + 1) % c
    images.append([0.5 * e(p) + 0.6 * e(q) + 0.3 * w(p), e(p) + 0.3 * e(q),
                   0.6 * e(p) + 0.5 * e(q) + 0.3 * w(q), 0.3 * e(p) + e(q)][pattern])
  embedder = TableEmbedder(image_table([ex["image"] for ex in examples], images), texts)
  want_classes = {"plain": np.eye(c, d),
                  "comparative": normalize(np.eye(c, d) + 0.75 * np.eye(c, d, c))}
  patterns = np.array(patterns)
  want_top1 = {"plain": np.mean((patterns == 1) | (patterns == 2)),
               "comparative": np.mean((patterns == 0) | (patterns == 1))}
  for name, ev in evs.items():
    np.testing.assert_allclose(ev.class_embeddings(embedder, None), want_classes[name], atol=1e-6)
    out = ev.run(embedder, None)
    assert out == pytest.approx({f"{name}/top1": want_top1[name], f"{name}/top3": 1.0,
                                 f"{name}/top5": 1.0, f"{name}/chance": 1 / c,
                                 f"{name}/num_examples": 24}), name
  assert want_top1["plain"] == 0.5 and want_top1["comparative"] == pytest.approx(2 / 3)


def test_pairwise_evaluator_known_accuracies():
  """Each distinct caption a basis direction; pair i's images planted so that normalize(v_a - v_b)
  (after normalising each) has cosine c_i with its caption and o_i with the opposite caption, at
  different norms per image. accuracy = mean(c_i > 0), vs_opposite = mean(c_i > o_i), per
  attribute too. 23 pairs in batches of 5: the last batch is padded."""
  n = 23
  ev = evaluators_of(demo_config({"pairwise": dict(kind="pairwise", split="test",
                                                   num_examples=n, seed=0)}))["pairwise"]
  examples = [pairs.SyntheticPairs(n, seed=0, split="test", image_size=IMAGE_SIZE)[i]
              for i in range(n)]
  strings = list(dict.fromkeys(s for ex in examples for s in (ex["caption"], ex["opposite"])))
  d = len(strings) + 2  # one axis per text, a shared offset x, a filler z
  x, z = unit(d, d - 2), unit(d, d - 1)
  rng = np.random.default_rng(0)
  cos = rng.choice([-0.5, -0.2, 0.3, 0.6], size=n)
  cos_opp = rng.choice([-0.4, 0.1, 0.45], size=n)
  image_a, image_b = [], []
  for ex, ci, oi in zip(examples, cos, cos_opp):
    ic, io = strings.index(ex["caption"]), strings.index(ex["opposite"])
    assert ic != io
    diff = ci * unit(d, ic) + oi * unit(d, io) + np.sqrt(1 - ci ** 2 - oi ** 2) * z  # unit
    # Equal norms before scaling, so normalize(a) - normalize(b) is parallel to diff.
    image_a.append(3.0 * (x + diff))
    image_b.append(0.5 * (x - diff))
  table = image_table([ex["image_a"] for ex in examples] + [ex["image_b"] for ex in examples],
                      image_a + image_b)
  out = ev.run(TableEmbedder(table, {s: unit(d, k) for k, s in enumerate(strings)}), None)
  attribute = np.array([ex["attribute"] for ex in examples])
  want = {"pairwise/accuracy": np.mean(cos > 0), "pairwise/vs_opposite": np.mean(cos > cos_opp),
          "pairwise/num_pairs": n}
  for k, attr in enumerate(pairs.ATTRIBUTES):
    want[f"pairwise/accuracy_{attr}"] = np.mean(cos[attribute == k] > 0)
  assert out == pytest.approx(want)
  assert want["pairwise/accuracy"] != want["pairwise/vs_opposite"]


def test_attribute_ranking_evaluator_known_spearman():
  """Scores along each attribute's direction planted as a known function of the true values:
  size increasing (+1), count decreasing with its ties (-1), horizontal and vertical a planted
  permutation of the true order (Spearman by the no-ties formula 1 - 6 sum d^2 / (n (n^2 - 1)))."""
  n = 12
  ev = evaluators_of(demo_config({"ranking": dict(kind="attribute_ranking", split="test",
                                                  num_examples=n, seed=0)}))["ranking"]
  directions = {  # the captions "the first image has more of it", written out
      "size": "the first image shows a larger shape than the second.",
      "count": "the first image has more shapes than the second.",
      "horizontal": "the shape in the first image is further left than in the second.",
      "vertical": "the shape in the first image is higher than in the second."}
  d = len(directions) + 1
  other = unit(d, d - 1)
  rng = np.random.default_rng(1)
  images, embeddings, want = [], [], {}
  for k, (attribute, _) in enumerate(directions.items()):
    rendered, values = ev.scenes(attribute)
    if attribute == "size":
      scores, want[attribute] = values, 1.0
    elif attribute == "count":
      assert len(set(values.tolist())) < n  # ties
      scores, want[attribute] = -values, -1.0
    else:
      assert len(set(values.tolist())) == n
      true_rank = np.argsort(np.argsort(values))
      planted = rng.permutation(n)
      scores = planted.astype(float)
      want[attribute] = 1 - 6 * np.sum((planted - true_rank) ** 2) / (n * (n * n - 1))
    images += list(rendered)
    # The score read off normalize(image) . direction is s / sqrt(s^2 + 1): the same order.
    embeddings += [s * unit(d, k) + other for s in scores]
  out = ev.run(TableEmbedder(image_table(images, embeddings),
                             {t: unit(d, k) for k, t in enumerate(directions.values())}), None)
  want = {f"ranking/spearman_{a}": v for a, v in want.items()}
  want["ranking/spearman_mean"] = np.mean(list(want.values()))
  assert out == pytest.approx(want)
  assert all(-0.9 < want[f"ranking/spearman_{a}"] < 0.9 for a in ("horizontal", "vertical"))


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


@pytest.mark.usefixtures("optimized_xla")  # 100 steps: running costs more than compiling
def test_fine_tuning_raises_pairwise_accuracy(micro_run, tmp_path):
  """The shared micro CLIP run, before and after 100 PC-CLIP steps on synthetic pairs (image tower
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
  c.batch_size, c.total_steps, c.log_every_steps = 64, 100, 50
  c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 5
  c.checkpoint.every_steps, c.checkpoint.async_save = 100, False
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
  assert json.loads((tmp_path / "pcclip" / "results.json").read_text())["step"] == 100
