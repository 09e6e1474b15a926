"""Evaluation datasets read from TFDS ArrayRecord files, with their zero-shot class names and prompts.

The zero-shot benchmarks of CLIP/CyCLIP/RankCLIP (ImageNet-1k and its shifted test sets, CIFAR, the
linear-probe datasets) are read as TensorFlow Datasets prepared in the ArrayRecord format, which
TFDS can read by index without TensorFlow. `TfdsEvalSource(name, data_dir)` is a random-access
source (`len`, `source[i] -> {"image": RGB PIL image, "label": int}`) for
`pipeline.eval_batches`; images are read as their stored bytes (`tfds.decode.SkipDecoding`) and
decoded with `images.decode_rgb`, so a corrupt image raises `images.BadImage` for the caller to
count, and TensorFlow is never imported to read.

Layout, as TFDS writes it (`tfds_name` may carry a config: `imagenet_v2/matched-frequency`):

    <data_dir>/<tfds_name>/<version>/dataset_info.json, features.json,
                                     <name>-<split>.array_record-00000-of-000NN, ...

The newest version present is read. Prepare a dataset once (TensorFlow is used while preparing):

    python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10', data_dir='<data_dir>',
               file_format='array_record').download_and_prepare()"

which is `DATASETS[name].prepare_command(data_dir)`. `tfds build cifar10 --data_dir=<data_dir>
--file_format=array_record` does the same, but the `tfds` command of tensorflow-datasets 4.9.10
only starts with apache-beam installed. ImageNet-1k needs a manual download first:
ILSVRC2012_img_val.tar (and ILSVRC2012_img_train.tar for the train split) from image-net.org in
`<data_dir>/downloads/manual/`; the others download themselves. Datasets prepared as TFRecord only
are refused with the command to prepare them again.

Labels are the class indices of `classnames(name)`. TFDS labels ImageNet-R and ImageNet-A with the
1000 ImageNet-1k classes although each holds only 200 of them; like their authors (and open_clip,
CLIP_benchmark) we classify among those 200, so the source maps the label to its position in the
200-class list, and `class_subset(name)` gives their ImageNet-1k indices. ImageNet-V2 and
ImageNet-Sketch use all 1000 classes.

Class names and prompt templates are data in `zeroshot/` (JSON, sources and licences in its
README.md): OpenAI's cleaned-up ImageNet names and 80 ImageNet templates, CLIP's names and
templates for the other datasets, in TFDS label order. Table 3's FGVC-Aircraft, GTSRB and Rendered
SST2 are not in TFDS and so not here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import os
import re
from typing import Any

import numpy as np

from rankclip_jax.data import images
from rankclip_jax.errors import UserError

ZEROSHOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zeroshot")

_IMAGENET_MANUAL = (
    "Manual download first: put ILSVRC2012_img_val.tar (and ILSVRC2012_img_train.tar for the train "
    "split) from https://image-net.org/download-images in {data_dir}/downloads/manual/.")


class EvalDataNotFound(UserError, FileNotFoundError):
  """An evaluation set is not prepared (as ArrayRecord) under data_dir; says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class EvalDataset:
  """An evaluation dataset in TFDS and the keys of its zero-shot data in zeroshot/*.json."""

  name: str  # our name, the key of DATASETS
  tfds_name: str  # TFDS name, with "/config" where the dataset has configs
  split: str  # the split evaluated by default
  classnames: str  # key into zeroshot/classnames.json
  templates: str  # key into zeroshot/templates.json
  image_key: str = "image"
  label_key: str = "label"
  class_subset: str | None = None  # key into zeroshot/imagenet_wnids.json: a subset of ImageNet-1k
  manual: str | None = None  # what must be downloaded by hand before preparing ({data_dir} filled)

  def prepare_command(self, data_dir: str | os.PathLike = "<data_dir>") -> str:
    """The shell command that downloads and prepares the dataset as ArrayRecord under data_dir."""
    return ("python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{self.tfds_name}', data_dir='{os.fspath(data_dir)}', "
            "file_format='array_record').download_and_prepare()\"")

  def prepare_hint(self, data_dir: str | os.PathLike = "<data_dir>") -> str:
    """The prepare command, preceded by the manual download it needs, if any."""
    cmd = self.prepare_command(data_dir)
    if self.manual:
      return self.manual.format(data_dir=os.fspath(data_dir)) + "\nThen run:\n  " + cmd
    return cmd


