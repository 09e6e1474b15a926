"""Karpathy-split retrieval sources on tiny real split files, and recall@k with known answers."""

import json
import os
import pickle

import numpy as np
import pytest

from data_fixtures import encode, grey_png, scenes
from rankclip_jax.data import images
from rankclip_jax.data.karpathy import (KarpathyFormatError, KarpathyRetrievalSource,
                                        caption_relevance, owner_relevance)
from rankclip_jax.data.records import skip_kind
from rankclip_jax.evaluation import metrics as M

# (split, captions) of the fixture's images in file order; image 3 (a test image) is not on disk.
SPLITS = ["train", "test", "val", "test", "restval", "test", "test"]
MISSING = 3


def _captions(i):
  n = 6 if i == 5 else 5  # image 5 has six captions, like a few COCO images
  return [f"  image {i} caption {j}. " for j in range(n)]


def write_split(tmp_path, flavour):
  """A Karpathy split file and its images; COCO flavour: filepath folders, Flickr: one folder."""
  root = tmp_path / flavour / "images"
  data = scenes(len(SPLITS), image_size=24)
  entries, expected = [], []
  for i, split in enumerate(SPLITS):
    folder = ("val2014" if i % 2 else "train2014") if flavour == "coco" else ""
    name = f"{flavour}_{i:06d}." + ("png" if i in (1, 5) else "jpg")
    entry = {"filename": name, "imgid": i, "split": split, "sentids": [],
             "sentences": [{"raw": c, "tokens": c.split(), "imgid": i, "sentid": 10 * i + j}
                           for j, c in enumerate(_captions(i))]}
    if flavour == "coco":
      entry.update(filepath=folder, cocoid=1000 + i)
    entries.append(entry)
    path = root / folder / name
    payload = {1: grey_png(data[i][0]), 5: encode(data[i][0], "PNG")}.get(
        i, encode(data[i][0], "JPEG", quality=90))
    if split == "test":
      expected.append((str(path), payload))
    if i == MISSING:
      continue
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
  json_path = tmp_path / flavour / f"dataset_{flavour}.json"
  json_path.write_text(json.dumps({"images": entries, "dataset": flavour}))
  return json_path, root, expected


@pytest.mark.parametrize("flavour", ["coco", "flickr30k"])
def test_test_split_in_file_order_with_captions_and_a_missing_image(tmp_path, flavour):
  json_path, root, expected = write_split(tmp_path, flavour)
  src = KarpathyRetrievalSource(json_path, root)
  assert len(src) == 4  # images 1, 3, 5, 6
  test_ids = [i for i, s in enumerate(SPLITS) if s == "test"]
  for k, (i, (path, payload)) in enumerate(zip(test_ids, expected)):
    record = src[k]
    if i == MISSING:
      assert skip_kind(record) == "missing_file" and record["where"] == path
      continue
    assert skip_kind(record) is None
    assert record["where"] == path
    assert record["captions"] == [f"image {i} caption {j}." for j in range(5)]  # 6th dropped
    assert record["image_bytes"] == payload
    assert np.asarray(images.decode_rgb(record["image_bytes"])).shape == (24, 24, 3)
  if flavour == "coco":
    assert src[0]["where"] == os.path.join(root, "val2014", "coco_000001.png")
  else:
    assert src[0]["where"] == os.path.join(root, "flickr30k_000001.png")
  assert src[-1]["where"] == src[3]["where"]
  with pytest.raises(IndexError):
    src[4]
  clone = pickle.loads(pickle.dumps(src))
  assert len(clone) == 4 and clone[2] == src[2]
  assert "4 images" in repr(src) and "split='test'" in repr(src)


def test_other_splits_max_captions_and_unreadable(tmp_path):
  json_path, root, _ = write_split(tmp_path, "coco")
  assert len(KarpathyRetrievalSource(json_path, root, "train")) == 1
  assert len(KarpathyRetrievalSource(json_path, root, "restval")) == 1
  src = KarpathyRetrievalSource(json_path, root, max_captions=None)
  assert len(src[2]["captions"]) == 6
  assert KarpathyRetrievalSource(json_path, root, max_captions=2)[2]["captions"] == [
      "image 5 caption 0.", "image 5 caption 1."]
  # A directory where the image should be: cannot be read as a file.
  os.remove(src.paths[0])
  os.mkdir(src.paths[0])
  assert skip_kind(src[0]) == "unreadable_image"


