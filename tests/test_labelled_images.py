"""The user's own labelled images (data/labelled_images.py): ImageFolder trees and CSV/TSV lists
written here with Pillow, listed to exactly the (path, label) pairs and class names they hold; bad
images skipped and counted; the zero_shot and linear_probe evaluators on them against answers
computed here by brute force from a micro model's embeddings; the errors, at build time and in
config validation."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from rankclip_jax.data import csv_files, labelled_images as L, pipeline
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.errors import UserError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 220),
           "yellow": (230, 220, 40)}
ENTRY = "config.evals.mine"


def write_image(path, colour, size=16, fmt=None, noise=None, seed=0):
  """A size x size image of one colour (plus Gaussian noise of std `noise`), in the format of its
  suffix (or `fmt`); returns its path as a string."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.broadcast_to(np.asarray(colour, np.float64), (size, size, 3))
  if noise:
    pixels = pixels + np.random.default_rng(seed).normal(0, noise, (size, size, 3))
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format=fmt)
  return str(path)


def write_text(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


def write_json(path, value):
  return write_text(path, json.dumps(value))


def folder_tree(root):
  """Three classes with images at several depths, in every listed format, and files that are not
  listed; returns the (path, label) pairs the folder holds, in listing order."""
  expected = [
      (write_image(root / "cat" / "a.png", COLOURS["red"]), 0),
      (write_image(root / "cat" / "sub" / "deeper" / "b.JPEG", COLOURS["red"], fmt="JPEG"), 0),
      (write_image(root / "cat" / "z.jpg", COLOURS["red"]), 0),
      (write_image(root / "dog" / "d.webp", COLOURS["green"]), 1),
      (write_image(root / "dog" / "e.bmp", COLOURS["green"]), 1),
      (write_image(root / "dog" / "f.TIF", COLOURS["green"], fmt="TIFF"), 1),
      (write_image(root / "emu" / "g.gif", COLOURS["blue"]), 2),
  ]
  write_text(root / "cat" / "notes.txt", "not an image")
  write_image(root / "cat" / ".hidden.png", COLOURS["blue"])  # hidden: not listed
  write_image(root / "dog" / ".thumbs" / "h.png", COLOURS["blue"])  # in a hidden folder
  write_image(root / "loose.png", COLOURS["blue"])  # not in a class folder
  write_image(root / "emu" / "i.eps.txt", COLOURS["blue"], fmt="PNG")  # suffix not an image's
  return expected


def batches_of(source, image_size=16):
  skips = {}
  batches = list(pipeline.eval_batches(source, batch_size=4, tokenizer=ClipTokenizer(16),
                                       image_size=image_size, label_keys=("label",),
                                       skip_counter=skips))
  labels = np.concatenate([b["label"][b["mask"]] for b in batches]) if batches else np.array([])
  return batches, labels.tolist(), skips


# ------------------------------------------------------------------------------------ listings

def test_folder_lists_every_image_of_every_class(tmp_path):
  expected = folder_tree(tmp_path / "val")
  src = L.make_source("folder", str(tmp_path / "val"))
  assert src.examples() == expected
  assert src.classnames == ["cat", "dog", "emu"] and src.classes.keys == ("cat", "dog", "emu")
  assert len(src) == 7
  for i, (path, label) in enumerate(expected):
    record = src[i]
    with open(path, "rb") as f:
      assert record == {"image_bytes": f.read(), "label": label, "where": path}
  assert src[-1]["label"] == 2
  with pytest.raises(IndexError):
    src[7]
  # Every format decodes through the evaluation pipeline to its colour (JPEG within its loss).
  batches, labels, skips = batches_of(src)
  assert labels == [label for _, label in expected] and skips == {}
  pixels = np.concatenate([b["image"][b["mask"]] for b in batches])
  raw = pixels * pipeline.CLIP_STD + pipeline.CLIP_MEAN
  means = raw.reshape(len(expected), -1, 3).mean(1) * 255
  names = ["red", "green", "blue"]
  for mean, (_, label) in zip(means, expected):
    np.testing.assert_allclose(mean, COLOURS[names[label]], atol=3)
  # A symbolic link to a folder is a class; the listing follows the link at the class level.
  os.symlink(tmp_path / "val" / "emu", tmp_path / "val" / "fox")
  linked = L.make_source("folder", str(tmp_path / "val"))
  assert linked.classnames == ["cat", "dog", "emu", "fox"]
  assert linked.examples()[-1] == (str(tmp_path / "val" / "fox" / "g.gif"), 3)


def test_folder_class_names_from_a_json_object_or_list(tmp_path):
  expected = folder_tree(tmp_path / "val")
  mapping = write_json(tmp_path / "names.json", {"emu": "emu bird", "cat": "tabby cat",
                                                 "dog": "puppy", "owl": "not a subfolder"})
  src = L.make_source("folder", str(tmp_path / "val"), class_names=mapping)
  assert src.classnames == ["tabby cat", "puppy", "emu bird"] and src.examples() == expected
  listed = write_json(tmp_path / "list.json", ["Cat", " Dog ", "Emu"])
  src = L.make_source("folder", str(tmp_path / "val"), class_names=listed)
  assert src.classnames == ["Cat", "Dog", "Emu"] and src.examples() == expected

  def error(class_names):
    with pytest.raises(L.LabelledImagesError) as e:
      L.make_source("folder", str(tmp_path / "val"), class_names=class_names, entry=ENTRY)
    assert f"{ENTRY}.class_names" in str(e.value)
    return str(e.value)

  msg = error(write_json(tmp_path / "short.json", ["Cat", "Dog"]))
  assert "lists 2 names" in msg and "has 3 class subfolders" in msg and "short.json" in msg
  msg = error(write_json(tmp_path / "partial.json", {"cat": "tabby cat"}))
  assert "'dog', 'emu'" in msg and "partial.json" in msg and "Add them" in msg
  assert "no such file" in error(str(tmp_path / "missing.json"))
  assert "cannot read it as JSON" in error(write_text(tmp_path / "broken.json", "{'cat': 1"))
  assert "not a non-empty string" in error(write_json(tmp_path / "num.json", {"cat": 3}))
  assert "holds a JSON str" in error(write_json(tmp_path / "str.json", "cat"))
  assert "is empty" in error(write_json(tmp_path / "empty.json", []))


def test_csv_rows_with_names_indices_and_image_root(tmp_path):
  imgs = tmp_path / "imgs"
  a = write_image(imgs / "a.png", COLOURS["red"])
  b = write_image(imgs / "b.png", COLOURS["green"])
  c = write_image(tmp_path / "elsewhere" / "c.png", COLOURS["blue"])
  names = write_json(tmp_path / "names.json", ["cat", "dog", "emu", "owl"])
  csv_path = write_text(tmp_path / "lists" / "val.csv",
                        f"file,cls\n../imgs/a.png,dog\n../imgs/b.png, 0\n{c},emu\n,owl\n")
  src = L.make_source("csv", csv_path, class_names=names, image_key="file", label_key="cls")
  # Relative paths against the CSV's folder, an absolute one kept, an empty field kept empty.
  assert src.examples() == [(str(tmp_path / "lists" / ".." / "imgs" / "a.png"), 1),
                            (str(tmp_path / "lists" / ".." / "imgs" / "b.png"), 0), (c, 2),
                            ("", 3)]
  assert src.classnames == ["cat", "dog", "emu", "owl"]  # the list's classes, with no rows too
  _, labels, skips = batches_of(src)
  assert labels == [1, 0, 2] and skips == {"missing_file": 1}
  # image_root instead of the CSV's folder; a TSV's default delimiter; object names: sorted keys.
  tsv = write_text(tmp_path / "val.tsv", "image\tlabel\na.png\tn02\nb.png\t0\n")
  mapping = write_json(tmp_path / "wnids.json", {"n02": "dog", "n01": "cat"})
  src = L.make_source("csv", tsv, class_names=mapping, image_root=str(imgs))
  assert src.examples() == [(a, 1), (b, 0)] and src.classnames == ["cat", "dog"]
  # Without class names: the distinct labels, sorted (as numbers when all are integers).
  ints = write_text(tmp_path / "ints.csv", "image,label\nimgs/a.png,10\nimgs/b.png,2\n")
  src = L.make_source("csv", ints)
  assert src.classnames == ["2", "10"] and src.examples() == [(a, 1), (b, 0)]
  words = write_text(tmp_path / "words.csv", "image,label\nimgs/a.png,zebra\nimgs/b.png,ant\n")
  src = L.make_source("csv", words)
  assert src.classnames == ["ant", "zebra"] and src.examples() == [(a, 1), (b, 0)]
  # A linear probe's test set takes the training set's classes.
  test = L.make_source("csv", write_text(tmp_path / "t.csv", "image,label\nimgs/b.png,zebra\n"),
                       classes=src.classes)
  assert test.examples() == [(b, 1)] and test.classnames == ["ant", "zebra"]


def test_csv_errors_name_the_file_the_row_and_the_fix(tmp_path):
  write_image(tmp_path / "a.png", COLOURS["red"])
  names = write_json(tmp_path / "names.json", ["cat", "dog", "cat"])

  def error(text, **kw):
    path = write_text(tmp_path / "x.csv", text)
    with pytest.raises(UserError) as e:
      L.make_source("csv", path, entry=ENTRY, **kw)
    return str(e.value)

  msg = error("image,label\na.png,dog\na.png,cow\na.png,7\na.png,1\n", class_names=names)
  assert "x.csv: row 2 below the header has label 'cow' (and 1 more rows)" in msg
  assert "names.json" in msg and "index in [0, 3)" in msg
  msg = error("image,label\na.png,cat\n", class_names=names)
  assert "more than one class" in msg and "integer index" in msg
  unique = write_json(tmp_path / "unique.json", ["cat", "dog"])  # the same row, names now unique
  assert L.make_source("csv", str(tmp_path / "x.csv"), class_names=unique).examples() == [
      (str(tmp_path / "a.png"), 0)]
  msg = error("image,label\na.png,\n", class_names=names)
  assert "row 1 below the header has an empty label" in msg and f"{ENTRY}.label_key" in msg
  msg = error("path,label\na.png,cat\n")
  assert "has no column 'image'" in msg and f"--{ENTRY}.image_key=<column>" in msg
  assert isinstance(pytest.raises(csv_files.CsvFormatError, L.make_source, "csv",
                                  str(tmp_path / "x.csv")).value, UserError)
  assert "hold no rows below the header" in error("image,label\n")
  assert "image_key and" in error("image,label\na.png,cat\n", label_key="image")
  assert f"{ENTRY}.image_root" in error("image,label\na.png,cat\n",
                                        image_root=str(tmp_path / "nowhere"))
  with pytest.raises(UserError, match=f"{ENTRY}.path='.*nothing.csv' matches no file"):
    L.make_source("csv", str(tmp_path / "nothing.csv"), entry=ENTRY)
  train = L.make_source("csv", write_text(tmp_path / "train.csv", "image,label\na.png,cat\n"))
  msg = error("image,label\na.png,dog\n", classes=train.classes)
  assert "not one of the 1 classes of the labels of" in msg and f"{ENTRY}.train_path" in msg


def test_folder_errors_name_the_field_and_the_fix(tmp_path):
  def error(path, **kw):
    with pytest.raises(L.LabelledImagesError) as e:
      L.make_source("folder", str(path), entry=ENTRY, **kw)
    assert isinstance(e.value, UserError)
    return str(e.value)

  msg = error(tmp_path / "nowhere")
  assert f"{ENTRY}.path=" in msg and "no such folder" in msg and "ImageFolder" in msg
  assert "dataset='csv'" in error(write_text(tmp_path / "list.csv", "image,label\n"))
  (tmp_path / "empty").mkdir()
  assert "has no class subfolders" in error(tmp_path / "empty")
  write_image(tmp_path / "flat" / "a.png", COLOURS["red"])
  assert "holds 1 image files directly" in error(tmp_path / "flat")
  write_image(tmp_path / "val" / "cat" / "a.png", COLOURS["red"])
  write_text(tmp_path / "val" / "dog" / "readme.txt", "no images here")
  msg = error(tmp_path / "val")
  assert f"class subfolder {tmp_path / 'val' / 'dog'} holds no image files" in msg
  assert ".jpeg" in msg and "remove it" in msg
  with pytest.raises(L.LabelledImagesError, match=f"{ENTRY}.train_path is empty"):
    L.make_source("folder", " ", entry=ENTRY, path_field="train_path")
  # A test folder's classes must be the training folder's.
  write_image(tmp_path / "train" / "cat" / "a.png", COLOURS["red"])
  write_image(tmp_path / "test" / "cow" / "a.png", COLOURS["red"])
  train = L.make_source("folder", str(tmp_path / "train"))
  assert "the subfolders 'cow' of" in error(tmp_path / "test", classes=train.classes)
  # Zero-shot needs names for classes that are only numbers.
  write_image(tmp_path / "digits" / "0" / "a.png", COLOURS["red"])
  write_image(tmp_path / "digits" / "1" / "a.png", COLOURS["green"])
  assert L.make_source("folder", str(tmp_path / "digits")).classnames == ["0", "1"]
  msg = error(tmp_path / "digits", need_names=True)
  assert f"{ENTRY}.class_names is needed" in msg and "'0', '1'" in msg
  assert L.make_source("folder", str(tmp_path / "digits"), need_names=True,
                       class_names=write_json(tmp_path / "d.json", ["zero", "one"])
                       ).classnames == ["zero", "one"]


def test_unreadable_images_are_skipped_and_counted(tmp_path):
  root = tmp_path / "val"
  good = [write_image(root / "cat" / "a.png", COLOURS["red"]),
          write_image(root / "dog" / "c.png", COLOURS["green"])]
  write_text(root / "cat" / "b.png", "not a png at all")  # does not decode
  os.mkfifo(root / "dog" / "fifo.png")  # not a regular file: never opened
  gone = write_image(root / "dog" / "d.png", COLOURS["green"])
  src = L.make_source("folder", str(root))
  assert [label for _, label in src.examples()] == [0, 0, 1, 1, 1]
  os.remove(gone)  # vanished after the listing
  assert src.examples()[3:] == [(gone, 1), (str(root / "dog" / "fifo.png"), 1)]
  assert src[3]["__skipped__"] == "missing_file"
  assert src[4]["__skipped__"] == "unreadable_image" and "not a regular file" in src[4]["where"]
  _, labels, skips = batches_of(src)
  assert labels == [0, 1] and skips == {"unreadable_image": 2, "missing_file": 1}
  assert [p for p, _ in src.examples() if p in good] == good


def test_evenly_spread_subset(tmp_path):
  paths = [write_image(tmp_path / "v" / c / f"{i}.png", COLOURS[c])
           for c in ("blue", "red") for i in range(5)]
  src = L.make_source("folder", str(tmp_path / "v"))
  sub = src.evenly(4)
  assert sub.examples() == [(paths[i], i // 5) for i in (0, 2, 5, 7)]
  assert sub.evenly(2).examples() == [(paths[0], 0), (paths[5], 1)]
  assert src.evenly(0) is src and src.evenly(10) is src and len(sub) == 4
  assert sub[3]["where"] == paths[7]


def test_prompt_templates_from_a_set_or_a_json_file(tmp_path):
  assert L.prompt_templates("imagenet1k_simple")[0] == "itap of a {}."
  assert len(L.prompt_templates("cifar10")) == 18
  good = write_json(tmp_path / "t.json", ["a photo of a {}.", "{} in the wild, {{literally}}"])
  assert L.prompt_templates(good) == ["a photo of a {}.", "{} in the wild, {{literally}}"]

  def error(value):
    with pytest.raises(L.LabelledImagesError) as e:
      L.prompt_templates(value, field=f"{ENTRY}.templates")
    assert f"{ENTRY}.templates" in str(e.value)
    return str(e.value)

  for bad, index in ((["a {}", "no class here"], 1), (["{} and {}"], 0), (["a {0} {}"], 0),
                     (["a { photo of {}"], 0), (["fine {}", 3], 1)):
    msg = error(write_json(tmp_path / "bad.json", bad))
    assert "bad.json" in msg and f"template {index}" in msg
  assert "exactly one '{}'" in error(write_json(tmp_path / "bad.json", ["no class"]))
  assert "holds a JSON dict" in error(write_json(tmp_path / "bad.json", {"a": "{}"}))
  assert "an empty list" in error(write_json(tmp_path / "bad.json", []))
  assert "no such file" in error(str(tmp_path / "none.json"))
  msg = error("imagenet_simple")
  assert "No templates 'imagenet_simple'" in msg and "imagenet1k_simple" in msg and ".json" in msg


# ---------------------------------------------------------------------------- the evaluators

@pytest.fixture(scope="module")
def micro_model():
  """An untrained micro model, its parameters and one Embedder (its jitted towers compile once)."""
  from rankclip_jax import train
  from rankclip_jax.evaluation.embed import Embedder
  from test_train import micro_config
  config = micro_config()
  trainer = train.Trainer(config)
  return config, trainer, trainer.init().params, Embedder(trainer.model, trainer.mesh)


def _build(micro_model, entries):
  from rankclip_jax.evaluation.evaluators import build_evaluators
  config, trainer, _, _ = micro_model
  return build_evaluators(ml_collections.ConfigDict(entries), tokenizer=trainer.tokenizer,
                          image_size=config.image_size, batch_size=config.eval_batch_size,
                          every_steps=config.eval_every_steps)


def _run(micro_model, name, entry):
  _, _, params, embedder = micro_model
  return _build(micro_model, {name: entry})[name].run(embedder, params)


def _embed(micro_model, paths=None, texts=None):
  """Embeddings computed here: each image read with Pillow and resized like the evaluation's
  centre crop (a square image: a bicubic resize to the model's size)."""
  import jax
  config, trainer, params, _ = micro_model
  p = {"params": jax.device_get(params)}
  if paths is not None:
    size = config.image_size
    x = np.stack([pipeline.normalize_image(np.asarray(
        Image.open(q).convert("RGB").resize((size, size), Image.BICUBIC))) for q in paths])
    return np.asarray(trainer.model.apply(p, x, method="encode_image"))
  return np.asarray(trainer.model.apply(p, trainer.tokenizer(texts), method="encode_text"))


def _brute_force_topk(image, labels, class_emb, ks):
  """Top-k accuracies of normalised image embeddings among class embeddings, ties against."""
  scores = image @ class_emb.T
  # In the top k: fewer than k other classes score at least as high as the true one.
  return {k: float(np.mean([np.sum(scores[i] >= scores[i, y]) - 1 < k
                            for i, y in enumerate(labels)])) for k in ks}


def test_zero_shot_on_a_folder_and_a_csv_against_brute_force(tmp_path, micro_model):
  """Top-1/3 of the evaluator equal those computed here from the model's embeddings of the same
  images and the prompts of the JSON names and templates; the corrupt image is counted."""
  root = tmp_path / "val"
  examples = []
  for label, (wnid, colour) in enumerate(zip(("n01", "n02", "n03", "n04"), COLOURS.values())):
    for i in range(label + 1):  # 1, 2, 3, 4 images: any mislabelling changes the accuracy
      shade = np.clip(np.asarray(colour) + 25 * i, 0, 255)
      examples.append((write_image(root / wnid / f"{i}.png", shade), label))
  write_text(root / "n02" / "broken.png", "corrupt")
  names = write_json(tmp_path / "names.json", {"n01": "apple", "n02": "frog", "n03": "lake",
                                               "n04": "banana"})
  prompts = ["a photo of a {}.", "a {} on a table."]
  templates = write_json(tmp_path / "templates.json", prompts)
  # The embeddings, computed here: images, and the prompt ensemble of each class.
  image = _embed(micro_model, paths=[p for p, _ in examples])
  image = image / np.linalg.norm(image, axis=1, keepdims=True)
  classnames = ["apple", "frog", "lake", "banana"]
  text = _embed(micro_model, texts=[t.format(c) for c in classnames for t in prompts])
  text = text.reshape(len(classnames), len(prompts), -1)
  text = text / np.linalg.norm(text, axis=-1, keepdims=True)
  class_emb = text.mean(1)
  class_emb = class_emb / np.linalg.norm(class_emb, axis=-1, keepdims=True)
  labels = np.array([y for _, y in examples])

  entry = dict(kind="zero_shot", dataset="folder", path=str(root), class_names=names,
               templates=templates)
  m = _run(micro_model, "mine", entry)
  expected = _brute_force_topk(image, labels, class_emb, (1, 3))
  assert m["mine/top1"] == pytest.approx(expected[1], abs=1e-6)
  assert m["mine/top3"] == pytest.approx(expected[3], abs=1e-6)
  assert "mine/top5" not in m and m["mine/chance"] == pytest.approx(0.25)
  assert m["mine/num_examples"] == 10 and m["mine/skipped"] == 1

  # The same images as CSV rows (shuffled, labels as keys and as indices), every other one read.
  order = np.random.default_rng(0).permutation(len(examples))
  rows = [(os.path.relpath(examples[i][0], tmp_path),
           ["n01", "1", "n03", "3"][examples[i][1]]) for i in order]
  csv_path = write_text(tmp_path / "val.csv",
                        "image,label\n" + "".join(f"{p},{y}\n" for p, y in rows))
  entry.update(dataset="csv", path=csv_path, num_examples=5)
  m = _run(micro_model, "mine", entry)
  chosen = order[[0, 2, 4, 6, 8]]
  expected = _brute_force_topk(image[chosen], labels[chosen], class_emb, (1, 3))
  assert m["mine/top1"] == pytest.approx(expected[1], abs=1e-6)
  assert m["mine/top3"] == pytest.approx(expected[3], abs=1e-6)
  assert m["mine/num_examples"] == 5 and "mine/skipped" not in m


def test_linear_probe_on_folders_against_brute_force(tmp_path, micro_model):
  """Classes of different colours are linearly separable in a random model's embeddings: the
  probe finds that, and matches the probe run here on independently computed features."""
  from rankclip_jax.evaluation.linear_probe import linear_probe
  sets = {}
  for split, n in (("train", 10), ("test", 5)):
    sets[split] = [(write_image(tmp_path / split / name / f"{i}.png", colour, noise=20,
                                seed=hash((split, name, i)) % 2 ** 32), label)
                   for label, (name, colour) in enumerate(sorted(COLOURS.items()))
                   for i in range(n)]
  # A test class may be missing (red), and an unreadable test image is counted.
  sets["test"] = [(p, y) for p, y in sets["test"] if "red" not in p]
  for p in os.listdir(tmp_path / "test" / "red"):
    os.remove(tmp_path / "test" / "red" / p)
  os.rmdir(tmp_path / "test" / "red")
  write_text(tmp_path / "test" / "blue" / "zz.png", "corrupt")
  entry = dict(kind="linear_probe", dataset="folder", train_path=str(tmp_path / "train"),
               path=str(tmp_path / "test"))
  m = _run(micro_model, "probe", entry)
  feats = {s: (_embed(micro_model, paths=[p for p, _ in v]), np.array([y for _, y in v]))
           for s, v in sets.items()}
  ref = linear_probe(*feats["train"], *feats["test"], 4)
  assert m["probe/top1"] == pytest.approx(ref["top1"]) and m["probe/top1"] >= 0.9
  assert m["probe/chosen_l2"] == ref["chosen_l2"]
  assert m["probe/num_train"] == 40 and m["probe/num_test"] == 15 and m["probe/skipped"] == 1


def test_build_time_errors_name_the_field(tmp_path, micro_model):
  write_image(tmp_path / "val" / "cat" / "a.png", COLOURS["red"])
  with pytest.raises(UserError, match="config.evals.mine.path='.*nowhere': no such folder"):
    _build(micro_model, {"mine": dict(kind="zero_shot", dataset="folder",
                                      path=str(tmp_path / "nowhere"))})
  bad = write_json(tmp_path / "t.json", ["no slot"])
  with pytest.raises(UserError, match="t.json \\(config.evals.mine.templates\\): template 0"):
    _build(micro_model, {"mine": dict(kind="zero_shot", dataset="folder",
                                      path=str(tmp_path / "val"), templates=bad)})
  with pytest.raises(UserError, match="config.evals.lp.train_path="):
    _build(micro_model, {"lp": dict(kind="linear_probe", dataset="folder",
                                    train_path=str(tmp_path / "nowhere"),
                                    path=str(tmp_path / "val"))})
  ev = _build(micro_model, {"mine": dict(kind="zero_shot", dataset="folder",
                                         path=str(tmp_path / "val"))})["mine"]
  assert ev.classnames == ["cat"] and len(ev.templates) == 80  # OpenAI's 80 by default


def test_config_validation_accepts_the_entries_and_catches_typos(tmp_path):
  from rankclip_jax.config_validation import validate_config
  from rankclip_jax.errors import ConfigError
  from test_train import micro_config
  c = micro_config()
  c.evals.mine = dict(kind="zero_shot", dataset="folder", path="/data/imagenet/val",
                      class_names="/data/imagenet/names.json", templates="imagenet1k_simple")
  c.evals.probe = dict(kind="linear_probe", dataset="csv", train_path="/data/train.csv",
                       path="/data/test.csv", label_key="class", num_train=100)
  validate_config(c, num_devices=8, process_count=1)

  def error(name, **fields):
    bad = c.copy_and_resolve_references()
    for key, value in fields.items():
      bad.evals[name][key] = value
    with pytest.raises(ConfigError) as e:
      validate_config(bad, num_devices=8, process_count=1)
    return str(e.value)

  bad = c.copy_and_resolve_references()
  bad.evals.mine.class_name = "names.json"  # misspelt
  with pytest.raises(ConfigError, match="zero_shot has no field 'class_name'; its fields: .*"
                     "class_names"):
    validate_config(bad, num_devices=8, process_count=1)
  msg = error("mine", dataset="folders")
  assert "config.evals.mine.dataset='folders'" in msg and "'folder' or 'csv'" in msg
  assert "config.evals.mine.path is empty" in error("mine", path="")
  assert "config.evals.probe.train_path is empty" in error("probe", train_path=" ")
  assert "config.evals.mine.templates='imagenet_simple'" in error("mine",
                                                                   templates="imagenet_simple")
  assert "image_key and" in error("probe", image_key="class")
  assert "num_examples must be >= 0" in error("probe", num_examples=-1)
  c.evals.mine.templates = str(tmp_path / "mine.json")  # a file: read when the evaluator is built
  validate_config(c, num_devices=8, process_count=1)