def _registry(*datasets: EvalDataset) -> dict[str, EvalDataset]:
  return {d.name: d for d in datasets}


DATASETS: dict[str, EvalDataset] = _registry(
    # ImageNet-1k and its natural distribution shifts (RankCLIP Table 2 / CyCLIP Table 2).
    EvalDataset("imagenet1k", "imagenet2012", "validation", "imagenet1k", "imagenet1k",
                manual=_IMAGENET_MANUAL),
    EvalDataset("imagenet_v2", "imagenet_v2/matched-frequency", "test", "imagenet1k", "imagenet1k"),
    EvalDataset("imagenet_sketch", "imagenet_sketch", "test", "imagenet1k", "imagenet1k"),
    EvalDataset("imagenet_a", "imagenet_a", "test", "imagenet1k", "imagenet1k",
                class_subset="imagenet_a"),
    EvalDataset("imagenet_r", "imagenet_r", "test", "imagenet1k", "imagenet1k",
                class_subset="imagenet_r"),
    # Zero-shot / linear-probe datasets (Table 3) that TFDS has.
    EvalDataset("cifar10", "cifar10", "test", "cifar10", "cifar"),
    EvalDataset("cifar100", "cifar100", "test", "cifar100", "cifar"),
    EvalDataset("caltech101", "caltech101", "test", "caltech101", "caltech101"),
    EvalDataset("dtd", "dtd", "test", "dtd", "dtd"),
    EvalDataset("food101", "food101", "validation", "food101", "food101"),  # no test split
    EvalDataset("flowers102", "oxford_flowers102", "test", "flowers102", "flowers102"),
    EvalDataset("pets", "oxford_iiit_pet", "test", "pets", "pets"),
    EvalDataset("stanford_cars", "cars196", "test", "stanford_cars", "stanford_cars"),
    EvalDataset("stl10", "stl10", "test", "stl10", "stl10"),
    EvalDataset("svhn", "svhn_cropped", "test", "svhn", "svhn"),
    EvalDataset("sun397", "sun397/tfds", "test", "sun397", "sun397"),
)


@functools.lru_cache(maxsize=None)
def _load(file: str) -> dict[str, list[str]]:
  with open(os.path.join(ZEROSHOT_DIR, file), encoding="utf-8") as f:
    return json.load(f)


def _dataset(name: str) -> EvalDataset:
  try:
    return DATASETS[name]
  except KeyError:
    raise KeyError(f"Unknown evaluation dataset {name!r}; known: {', '.join(DATASETS)}.") from None


def class_subset(name: str) -> list[int] | None:
  """ImageNet-1k indices (TFDS imagenet2012 label order) of a subset dataset's classes, else None."""
  ds = _dataset(name)
  if ds.class_subset is None:
    return None
  wnids = _load("imagenet_wnids.json")
  index = {w: i for i, w in enumerate(wnids["imagenet1k"])}
  return [index[w] for w in wnids[ds.class_subset]]


def classnames(name: str) -> list[str]:
  """Class names in label order of `TfdsEvalSource(name, ...)` (a dataset name of DATASETS)."""
  ds = _dataset(name)
  names = _load("classnames.json")[ds.classnames]
  subset = class_subset(name)
  return list(names) if subset is None else [names[i] for i in subset]


def templates(name: str) -> list[str]:
  """Prompt templates ("a photo of a {}.") of a dataset of DATASETS, or a set of templates.json
  by its key (e.g. "imagenet1k_simple", the 7 templates OpenAI picked from the 80)."""
  sets = _load("templates.json")
  key = DATASETS[name].templates if name in DATASETS else name
  if key not in sets:
    raise KeyError(f"No templates {name!r}; datasets: {', '.join(DATASETS)}; sets: "
                   f"{', '.join(sets)}.")
  return list(sets[key])


