"""MSCOCO 5k / Flickr30k 1k image-text retrieval test sets from the Karpathy split files.

The standard retrieval benchmarks of CLIP, CyCLIP and RankCLIP use Andrej Karpathy's splits
(NeuralTalk, https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip), one JSON
file per dataset:

    {"images": [{"filepath": "val2014",            # COCO only: the folder under the image root
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "test",                   # "train" | "val" | "test" | "restval" (COCO)
                 "sentences": [{"raw": "A man with a red helmet ...", "tokens": [...], ...}, ...],
                 "imgid": 0, "sentids": [...], "cocoid": 391895},
                ...],
     "dataset": "coco"}                              # or "flickr30k", "flickr8k"

Flickr30k's entries have no "filepath": its images all lie in one folder. The test split holds
5000 images in dataset_coco.json and 1000 in dataset_flickr30k.json, five captions each (a few
COCO images have six or seven; the benchmark keeps the first five, hence `max_captions=5`).

`KarpathyRetrievalSource(json_path, image_root, split)` is a random-access source over the
images of one split, in file order: `source[i]` -> {"image_bytes": bytes, "captions": [str, ...],
"where": image path}, or a skip marker (`records.skipped`) for a missing ("missing_file") or
unreadable ("unreadable_image": not a regular file, over `images.MAX_FILE_BYTES`, or an I/O error;
such a path is never read) image file or an image with no non-empty caption ("empty_caption"); it
never raises for one example. Like `CsvSource`, it returns the file's bytes undecoded: bytes
that are not an image become "unreadable_image" in the decode step (`pipeline.DecodeImage`).
Dropping an example drops the image together with its captions, so the two sides of the benchmark
stay consistent.

`caption_relevance(captions_per_image)` flattens the captions of the images that were read into the
text side of the benchmark and says which image owns each text; `owner_relevance` turns that into
the boolean [num_images, num_texts] relevance that `evaluation.metrics.retrieval_recall` takes
(image->text R@k: any of the image's own captions in its top k; text->image R@k: the caption's
image in its top k; ties counted against the model, as everywhere in metrics.py).
"""

from __future__ import annotations

import json
import operator
import os
from typing import Any, Sequence

import numpy as np

from rankclip_jax.data import images
from rankclip_jax.data.records import skipped
from rankclip_jax.errors import UserError

_DOWNLOAD = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
_EXPECTED = ('a Karpathy split file (dataset_coco.json / dataset_flickr30k.json from '
             f'{_DOWNLOAD}): {{"images": [{{"filename": str, "split": str, '
             '"sentences": [{"raw": str, ...}, ...], "filepath": str (optional)}, ...], ...}')


# The Karpathy-split retrieval sets (config.evals.<name>.dataset of a retrieval entry): one reader.
RETRIEVAL_SETS = ("coco", "flickr30k")


class KarpathyFormatError(UserError, ValueError):
  """The split file is not a Karpathy split file, or lacks the requested split."""


