"""Tiny real TFDS datasets written as ArrayRecord, for tests that read evaluation data.

`write_tiny_tfds(data_dir, "cifar10")` writes `<data_dir>/cifar10/1.0.0/` as `tfds build` would
(dataset_info.json, features.json, one ArrayRecord shard) for a dataset of
`rankclip_jax.data.tfds_eval.DATASETS`, with the real label space (10 classes for cifar10, the 1000
ImageNet classes for ImageNet-R) and PNG images, and returns what it wrote. Writing needs neither
a download nor TensorFlow.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from rankclip_jax.data import tfds_eval


def png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def _builder_class(ds: tfds_eval.EvalDataset, label_names: list[str],
                   records: dict[str, list[dict]]):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name, _, config = ds.tfds_name.partition("/")

  class TinyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A few given examples in one split, under the name (and config) of a real TFDS dataset."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, disable_shuffling=True,  # records stay in the order written
          features=tfds.features.FeaturesDict({
              ds.image_key: tfds.features.Image(encoding_format="png"),
              ds.label_key: tfds.features.ClassLabel(names=label_names)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in records}

    def _generate_examples(self, split):
      yield from enumerate(records[split])

  TinyBuilder.name = name
  return TinyBuilder, (config or None)


def write_tiny_tfds(data_dir: str | os.PathLike, name: str = "cifar10", num_examples: int = 12,
                    image_size: int = 32, num_classes: int | None = 10, seed: int = 0,
                    corrupt: tuple[int, ...] = ()) -> list[tuple[np.ndarray | None, int]]:
  """Writes a tiny `name` dataset (its default split) as ArrayRecord under data_dir.

  Labels cycle through the first `num_classes` classes of `tfds_eval.classnames(name)` (all of
  them when None); images are random uint8 [image_size, image_size, 3] arrays stored as PNG, and the
  examples at the `corrupt` indices get bytes that are not an image. Returns, in record order,
  (image, label) as `TfdsEvalSource(name, data_dir)` should read it: the image array (None where
  corrupt) and the class index into `tfds_eval.classnames(name)`. (For ImageNet-R/A the record
  holds the ImageNet-1k index and the source maps it into the 200-class list.)
  """
  split = tfds_eval.DATASETS[name].split
  return write_tiny_tfds_splits(data_dir, name, {split: num_examples}, image_size=image_size,
                                num_classes=num_classes, seed=seed, corrupt=corrupt)[split]


def write_tiny_tfds_splits(data_dir: str | os.PathLike, name: str, splits: dict[str, int], *,
                           image_size: int = 32, num_classes: int | None = 10, seed: int = 0,
                           corrupt: tuple[int, ...] = (), image_fn=None
                           ) -> dict[str, list[tuple[np.ndarray | None, int]]]:
  """Like write_tiny_tfds, with several splits ({split: number of examples}). `image_fn(label,
  rng)` may draw each image (default: uniform noise); `corrupt` indices apply to every split."""
  ds = tfds_eval.DATASETS[name]
  n_names = len(tfds_eval.classnames(name))
  num_classes = n_names if num_classes is None else min(num_classes, n_names)
  subset = tfds_eval.class_subset(name)
  if subset is None:
    label_names = [f"{i:04d}_{c}" for i, c in enumerate(tfds_eval.classnames(name))]
  else:  # TFDS labels these with all 1000 ImageNet classes (their wnids)
    label_names = tfds_eval._load("imagenet_wnids.json")["imagenet1k"]  # pylint: disable=protected-access
  rng = np.random.default_rng(seed)
  records, wrote = {}, {}
  for split, count in splits.items():
    records[split], wrote[split] = [], []
    for i in range(count):
      label = i % num_classes
      image = (image_fn(label, rng) if image_fn is not None
               else rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
      encoded = b"this is not an image" if i in corrupt else png(image)
      records[split].append({ds.image_key: encoded,
                             ds.label_key: label if subset is None else subset[label]})
      wrote[split].append((None if i in corrupt else image, label))
  builder_cls, config = _builder_class(ds, label_names, records)
  builder = builder_cls(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
  builder.download_and_prepare()
  return wrote
