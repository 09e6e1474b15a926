"""Image pairs with comparative captions, for PC-CLIP fine-tuning (Sam et al. 2024; docs/method.md).

A pair example is {"image_a", "image_b", "caption", "attribute"}: the caption states how the first
image differs from the second ("the first image shows a larger shape than the second.").

- `SyntheticPairs`: pairs of the embedded scenes whose comparison is exactly true by construction:
  size (the size classes do not overlap), object count, horizontal and vertical position (centres
  at least a fifth of the image apart) and colour. Each example also carries `opposite`, the caption
  with the comparison reversed, and `attribute`, the index into ATTRIBUTES.
- `CsvPairs`: (image_a, image_b, caption) rows of a CSV/TSV, image paths relative to the file.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
from PIL import Image

from rankclip_jax.data import csv_files, pipeline
from rankclip_jax.data import images as image_ops
from rankclip_jax.data import synthetic as S
from rankclip_jax.data.records import skip_kind, skipped
from rankclip_jax.data.tokenizer import ClipTokenizer

ATTRIBUTES: tuple[str, ...] = ("size", "count", "horizontal", "vertical", "colour")
# Comparative words: (the first has more of it, the first has less of it).
_WORDS = {"size": ("larger", "smaller"), "count": ("more", "fewer"),
          "horizontal": ("further left", "further right"), "vertical": ("higher", "lower")}
_TEMPLATES = {
    "size": ("the first image shows a {} shape than the second.",
             "the shape in the left image is {} than the one in the right image."),
    "count": ("the first image has {} shapes than the second.",
              "there are {} shapes in the left image than in the right one."),
    "horizontal": ("the shape in the first image is {} than in the second.",
                   "the left image's shape sits {} than the right image's."),
    "vertical": ("the shape in the first image is {} than in the second.",
                 "the left image's shape sits {} than the right image's."),
}
_COLOUR_TEMPLATES = ("the first image has a {} shape where the second has a {} one.",
                     "the shape is {} in the left image and {} in the right image.")
_MIN_SHIFT = 0.2  # centres this far apart (fraction of the image) for a position comparison
_TRIES = 1000


def comparison(attribute: str, first_has_more: bool, template: int = 0) -> str:
  """The caption saying the first image has more (or less) of `attribute` than the second."""
  words = _WORDS[attribute]
  return _TEMPLATES[attribute][template].format(words[0] if first_has_more else words[1])


def colour_comparison(colour_a: str, colour_b: str, template: int = 0) -> str:
  return _COLOUR_TEMPLATES[template].format(colour_a, colour_b)


def attribute_value(scene: S.Scene, attribute: str) -> float:
  """The quantity a comparison of `attribute` is about (more of it: "larger", "more", "further
  left", "higher"; colour: the colour's index)."""
  main = scene.main
  return {"size": main.radius, "count": scene.count, "horizontal": -main.x,
          "vertical": -main.y, "colour": main.colour}[attribute]


def _differ(a: S.Scene, b: S.Scene, attribute: str) -> bool:
  if attribute == "size":
    return a.main.size != b.main.size
  if attribute == "count":
    return a.count != b.count
  if attribute in ("horizontal", "vertical"):
    return abs(attribute_value(a, attribute) - attribute_value(b, attribute)) >= _MIN_SHIFT
  return a.main.colour != b.main.colour


@dataclasses.dataclass(frozen=True)
class SyntheticPairs:
  """grain random-access source of scene pairs with true comparative captions; stateless.

  Pair i of (seed, split) is a pure function of them. Attributes cycle with the index (pair i
  compares ATTRIBUTES[i % len(attributes)]), so every evaluation set is balanced over them; which
  image has more of it is a fair coin.
  """

  num_records: int
  seed: int = 0
  split: str = "train"
  image_size: int = 64
  attributes: tuple[str, ...] = ATTRIBUTES

  def __post_init__(self):
    if self.num_records < 1:
      raise ValueError(f"num_records={self.num_records} must be >= 1.")
    if self.split not in S.SPLITS:
      raise ValueError(f"split={self.split!r}; choose one of {S.SPLITS}.")
    bad = [a for a in self.attributes if a not in ATTRIBUTES]
    if bad or not self.attributes:
      raise ValueError(f"attributes={self.attributes}; choose from {ATTRIBUTES}.")
    object.__setattr__(self, "attributes", tuple(self.attributes))

  def __len__(self):
    return self.num_records

  def scenes(self, index: int) -> tuple[str, S.Scene, S.Scene, np.random.Generator]:
    if not 0 <= index < self.num_records:
      raise IndexError(f"index {index} out of range for {self.num_records} pairs.")
    rng = np.random.default_rng([self.seed, 7717, S.SPLITS.index(self.split), index])
    attribute = self.attributes[index % len(self.attributes)]
    # One object per scene except for counting, so "the shape" is unambiguous.
    objects = dict(min_objects=1, max_objects=S.MAX_OBJECTS if attribute == "count" else 1)
    a = S.sample_scene(rng, split=self.split, **objects)
    for _ in range(_TRIES):
      b = S.sample_scene(rng, split=self.split, **objects)
      if _differ(a, b, attribute):
        break
    else:  # practically never: every attribute differs for most draws
      raise RuntimeError(f"no pair differing in {attribute} after {_TRIES} draws (pair {index})")
    if rng.random() < 0.5:
      a, b = b, a
    return attribute, a, b, rng

  def __getitem__(self, index: int) -> dict:
    attribute, a, b, rng = self.scenes(int(index))
    template = int(rng.integers(2))
    if attribute == "colour":
      names = S.COLOUR_NAMES[a.main.colour], S.COLOUR_NAMES[b.main.colour]
      caption = colour_comparison(*names, template)
      opposite = colour_comparison(*names[::-1], template)
    else:
      more = attribute_value(a, attribute) > attribute_value(b, attribute)
      caption = comparison(attribute, more, template)
      opposite = comparison(attribute, not more, template)
    return {"image_a": S.render_scene(a, self.image_size),
            "image_b": S.render_scene(b, self.image_size),
            "caption": caption, "opposite": opposite,
            "attribute": np.int32(ATTRIBUTES.index(attribute)), "index": np.int32(index)}

  def __repr__(self):
    return (f"SyntheticPairs({self.num_records} pairs, split={self.split!r}, "
            f"attributes={self.attributes})")


class CsvPairs:
  """(image_a, image_b, caption) rows of a CSV/TSV; image paths relative to the file's folder.

  Read like the (image, caption) CSVs of data/csv_files.py (byte-order mark, named delimiters, an
  error naming the file and the column when one is missing). A row whose caption is empty, or
  whose image is missing ("missing_file") or cannot be read as data/csv_files.py says
  ("unreadable_image": not a regular file, over 32 MiB, not a decodable image) becomes a skip
  marker (counted by the pipeline, never a crash).
  """

  def __init__(self, path: str, *, image_a_key: str = "image_a", image_b_key: str = "image_b",
               caption_key: str = "caption", delimiter: str = "", field: str = "path"):
    self.path = path
    pair = "image_key=<a_column>,<b_column>"
    a, b, captions = csv_files.read_columns(
        path, {image_a_key: pair, image_b_key: pair, caption_key: "caption_key=<column>"},
        delimiter=csv_files.delimiter_of(delimiter, path), field=field)
    if not captions:
      raise csv_files.CsvFormatError(f"{field}: {path} holds no rows below the header.")
    self.rows = [(csv_files.resolve(path, x), csv_files.resolve(path, y), c)
                 for x, y, c in zip(a, b, captions)]

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, index: int) -> dict:
    a, b, caption = self.rows[index]
    where = f"{self.path} row {index + 2}"
    if not (caption or "").strip():
      return skipped("empty_caption", where)
    out = {"caption": caption}
    for key, image in (("image_a", a), ("image_b", b)):
      try:
        out[key] = np.asarray(image_ops.decode_rgb(image_ops.read_image_file(image)))
      except FileNotFoundError:
        return skipped("missing_file", f"{where}: {image or '(empty path)'}")
      except (OSError, image_ops.BadImage) as e:
        return skipped("unreadable_image", f"{where}: {image}: {e}")
    return out

  def __repr__(self):
    return f"CsvPairs({self.path}, {len(self.rows)} pairs)"


