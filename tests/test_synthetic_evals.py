"""The synthetic evaluations behind the demo's results table (configs.common.synthetic_evals), built
by build_evaluators and run on hand-built embeddings: each answer is computed here by brute force
from the scenes and the planted embeddings, independently of evaluation/metrics.py and
diagnostics.py. Also the evaluator registry, its builders' strict fields and the schedule."""

import inspect
import itertools
import math
import os

import ml_collections
import numpy as np
import pytest

from configs import common
from configs import pcclip_synthetic, rankclip_synthetic
from rankclip_jax.data import pairs as pairs_lib
from rankclip_jax.data import synthetic as S
from rankclip_jax.data import tfds_eval
from rankclip_jax.data.files import DataPathError
from rankclip_jax.data.pipeline import normalize_image
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.config_validation import validate_config
from rankclip_jax.errors import ConfigError
from rankclip_jax.evaluation import comparative
from rankclip_jax.evaluation import evaluators as evals_lib
from rankclip_jax.evaluation.embed import Embedder
from rankclip_jax.evaluation.evaluators import EVALUATORS, build_evaluators
from synthetic_helpers import scene_for

IMAGE_SIZE = 32
NUM_EXAMPLES = 24
# Long enough that no caption or prompt is truncated (the text table is keyed by token ids).
TOKENIZER = ClipTokenizer(77)


class TableEmbedder(Embedder):
  """The real Embedder's batching (padding, masks, per-example extras) over hand-built tables
  instead of a model: an image's embedding is looked up by its pixels, a text's by its exact
  string. A text or image not in the tables fails, except the all-zero image (the padding of
  comparative.embed_uint8's last batch, masked out), which embeds as NaN."""

  def __init__(self, images: dict, texts: dict, tokenizer=TOKENIZER):  # pylint: disable=super-init-not-called
    self._images = dict(images)
    rows = tokenizer(list(texts))
    self._texts = {r.tobytes(): np.asarray(v, np.float32) for r, v in zip(rows, texts.values())}
    assert len(self._texts) == len(texts), "two texts share their token ids"
    nan = np.full(len(next(iter(self._images.values()))), np.nan, np.float32)
    self._image = lambda x: [nan if not im.any() else self._images[image_key(im)] for im in x]
    self._text = lambda x: [self._texts[row.tobytes()] for row in x]

  def _run(self, fn, params, x, round_up=False):
    del params, round_up
    return np.stack(fn(np.asarray(x))).astype(np.float32)