def test_blank_captions_are_dropped(tmp_path):
  root = tmp_path / "img"
  root.mkdir()
  (root / "a.jpg").write_bytes(encode(scenes(1, 24)[0][0], "JPEG"))
  entries = [{"filename": "a.jpg", "split": "test",
              "sentences": [{"raw": " "}, {"raw": "a dog"}, {"raw": ""}]},
             {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "\n"}]}]
  (tmp_path / "d.json").write_text(json.dumps({"images": entries}))
  src = KarpathyRetrievalSource(tmp_path / "d.json", root)
  assert src[0]["captions"] == ["a dog"]
  assert skip_kind(src[1]) == "empty_caption"


def test_errors_before_any_work(tmp_path):
  json_path, root, _ = write_split(tmp_path, "flickr30k")
  with pytest.raises(FileNotFoundError, match="nope.json.*caption_datasets.zip"):
    KarpathyRetrievalSource(tmp_path / "nope.json", root)
  with pytest.raises(KarpathyFormatError, match="no images in split 'testing'.*"
                     "'restval' \\(1 images\\), 'test' \\(4 images\\), 'train'"):
    KarpathyRetrievalSource(json_path, root, "testing")
  with pytest.raises(FileNotFoundError, match="not a directory"):
    KarpathyRetrievalSource(json_path, tmp_path / "no_images")
  with pytest.raises(ValueError, match="max_captions"):
    KarpathyRetrievalSource(json_path, root, max_captions=0)
  bad = tmp_path / "bad.json"
  cases = [("not json {", "cannot read it as JSON"),
           (json.dumps([1, 2]), "a JSON list, no \"images\" list"),
           (json.dumps({"annotations": []}), "keys \\['annotations'\\], no \"images\" list"),
           (json.dumps({"images": [{"filename": "a.jpg", "sentences": []}]}),
            "images\\[0\\] has no 'split' string"),
           (json.dumps({"images": [{"filename": "a.jpg", "split": "test",
                                    "sentences": ["a dog"]}]}),
            "images\\[0\\] has no 'sentences' list"),
           (json.dumps({"images": [{"filename": "a.jpg", "split": "test", "filepath": 3,
                                    "sentences": []}]}), "'filepath' that is a int")]
  for text, message in cases:
    bad.write_text(text)
    with pytest.raises(KarpathyFormatError, match=f"bad.json.*{message}.*dataset_coco.json"):
      KarpathyRetrievalSource(bad, root)


def test_caption_relevance_flattens_in_order():
  texts, owner = caption_relevance([["a", "b"], [], ["a"], ["c", "d", "e"]])
  assert texts == ["a", "b", "a", "c", "d", "e"]
  assert owner.dtype == np.int64 and owner.tolist() == [0, 0, 2, 3, 3, 3]
  rel = owner_relevance(owner, 4)
  assert rel.shape == (4, 6) and rel.sum() == 6 and not rel[1].any()
  assert rel[2].tolist() == [False, False, True, False, False, False]
  with pytest.raises(ValueError, match="image indices"):
    owner_relevance(owner, 3)


def test_recall_at_k_with_known_answers():
  # Scores set by hand: image_emb = identity, so scores = text_emb.T.
  #   texts:  t0    t1    t2   t3   t4   t5   t6    t7
  owner = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  scores = np.array([
      [0.90, 0.10, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # i2t rank 0
      [0.50, 0.00, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0],  # own 0.5 ties t0 (not its own): rank 1
      [0.82, 0.85, 0.0, 0.0, 0.8, 0.2, 0.0, 0.0],  # t0, t1 above its best: rank 2
      [0.20, 0.20, 0.2, 0.2, 0.2, 0.2, -1., -1.],  # its captions ranked last: rank 6
  ])
  # t2i ranks per text: t0 0, t1 2 (img2, img3 above), t2 0, t3 0, t4 0, t5 1 (tie with img3),
  # t6 3, t7 3 (every other image above).
  rel = owner_relevance(owner, 4)
  r = M.retrieval_recall(np.eye(4), scores.T, rel, ks=(1, 2, 3, 4, 6, 7))
  assert [r[f"i2t_r{k}"] for k in (1, 2, 3, 4, 6, 7)] == [0.25, 0.5, 0.75, 0.75, 0.75, 1.0]
  assert [r[f"t2i_r{k}"] for k in (1, 2, 3, 4, 6, 7)] == [0.5, 0.625, 0.75, 1.0, 1.0, 1.0]
  # The same through caption_relevance, with real unit vectors: each caption on its image's axis.
  texts, owner = caption_relevance([["x", "y"], ["z"], ["w", "v"]])
  image_emb = np.eye(3)
  text_emb = np.eye(3)[owner] + 0.01 * np.arange(len(texts))[:, None]
  r = M.retrieval_recall(image_emb, M.normalize(text_emb), owner_relevance(owner, 3), ks=(1,))
  assert r == {"i2t_r1": 1.0, "t2i_r1": 1.0}