_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def prepared_dir(name: str, data_dir: str | os.PathLike) -> str | None:
  """<data_dir>/<tfds_name>/<newest version> holding a dataset_info.json, or None."""
  root = os.path.join(os.fspath(data_dir), *_dataset(name).tfds_name.split("/"))
  try:
    entries = os.listdir(root)
  except (FileNotFoundError, NotADirectoryError):
    return None
  versions = [v for v in entries if _VERSION.match(v)
              and os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
  if not versions:
    return None
  return os.path.join(root, max(versions, key=lambda v: tuple(map(int, v.split(".")))))


class TfdsEvalSource:
  """Random-access evaluation source over a TFDS dataset prepared as ArrayRecord.

  `source[i]` -> {"image": RGB PIL image, "label": int index into `classnames(name)`}. Raises
  `images.BadImage` for an example whose image bytes do not decode, FileNotFoundError (naming the
  dataset, data_dir and the prepare command) when the dataset is not prepared as ArrayRecord under
  data_dir, ValueError for an unknown split or a label space that does not match the class names.
  `min_size` lets JPEGs decode at a reduced DCT scale that is still at least that large.
  """

  def __init__(self, name: str, data_dir: str | os.PathLike, split: str | None = None, *,
               min_size: int | None = None):
    self.dataset = _dataset(name)
    self.name = name
    self.data_dir = os.fspath(data_dir)
    self.split = split or self.dataset.split
    self.min_size = min_size
    self.classnames = classnames(name)
    self.templates = templates(name)
    self.builder_dir = prepared_dir(name, self.data_dir)
    where = f"{self.data_dir}/{self.dataset.tfds_name}/<version>/"
    if self.builder_dir is None:
      raise EvalDataNotFound(
          f"Evaluation dataset {name!r} (TFDS {self.dataset.tfds_name!r}) is not prepared under "
          f"data_dir {self.data_dir!r}: no {where}dataset_info.json. Prepare it as ArrayRecord "
          f"with:\n  {self.dataset.prepare_hint(self.data_dir)}")

    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (0.5 s; not for names)

    builder = tfds.builder_from_directory(self.builder_dir)
    info = builder.info
    formats = {info.file_format, *info.alternative_file_formats}
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
      raise EvalDataNotFound(
          f"Evaluation dataset {name!r} is prepared at {self.builder_dir} as "
          f"{', '.join(sorted(str(f.value) for f in formats if f))}, which needs TensorFlow to "
          f"read; it must be prepared as ArrayRecord. Delete that directory and run:\n  "
          f"{self.dataset.prepare_hint(self.data_dir)}")
    base_split = self.split.split("[", 1)[0]
    if base_split not in info.splits:
      raise ValueError(f"Evaluation dataset {name!r} at {self.builder_dir} has no split "
                       f"{base_split!r}; it has {sorted(info.splits)}.")
    label_feature = info.features[self.dataset.label_key]
    expected = 1000 if self.dataset.class_subset else len(self.classnames)
    if label_feature.num_classes != expected:
      raise ValueError(f"Evaluation dataset {name!r} at {self.builder_dir} has "
                       f"{label_feature.num_classes} classes; expected {expected}.")
    self._source = builder.as_data_source(
        self.split, decoders={self.dataset.image_key: tfds.decode.SkipDecoding()},
        file_format=tfds.core.FileFormat.ARRAY_RECORD)
    self._label_map = None
    subset = class_subset(name)
    if subset is not None:
      self._label_map = np.full(1000, -1, np.int64)
      self._label_map[subset] = np.arange(len(subset))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = operator.index(i)
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"example {i} of {n} in {self.name}/{self.split}")
    example = self._source[i % n]
    image = images.decode_rgb(bytes(example[self.dataset.image_key]), min_size=self.min_size)
    label = int(example[self.dataset.label_key])
    if self._label_map is not None:
      mapped = int(self._label_map[label])
      if mapped < 0:
        raise ValueError(f"{self.name} example {i} has ImageNet class {label}, which is not one "
                         f"of its {len(self.classnames)} classes.")
      label = mapped
    return {"image": image, "label": label}

  def __repr__(self):
    return (f"TfdsEvalSource({self.name!r}, {self.builder_dir!r}, split={self.split!r}, "
            f"{len(self)} examples, {len(self.classnames)} classes)")