@dataclasses.dataclass
class PreparePair(grain.transforms.Map):
  """Pair record -> {"image_a", "image_b": normalised float32 [S, S, 3], "text": int32 [L]}.

  Both images are resized and centre-cropped, never randomly cropped: a crop could make a true
  comparison ("further left", "larger") false.
  """

  image_size: int
  tokenizer: ClipTokenizer

  def map(self, record):
    if skip_kind(record):
      return record
    caption = record["caption"].strip()
    if not caption:
      return skipped("empty_caption", record.get("where", "?"))
    out = {"text": self.tokenizer(caption)[0]}
    size = self.image_size
    for key in ("image_a", "image_b"):
      image = np.asarray(record[key])
      if image.shape != (size, size, 3):
        image = image_ops.center_crop(Image.fromarray(image), size)
      out[key] = pipeline.normalize_image(image)
    return out


def pair_iterator(source, *, per_process_batch_size: int, seed: int, tokenizer: ClipTokenizer,
                  image_size: int, crop_scale: tuple[float, float] | None = None,
                  process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                  num_threads: int = 4, prefetch: int = 8):
  """Infinite iterator over this process's batches of pairs (the pipeline.train_iterator recipe:
  global shuffle each epoch, per-process slice, bad rows skipped and counted, checkpointable).

  crop_scale is accepted so that every source kind's iterator takes the same arguments, and
  ignored: pairs are never randomly cropped (PreparePair)."""
  del crop_scale
  ds = (grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
        [process_index::process_count]
        .map(PreparePair(image_size, tokenizer)))
  return pipeline.batched_iterator(ds, per_process_batch_size=per_process_batch_size,
                                   worker_count=worker_count, num_threads=num_threads,
                                   prefetch=prefetch)