def _load_images(json_path: str) -> list:
  if not os.path.isfile(json_path):
    raise FileNotFoundError(f"Karpathy split file {json_path} does not exist; expected {_EXPECTED}.")
  try:
    with open(json_path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise KarpathyFormatError(f"{json_path}: cannot read it as JSON ({e}); expected {_EXPECTED}."
                              ) from None
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    found = (f"an object with keys {sorted(data)[:10]}" if isinstance(data, dict)
             else f"a JSON {type(data).__name__}")
    raise KarpathyFormatError(f"{json_path}: found {found}, no \"images\" list; "
                              f"expected {_EXPECTED}.")
  return data["images"]


def _entry(json_path: str, k: int, image: Any) -> tuple[str, str, list[str]]:
  """(split, relative image path, raw sentences) of images[k], or a KarpathyFormatError."""
  def bad(what: str):
    return KarpathyFormatError(f"{json_path}: images[{k}] {what}; expected {_EXPECTED}.")

  if not isinstance(image, dict):
    raise bad(f"is a {type(image).__name__}, not an object")
  for key in ("split", "filename"):
    if not isinstance(image.get(key), str) or not image[key]:
      raise bad(f"has no {key!r} string")
  filepath = image.get("filepath", "")
  if not isinstance(filepath, str):
    raise bad(f"has a 'filepath' that is a {type(filepath).__name__}, not a string")
  sentences = image.get("sentences")
  if not isinstance(sentences, list) or not all(
      isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences):
    raise bad("has no 'sentences' list of {\"raw\": str} objects")
  rel = os.path.join(filepath, image["filename"]) if filepath else image["filename"]
  return image["split"], rel, [s["raw"] for s in sentences]


class KarpathyRetrievalSource:
  """The images of one split of a Karpathy split file, in file order, with their captions.

  `source[i]` -> {"image_bytes": bytes, "captions": list[str], "where": image path} or a skip
  marker. Captions are the `raw` sentences, stripped, empty ones dropped, then the first
  `max_captions` (None: all). The image path is image_root/filepath/filename, or
  image_root/filename when the entry has no filepath (Flickr30k). The whole file is checked when
  the source is made: a missing or malformed file, a missing image_root, or a split with no images
  (the message lists the splits present) raise before any work.
  """

  def __init__(self, json_path: str | os.PathLike, image_root: str | os.PathLike,
               split: str = "test", *, max_captions: int | None = 5):
    self.json_path = os.fspath(json_path)
    self.image_root = os.fspath(image_root)
    self.split = split
    if max_captions is not None and max_captions < 1:
      raise ValueError(f"max_captions must be at least 1 (or None for all), got {max_captions}.")
    self.max_captions = max_captions
    entries = [_entry(self.json_path, k, image)
               for k, image in enumerate(_load_images(self.json_path))]
    if not os.path.isdir(self.image_root):
      raise FileNotFoundError(f"Image root {self.image_root} (for {self.json_path}) is not a "
                              "directory; it should hold the images (COCO: its val2014/ and "
                              "train2014/ folders; Flickr30k: flickr30k-images/'s files).")
    self.paths: list[str] = []
    self.captions: list[list[str]] = []
    for s, rel, raws in entries:
      if s == split:
        self.paths.append(os.path.join(self.image_root, rel))
        self.captions.append([c for c in (r.strip() for r in raws) if c][:max_captions])
    if not self.paths:
      counts = {}
      for s, _, _ in entries:
        counts[s] = counts.get(s, 0) + 1
      present = ", ".join(f"{s!r} ({n} images)" for s, n in sorted(counts.items())) or "none"
      raise KarpathyFormatError(f"{self.json_path} has no images in split {split!r}; "
                                f"splits present: {present}.")

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = operator.index(i)
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"image {i} of {n} in {self.json_path} split {self.split!r}")
    path, captions = self.paths[i], self.captions[i]
    if not captions:
      return skipped("empty_caption", path)
    try:
      data = images.read_image_file(path)
    except FileNotFoundError:
      return skipped("missing_file", path)
    except (OSError, images.BadImage):  # not a regular file, over the size cap, no permission
      return skipped("unreadable_image", path)
    return {"image_bytes": data, "captions": list(captions), "where": path}

  def __repr__(self):
    return (f"KarpathyRetrievalSource({self.json_path!r}, {self.image_root!r}, "
            f"split={self.split!r}, {len(self)} images, max_captions={self.max_captions})")


def caption_relevance(captions_per_image: Sequence[Sequence[str]]
                      ) -> tuple[list[str], np.ndarray]:
  """Captions of the images, flattened in order, and the image each belongs to (int64 [T]).

  Identical captions of different images stay separate texts, each owned by its own image.
  """
  texts = [c for caps in captions_per_image for c in caps]
  owner = np.repeat(np.arange(len(captions_per_image), dtype=np.int64),
                    [len(caps) for caps in captions_per_image])
  return texts, owner


def owner_relevance(image_of_text: np.ndarray, num_images: int) -> np.ndarray:
  """bool [num_images, num_texts]: True where the text belongs to the image, for
  `metrics.retrieval_recall`."""
  owner = np.asarray(image_of_text)
  if owner.ndim != 1 or (owner.size and (owner.min() < 0 or owner.max() >= num_images)):
    raise ValueError(f"image_of_text must be a vector of image indices in [0, {num_images}).")
  return owner[None, :] == np.arange(num_images)[:, None]