def image_key(image) -> bytes:
  """A model input (normalised float image) by its bytes; uint8 images are normalised first."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    image = normalize_image(image)
  return np.ascontiguousarray(image, np.float32).tobytes()


def image_table(images, embeddings) -> dict:
  table = {}
  for im, emb in zip(images, embeddings):
    key = image_key(im)
    assert key not in table, "two planted images are identical"
    table[key] = np.asarray(emb, np.float32)
  return table


def unit(d, i):
  v = np.zeros(d, np.float32)
  v[i] = 1.0
  return v


def demo_config(evals):
  c = rankclip_synthetic.get_config()
  c.image_size, c.eval_batch_size = IMAGE_SIZE, 5  # batches of 5: the last one padded
  c.eval_every_steps = 1000
  c.evals = ml_collections.ConfigDict(evals)
  return c


def evaluators_of(config, tokenizer=TOKENIZER):
  """build_evaluators called as the entry points call it, from a whole config."""
  return build_evaluators(config.evals, tokenizer=tokenizer, image_size=config.image_size,
                          batch_size=config.eval_batch_size,
                          eval_data_dir=config.data.eval_data_dir,
                          every_steps=config.eval_every_steps)


def evaluator(name, cfg):
  return evaluators_of(demo_config({name: cfg}))[name]


def scenes_of(cfg, caption_mode="random"):
  """The scenes and examples an evaluation entry reads, built here from its fields."""
  src = S.SyntheticScenes(num_records=cfg["num_examples"], seed=cfg["seed"], split=cfg["split"],
                          image_size=IMAGE_SIZE, min_objects=cfg["min_objects"],
                          max_objects=cfg["max_objects"], caption_mode=caption_mode)
  return [scene_for(src, i) for i in range(len(src))], [src[i] for i in range(len(src))]


# ------------------------------------------------------------------------------------- zero-shot

NUMBERS = ("one", "two", "three", "four", "five")


def true_class_name(task, scene):
  """The class name that describes `scene`, written out here from the scene itself."""
  main = scene.main
  if task == "shape":
    return S.SHAPES[main.shape]
  if task == "colour":
    return S.COLOUR_NAMES[main.colour]
  if task == "count":  # the number of objects in the scene, in words
    n = len(scene.objects)
    return f"{NUMBERS[n - 1]} shape" + ("s" if n > 1 else "")
  if task == "combo":
    return f"{S.COLOUR_NAMES[main.colour]} {S.SHAPES[main.shape]}"
  raise ValueError(task)


def class_names_here(task, cfg):
  if task == "shape":
    return list(S.SHAPES)
  if task == "colour":
    return list(S.COLOUR_NAMES)
  if task == "count":
    return [f"{NUMBERS[n - 1]} shape" + ("s" if n > 1 else "")
            for n in range(cfg["min_objects"], cfg["max_objects"] + 1)]
  return [f"{c} {s}" for s in S.SHAPES for c in S.COLOUR_NAMES]


def zero_shot_cases():
  evals = common.synthetic_evals(NUM_EXAMPLES)
  cases = {name: evals[name].to_dict() for name in evals if evals[name].kind == "zero_shot"}
  assert set(cases) == {"zs_shape", "zs_colour", "zs_count", "zs_heldout_combo"}
  # Counts from 2: a label offset of 2, so an offset taken as 1 (or 0) cannot go unnoticed.
  cases["zs_count_from_2"] = dict(cases["zs_count"], min_objects=2, max_objects=4)
  return cases


@pytest.mark.parametrize("name", sorted(zero_shot_cases()))
def test_zero_shot_on_the_synthetic_tasks_known_answers(name):
  """Image i ranks its true class (the scene's own, by name) at a planted place r_i among the
  classes; top-k must be the fraction with r_i < k, so the labels, the label offset and the class
  order must all line up. Every template of a class gets its own embedding (the ensemble must
  average over templates, not mix classes)."""
  cfg = zero_shot_cases()[name]
  task = cfg["task"]
  names = class_names_here(task, cfg)
  scenes, examples = scenes_of(cfg)
  templates = S.PROMPTS[task]
  c, t = len(names), len(templates)
  d = c + t  # one axis per class, one per template
  texts = {tmpl.format(n): (unit(d, ci) + 0.5 * unit(d, c + ti)) / math.hypot(1, 0.5)
           for ti, tmpl in enumerate(templates) for ci, n in enumerate(names)}
  rng = np.random.default_rng(1)
  planted = rng.integers(0, min(c, 6), size=len(scenes))  # the true class's place, 0 = first
  embeddings = []
  for scene, r in zip(scenes, planted):
    truth = names.index(true_class_name(task, scene))
    others = [k for k in rng.permutation(c) if k != truth]
    order = others[:r] + [truth] + others[r:]  # classes from best to worst
    v = np.zeros(d)
    v[order] = np.linspace(1.0, 0.1, c)
    embeddings.append(v)
  ev = evaluator(name, cfg)
  out = ev.run(TableEmbedder(image_table([e["image"] for e in examples], embeddings), texts),
               None)
  ks = [k for k in (1, 3, 5) if k < c]
  want = {f"{name}/top{k}": float(np.mean(planted < k)) for k in ks}
  want.update({f"{name}/chance": 1 / c, f"{name}/num_examples": len(scenes)})
  assert out == pytest.approx(want)
  assert 0 < want[f"{name}/top1"] < 1  # the planted answer is neither all right nor all wrong
  if task == "count":  # the scenes really have different counts, from min_objects
    counts = {len(s.objects) for s in scenes}
    assert min(counts) == cfg["min_objects"] and len(counts) == 3


# ------------------------------------------------------------------------------------- retrieval

def test_retrieval_recall_known_answers():
  """Every distinct caption a random direction, each image near its own caption's direction by a
  planted margin; recall@k by brute force over sorted lists, texts with identical wording all
  relevant."""
  cfg = common.synthetic_evals(NUM_EXAMPLES)["retrieval"].to_dict()
  _, examples = scenes_of(cfg, caption_mode="full")
  captions = [e["caption"] for e in examples]
  unique = list(dict.fromkeys(captions))  # first-seen order (the evaluator sorts them)
  rng = np.random.default_rng(2)
  d = 16
  text_emb = rng.normal(size=(len(unique), d))
  text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
  strength = np.linspace(0.0, 3.0, len(examples))
  image_emb = np.stack([s * text_emb[unique.index(cap)] + rng.normal(size=d)
                        for s, cap in zip(strength, captions)])
  ev = evaluator("retrieval", cfg)
  out = ev.run(TableEmbedder(image_table([e["image"] for e in examples], image_emb),
                             dict(zip(unique, text_emb))), None)

  scores = image_emb @ text_emb.T  # [images, unique texts]
  want = {"retrieval/num_images": len(examples), "retrieval/num_texts": len(unique)}
  for k in (1, 5, 10):
    i2t = [any(unique[j] == captions[i] for j in np.argsort(-scores[i])[:k])
           for i in range(len(examples))]
    t2i = [any(captions[i] == unique[j] for i in np.argsort(-scores[:, j])[:k])
           for j in range(len(unique))]
    want[f"retrieval/i2t_r{k}"] = float(np.mean(i2t))
    want[f"retrieval/t2i_r{k}"] = float(np.mean(t2i))
  assert out == pytest.approx(want)
  assert 0 < want["retrieval/i2t_r1"] < want["retrieval/i2t_r10"] <= 1


# ----------------------------------------------------------------------------------- diagnostics

def brute_ranks(x):
  """Ranks 0..n-1 of distinct values (no ties: the planted embeddings are random floats)."""
  assert len(set(x.tolist())) == len(x)
  return np.array([sum(y < v for y in x) for v in x])


def brute_spearman(x, y):
  n = len(x)
  dr = brute_ranks(x) - brute_ranks(y)
  return 1 - 6 * np.sum(dr ** 2) / (n * (n * n - 1))


def brute_kendall(x, y):
  pairs = list(itertools.combinations(range(len(x)), 2))
  return sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs) / len(pairs)


def test_diagnostics_known_answers():
  """Gap, alignment, uniformity and both ranking consistencies of the demo's diagnostics entry
  on planted (unnormalised) embeddings of its scene/caption pairs, by brute force."""
  cfg = common.synthetic_evals(12)["diagnostics"].to_dict()
  _, examples = scenes_of(cfg, caption_mode="full")
  captions = [e["caption"] for e in examples]
  assert len(set(captions)) == len(captions)  # one text per image: its row is its own
  rng = np.random.default_rng(3)
  n, d = len(examples), 6
  image = rng.normal(size=(n, d)) + 2 * unit(d, 0)
  text = 0.5 * image + rng.normal(size=(n, d)) - 2 * unit(d, 1)  # related, with a gap
  evs = evaluators_of(demo_config({"diagnostics": cfg}))
  embedder = TableEmbedder(image_table([e["image"] for e in examples], image),
                           dict(zip(captions, text)))
  out = evs["diagnostics"].run(embedder, None)
  # Evaluators.run gives the same metrics, the picture apart from the scalars.
  scalars, pictures = evs.run(embedder, None)
  assert list(pictures) == ["diagnostics/embedding_space"]
  np.testing.assert_array_equal(pictures["diagnostics/embedding_space"],
                                out["diagnostics/embedding_space"])
  assert scalars == {k: v for k, v in out.items() if k != "diagnostics/embedding_space"}

  im = image / np.linalg.norm(image, axis=1, keepdims=True)
  tx = text / np.linalg.norm(text, axis=1, keepdims=True)
  def uniformity(x):
    return math.log(np.mean([math.exp(-2 * np.sum((x[i] - x[j]) ** 2))
                             for i in range(n) for j in range(n) if i != j]))
  logits = im @ tx.T
  others = lambda m, i: np.delete(m[i], i)  # noqa: E731  row i without its diagonal entry
  want = {
      "modality_gap": np.linalg.norm(im.mean(0) - tx.mean(0)),
      "alignment": np.mean([np.sum((im[i] - tx[i]) ** 2) for i in range(n)]),
      "uniformity_image": uniformity(im), "uniformity_text": uniformity(tx),
      "cross_spearman": np.mean([brute_spearman(logits[i], logits[:, i]) for i in range(n)]),
      "cross_kendall": np.mean([brute_kendall(logits[i], logits[:, i]) for i in range(n)]),
      "inmodal_spearman": np.mean([brute_spearman(others(im @ im.T, i), others(tx @ tx.T, i))
                                   for i in range(n)]),
      "inmodal_kendall": np.mean([brute_kendall(others(im @ im.T, i), others(tx @ tx.T, i))
                                  for i in range(n)]),
  }
  picture = out.pop("diagnostics/embedding_space")
  assert picture.shape == (512, 512, 3) and picture.dtype == np.uint8
  want = {f"diagnostics/{k}": float(v) for k, v in want.items()}
  want["diagnostics/num_pairs"] = n
  assert out == pytest.approx(want, rel=1e-5, abs=1e-6)
  # Not a degenerate case: the gap is clear and the rankings agree only in part.
  assert want["diagnostics/modality_gap"] > 0.5
  assert 0.1 < want["diagnostics/cross_spearman"] < 0.95
  assert 0.1 < want["diagnostics/inmodal_spearman"] < 0.95


# ------------------------------------------------------------------ registry, fields and schedule

class _Fixed:
  """An evaluator that returns the metrics it was given."""

  def __init__(self, metrics):
    self.metrics, self.calls = metrics, 0

  def run(self, embedder, params):
    del embedder, params
    self.calls += 1
    return dict(self.metrics)


def test_evaluator_registry_builders_fields_and_schedule(monkeypatch, tmp_path):
  """EVALUATORS is the one list of kinds; every entry of the demo's evaluations builds into its
  kind's evaluator from its own fields; each entry runs every its own every_steps (0 or absent:
  the default); a builder's fields are its keywords, so an unknown one is an error."""
  assert EVALUATORS.names() == ("zero_shot", "retrieval", "diagnostics", "linear_probe",
                                "pairwise", "attribute_ranking")
  evals = common.synthetic_evals(NUM_EXAMPLES).to_dict()
  evals["zs_colour"]["every_steps"] = 3
  evals["retrieval"]["every_steps"] = 0  # 0: the default
  config = demo_config(evals)
  config.eval_every_steps = 4
  evs = evaluators_of(config)
  assert evs.names == tuple(evals) == tuple(evs) and len(evs) == len(evals) == 6
  classes = {"zero_shot": evals_lib.ZeroShotEvaluator, "retrieval": evals_lib.RetrievalEvaluator,
             "diagnostics": evals_lib.DiagnosticsEvaluator}
  for name, entry in evals.items():
    ev = evs[name]
    assert type(ev) is classes[entry["kind"]] and ev.name == name, name
    assert (ev.batch_size, ev.image_size, ev.tokenizer) == (5, IMAGE_SIZE, TOKENIZER), name
    caption_mode = "random" if entry["kind"] == "zero_shot" else "full"
    assert ev.source == S.SyntheticScenes(
        num_records=NUM_EXAMPLES, seed=0, split=entry["split"], image_size=IMAGE_SIZE,
        min_objects=entry["min_objects"], max_objects=entry["max_objects"],
        caption_mode=caption_mode), name
  assert evs["zs_count"].label_offset == 1 and evs["zs_shape"].comparative_alpha == 0.0

  # The schedule: zs_colour every 3 steps, the others every 4 (the default).
  others = tuple(n for n in evals if n != "zs_colour")
  assert evs.periods == {n: 3 if n == "zs_colour" else 4 for n in evals}
  assert evs.due(12) == tuple(evals) and evs.due(0) == tuple(evals)
  assert evs.due(3) == evs.due(9) == ("zs_colour",)
  assert evs.due(4) == evs.due(8) == others
  assert evs.due(5) == evs.due(7) == ()
  config.eval_every_steps = 5  # the default is read when the evaluators are built
  assert evaluators_of(config).due(5) == others and evs.due(5) == ()

  # PC-CLIP's evaluations; comparative prompting through the constructor.
  pc = evaluators_of(demo_config(pcclip_synthetic.pcclip_evals(20).to_dict()))
  assert {n: type(ev) for n, ev in pc.items()} == {
      "pairwise": comparative.PairwiseEvaluator, "ranking": comparative.AttributeRankingEvaluator,
      "zs_shape": evals_lib.ZeroShotEvaluator, "zs_shape_comparative": evals_lib.ZeroShotEvaluator}
  assert pc["pairwise"].source == pairs_lib.SyntheticPairs(20, seed=0, split="test",
                                                           image_size=IMAGE_SIZE)
  assert (pc["ranking"].num_examples, pc["ranking"].split, pc["ranking"].seed) == (5, "test", 0)
  assert pc["zs_shape"].comparative_alpha == 0.0
  assert (pc["zs_shape_comparative"].comparative_alpha,
          pc["zs_shape_comparative"].comparative_template) == (0.85, "a {} differs from a {} in "
                                                               "shape.")
  zs = evaluator("zs", dict(evals["zs_shape"], comparative_alpha=0.5,
                            comparative_template="a {} is not a {}."))
  assert (zs.comparative_alpha, zs.comparative_template) == (0.5, "a {} is not a {}.")

  # A builder's signature is strict: an unknown field is a TypeError, for every kind ...
  ctx = evals_lib.EvalContext(TOKENIZER, IMAGE_SIZE, 5, "/nowhere")
  fields = {k: v for k, v in evals["zs_shape"].items() if k != "kind"}
  assert isinstance(EVALUATORS.get("zero_shot")("zs", ctx, **fields), evals_lib.ZeroShotEvaluator)
  with pytest.raises(TypeError, match="num_exampels"):
    EVALUATORS.get("zero_shot")("zs", ctx, **fields, num_exampels=3)
  for kind, builder in EVALUATORS.items():
    with pytest.raises(TypeError, match="no_such_field"):
      builder("x", ctx, no_such_field=1)
    assert set(evals_lib.kind_fields(kind)) == {
        p for p in inspect.signature(builder).parameters if p not in ("name", "ctx")}
  # ... and config validation (before any work) says which entry, which field and the kind's fields.
  def validated(name, cfg):
    validate_config(demo_config({name: cfg}), num_devices=8, process_count=1)
  with pytest.raises(ConfigError, match=r"config.evals.zs: zero_shot has no field "
                                        r"'num_exampels'; its fields: kind, every_steps, dataset"):
    validated("zs", dict(evals["zs_shape"], num_exampels=3))
  with pytest.raises(ConfigError, match=r"config.evals.p: pairwise needs 'num_examples'"):
    validated("p", dict(kind="pairwise", split="test"))
  with pytest.raises(ConfigError, match=r"config.evals.x.kind='nope'; choose one of \('zero_shot'"):
    validated("x", dict(kind="nope"))
  with pytest.raises(ConfigError, match=r"config.evals.zs.every_steps=-1 must be >= 0"):
    validated("zs", dict(evals["zs_shape"], every_steps=-1))
  # The registry's lookup in build_evaluators names the entry too.
  with pytest.raises(ConfigError, match=r"config.evals.x.kind='nope'"):
    evaluator("x", dict(kind="nope"))

  # Real sources are built (and checked) here: diagnostics on the first rows of a CSV source
  # (sources.make_source, field named), and a TFDS set that is not prepared is an error now.
  rows = "".join(f"{tmp_path}/im{i}.png,caption {i}\n" for i in range(5))
  (tmp_path / "pairs.csv").write_text("image,caption\n" + rows)
  diag = evaluator("diag", dict(kind="diagnostics", num_examples=3,
                                data=common.data_source("csv", path=str(tmp_path / "pairs.csv"))))
  assert type(diag) is evals_lib.DiagnosticsEvaluator and len(diag.source) == 3
  assert diag.source.source.captions[4] == "caption 4"
  with pytest.raises(DataPathError, match=r"config.evals.diag.data.path=.*matches no file"):
    evaluator("diag", dict(kind="diagnostics", num_examples=3,
                           data=common.data_source("csv", path=str(tmp_path / "none.csv"))))
  for entry in (common.tfds_zero_shot("cifar10"), common.linear_probe("cifar10")):
    config = demo_config({"cifar10": entry})
    config.data.eval_data_dir = str(tmp_path / "empty")
    with pytest.raises(tfds_eval.EvalDataNotFound, match="'cifar10'.*is not prepared under "
                                                         f"data_dir '{tmp_path}/empty'"):
      evaluators_of(config)

  # Where TFDS sets are looked for: the given directory, else $TFDS_DATA_DIR, else TFDS's default.
  monkeypatch.setenv("TFDS_DATA_DIR", "/env/tfds")
  assert evals_lib.eval_data_dir("/data/tfds") == "/data/tfds"
  assert evals_lib.eval_data_dir("") == "/env/tfds"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert evals_lib.eval_data_dir("") == os.path.expanduser("~/tensorflow_datasets")


def test_evaluators_run_all_or_the_named_ones_pictures_apart():
  picture, curve = np.zeros((4, 4, 3), np.uint8), np.arange(6.0).reshape(2, 3)
  a = _Fixed({"a/top1": 0.5, "a/space": picture, "a/curve": curve})
  b = _Fixed({"b/recall": 0.25})
  evs = evals_lib.Evaluators({"a": a, "b": b}, {"a": 2, "b": 3})
  scalars, pictures = evs.run(None, None)
  assert list(pictures) == ["a/space"] and pictures["a/space"] is picture
  assert scalars == {"a/top1": 0.5, "a/curve": curve, "b/recall": 0.25}  # 2-D: not a picture
  assert evs.run(None, None, names=evs.due(3)) == ({"b/recall": 0.25}, {})
  assert (a.calls, b.calls) == (1, 2)
  assert evs.run(None, None, names=()) == ({}, {})
  with pytest.raises(KeyError, match="'c'"):
    evs.run(None, None, names=["c"])
  assert dict(evs.items()) == {"a": a, "b": b} and "a" in evs and "c" not in evs
