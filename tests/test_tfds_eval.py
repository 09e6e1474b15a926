"""Evaluation datasets through TFDS ArrayRecord (tiny real datasets written here) and the zero-shot
class names and templates in rankclip_jax/data/zeroshot/."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfds_fixtures
from rankclip_jax.data import images, tfds_eval

REPO = str(pathlib.Path(__file__).resolve().parents[1])

# Class counts of each dataset's label space (TFDS label order).
EXPECTED_CLASSES = {
    "imagenet1k": 1000, "imagenet_v2": 1000, "imagenet_sketch": 1000, "imagenet_a": 200,
    "imagenet_r": 200, "cifar10": 10, "cifar100": 100, "caltech101": 102, "dtd": 47, "food101": 101,
    "flowers102": 102, "pets": 37, "stanford_cars": 196, "stl10": 10, "svhn": 10, "sun397": 397,
}


def test_registry_covers_expected_datasets():
  assert set(tfds_eval.DATASETS) == set(EXPECTED_CLASSES)
  for name, ds in tfds_eval.DATASETS.items():
    assert ds.name == name
    cmd = ds.prepare_command("/data/tfds")
    assert f"'{ds.tfds_name}'" in cmd and "'/data/tfds'" in cmd and "array_record" in cmd


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_class_names_and_templates(name):
  names = tfds_eval.classnames(name)
  assert len(names) == EXPECTED_CLASSES[name]
  dupes = {n for n in names if names.count(n) > 1}
  # OpenAI's ImageNet names keep two pairs of near-synonym classes under one name each.
  assert dupes == ({"missile", "sunglasses"} if len(names) == 1000 else set())
  assert all(isinstance(n, str) and n.strip() == n and n for n in names)
  temps = tfds_eval.templates(name)
  assert temps and all(t.count("{}") == 1 and t.format("x") for t in temps)


def test_template_sets_and_known_entries():
  assert len(tfds_eval.templates("imagenet1k")) == 80
  assert tfds_eval.templates("imagenet1k")[0] == "a bad photo of a {}."
  assert len(tfds_eval.templates("imagenet1k_simple")) == 7
  assert len(tfds_eval.templates("cifar10")) == 18
  for t in tfds_eval._load("templates.json").values():  # pylint: disable=protected-access
    assert all(s.count("{}") == 1 for s in t)
  inet = tfds_eval.classnames("imagenet1k")
  assert inet[0] == "tench" and inet[1] == "goldfish" and inet[999] == "toilet paper"
  assert tfds_eval.classnames("cifar10")[0] == "airplane"
  assert tfds_eval.classnames("cifar100")[:2] == ["apple", "aquarium fish"]
  # TFDS label order, which differs from CLIP's list order for these:
  assert tfds_eval.classnames("caltech101")[:5] == [
      "accordion", "airplane", "anchor", "ant", "background"]
  assert tfds_eval.classnames("food101")[16:18] == ["cheesecake", "cheese plate"]
  assert tfds_eval.classnames("pets")[:2] == ["Abyssinian", "american bulldog"]
  assert tfds_eval.classnames("svhn")[0] == "zero"
  with pytest.raises(KeyError, match="cifar10"):
    tfds_eval.classnames("no_such_dataset")


def test_imagenet_subsets():
  wnids = tfds_eval._load("imagenet_wnids.json")  # pylint: disable=protected-access
  assert len(wnids["imagenet1k"]) == 1000 and wnids["imagenet1k"] == sorted(wnids["imagenet1k"])
  assert len(set(wnids["imagenet1k"])) == 1000
  inet = tfds_eval.classnames("imagenet1k")
  for name in ("imagenet_r", "imagenet_a"):
    idx = tfds_eval.class_subset(name)
    assert len(idx) == len(set(idx)) == 200 and idx == sorted(idx)
    assert tfds_eval.classnames(name) == [inet[i] for i in idx]
  assert tfds_eval.class_subset("imagenet1k") is None
  # Fixed points from the sources: ImageNet-R starts goldfish, great white shark, hammerhead,
  # stingray; ImageNet-A (thousand_k_to_200) starts stingray, goldfinch, junco.
  assert tfds_eval.class_subset("imagenet_r")[:4] == [1, 2, 4, 6]
  assert tfds_eval.class_subset("imagenet_a")[:3] == [6, 11, 13]
  assert tfds_eval.classnames("imagenet_a")[:3] == ["stingray", "goldfinch", "junco"]
  assert len(set(tfds_eval.class_subset("imagenet_r")) & set(tfds_eval.class_subset("imagenet_a"))) < 200


def _assert_reads_back(source, wrote):
  assert len(source) == len(wrote)
  for i, (image, label) in enumerate(wrote):
    if image is None:
      with pytest.raises(images.BadImage):
        source[i]
      continue
    ex = source[i]
    assert set(ex) == {"image", "label"}
    assert ex["image"].mode == "RGB"
    arr = np.asarray(ex["image"])
    assert arr.dtype == np.uint8 and arr.shape == image.shape
    np.testing.assert_array_equal(arr, image)  # PNG is lossless
    assert type(ex["label"]) is int and ex["label"] == label


def test_reads_tiny_cifar10_written_as_array_record(tmp_path):
  wrote = tfds_fixtures.write_tiny_tfds(tmp_path, "cifar10", num_examples=12)
  assert os.path.isdir(tmp_path / "cifar10" / "1.0.0")
  source = tfds_eval.TfdsEvalSource("cifar10", data_dir=tmp_path)
  assert source.split == "test" and source.classnames == tfds_eval.classnames("cifar10")
  assert [label for _, label in wrote] == [i % 10 for i in range(12)]
  _assert_reads_back(source, wrote)
  assert source[-1]["label"] == wrote[-1][1]
  with pytest.raises(IndexError):
    source[12]
  assert list(iter(source))[0]["label"] == 0  # the sequence protocol stops at IndexError
  sliced = tfds_eval.TfdsEvalSource("cifar10", tmp_path, split="test[:5]")
  assert len(sliced) == 5


def test_corrupt_image_raises_bad_image(tmp_path):
  wrote = tfds_fixtures.write_tiny_tfds(tmp_path, "cifar10", num_examples=4, corrupt=(2,))
  _assert_reads_back(tfds_eval.TfdsEvalSource("cifar10", tmp_path), wrote)


def test_imagenet_r_labels_map_into_the_200_classes(tmp_path):
  wrote = tfds_fixtures.write_tiny_tfds(tmp_path, "imagenet_r", num_examples=5, image_size=8,
                                        num_classes=None)
  source = tfds_eval.TfdsEvalSource("imagenet_r", tmp_path)
  assert len(source.classnames) == 200
  _assert_reads_back(source, wrote)


def test_config_name_and_split_errors(tmp_path):
  wrote = tfds_fixtures.write_tiny_tfds(tmp_path, "imagenet_v2", num_examples=3, image_size=8)
  assert os.path.isdir(tmp_path / "imagenet_v2" / "matched-frequency" / "1.0.0")
  _assert_reads_back(tfds_eval.TfdsEvalSource("imagenet_v2", tmp_path), wrote)
  with pytest.raises(ValueError, match="no split 'train'"):
    tfds_eval.TfdsEvalSource("imagenet_v2", tmp_path, split="train")


def test_label_space_mismatch(tmp_path):
  tfds_fixtures.write_tiny_tfds(tmp_path, "cifar10", num_examples=2)
  os.rename(tmp_path / "cifar10", tmp_path / "cifar100")
  with pytest.raises(ValueError, match="has 10 classes; expected 100"):
    tfds_eval.TfdsEvalSource("cifar100", tmp_path)


def test_missing_dataset_names_the_prepare_command(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tfds_eval.TfdsEvalSource("imagenet1k", data_dir=tmp_path)
  msg = str(e.value)
  assert "'imagenet1k'" in msg and str(tmp_path) in msg
  assert tfds_eval.DATASETS["imagenet1k"].prepare_command(tmp_path) in msg
  assert "file_format='array_record'" in msg
  assert f"{tmp_path}/downloads/manual" in msg and "ILSVRC2012_img_val.tar" in msg
  with pytest.raises(FileNotFoundError, match="tfds.builder\\('cifar100'"):
    tfds_eval.TfdsEvalSource("cifar100", data_dir=tmp_path / "nowhere")


def test_tfrecord_only_dataset_is_refused_with_the_prepare_command(tmp_path):
  tfds_fixtures.write_tiny_tfds(tmp_path, "cifar10", num_examples=2)
  info = tmp_path / "cifar10" / "1.0.0" / "dataset_info.json"
  info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(FileNotFoundError, match="as tfrecord") as e:
    tfds_eval.TfdsEvalSource("cifar10", tmp_path)
  assert tfds_eval.DATASETS["cifar10"].prepare_command(tmp_path) in str(e.value)


def test_reading_needs_no_tensorflow(tmp_path):
  """Read in a fresh interpreter where importing tensorflow fails."""
  wrote = tfds_fixtures.write_tiny_tfds(tmp_path / "data", "cifar10", num_examples=3, image_size=4)
  stub = tmp_path / "stub" / "tensorflow"
  stub.mkdir(parents=True)
  (stub / "__init__.py").write_text("raise ImportError('tensorflow is blocked in this test')\n")
  code = textwrap.dedent(f"""
      import sys
      import numpy as np
      from rankclip_jax.data import tfds_eval
      s = tfds_eval.TfdsEvalSource("cifar10", {str(tmp_path / "data")!r})
      print([int(np.asarray(s[i]["image"]).sum()) for i in range(len(s))], [s[i]["label"] for i in range(len(s))])
      assert "tensorflow" not in sys.modules
  """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path / "stub"), REPO, os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  sums = [int(image.sum()) for image, _ in wrote]
  assert out.stdout.strip().splitlines()[-1] == f"{sums} {[label for _, label in wrote]}"


def test_zero_shot_evaluation_on_a_tfds_set_written_here(tmp_path):
  """config.evals names a TFDS set; the evaluator's top-k equals one computed here from the model's
  embeddings of the same images and of the CIFAR prompt ensemble; the corrupt image is counted."""
  import jax
  import ml_collections

  from configs import common
  from rankclip_jax import train
  from rankclip_jax.evaluation.embed import Embedder
  from test_synthetic_evals import evaluators_of
  from test_train import micro_config

  written = tfds_fixtures.write_tiny_tfds(tmp_path, "cifar10", num_examples=12, image_size=32,
                                          corrupt=(3,))
  c = micro_config()
  c.evals = ml_collections.ConfigDict({"cifar10": common.tfds_zero_shot("cifar10")})
  c.data.eval_data_dir = str(tmp_path)
  trainer = train.Trainer(c)
  params = trainer.init().params
  metrics = evaluators_of(c, trainer.tokenizer)["cifar10"].run(
      Embedder(trainer.model, trainer.mesh), params)

  from rankclip_jax.data.pipeline import normalize_image
  good = [(im, y) for im, y in written if im is not None]
  apply = lambda x, m: trainer.model.apply({"params": jax.device_get(params)}, x, method=m)  # noqa
  image_emb = np.asarray(apply(np.stack([normalize_image(im) for im, _ in good]), "encode_image"))
  names, temps = tfds_eval.classnames("cifar10"), tfds_eval.templates("cifar10")
  text = np.asarray(apply(trainer.tokenizer([t.format(n) for n in names for t in temps]),
                          "encode_text")).reshape(len(names), len(temps), -1)
  classes = text / np.linalg.norm(text, axis=-1, keepdims=True)
  classes = classes.mean(1)
  classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
  ranks = np.argsort(-(image_emb @ classes.T), axis=1)
  labels = np.array([y for _, y in good])
  for k in (1, 3, 5):
    expected = float(np.mean([labels[i] in ranks[i, :k] for i in range(len(good))]))
    assert metrics[f"cifar10/top{k}"] == pytest.approx(expected, abs=1e-6), k
  assert metrics["cifar10/num_examples"] == 11 and metrics["cifar10/skipped"] == 1
  assert metrics["cifar10/chance"] == pytest.approx(0.1)
