"""The user's own labelled images as evaluation sources: a folder of class subfolders, or a CSV/TSV.

The `zero_shot` and `linear_probe` evaluators read them with dataset="folder" or dataset="csv"
(evaluation/evaluators.py lists the fields). Two layouts:

- "folder": torchvision's ImageFolder layout, the one ImageNet's validation set is usually kept in
  (and clip_benchmark's). Each subfolder of `path` is a class, named after it; its images lie
  directly inside it or in folders of any depth below it:

      <path>/n01440764/ILSVRC2012_val_00000293.JPEG
      <path>/n01443537/...

  Image files are those whose suffix (any case) Pillow registers for a format of
  `images.FORMATS` (IMAGE_SUFFIXES: .jpg, .jpeg, .png, .webp, .gif, .bmp, .tif, ...); other files,
  names starting with "." and files directly in `path` are not listed. Folders below a class are
  walked without following symbolic links (a class subfolder itself may be one). Classes are the
  subfolders in sorted order, a class's images sorted by their path below it. A subfolder without
  image files is an error (a class with no images, or images of another suffix).
- "csv": a CSV/TSV file (or several: a directory, glob or list, as for training's kind=csv) with a
  header row naming its columns, one (image path, label) row per image:

      image,label
      val/ILSVRC2012_val_00000293.JPEG,n01440764

  read with data/csv_files.py's helpers (the same header, delimiter and UTF-8 rules): the columns
  `image_key` ("image") and `label_key` ("label"), `delimiter` ("": tab for .tsv, else comma).
  An image path is relative to the CSV file's folder, or to `image_root` when one is given;
  absolute paths stay as they are. A label is a class (see below) or, where the classes come from
  a class-names file, an integer index into them.

Classes and their names (`class_names`, a JSON file; optional):

- folder: the subfolders are the classes. A JSON object maps subfolder names to readable names
  ({"n01440764": "tench", ...}; every subfolder needs one, other keys are not used); a JSON list
  names the subfolders in sorted order (one name per subfolder).
- csv: without a class-names file, the classes are the distinct labels, sorted (as numbers when
  every label is an integer). A JSON list defines the classes: a label is one of its names or an
  integer index into it. A JSON object defines the classes as its keys, sorted (the ImageFolder
  order, so a CSV and a folder of the same set agree), named by its values: a label is a key or an
  integer index into the sorted keys. Classes with no rows still compete in zero-shot
  classification.
- Without a class-names file, zero-shot prompts name each class by its subfolder or label; where
  those are all integers, zero_shot needs the file (`make_source(need_names=True)`).
- A linear probe's test set takes the classes of its training set (`classes=`): each of its
  subfolders or labels must be one of them; it may lack some.

Zero-shot prompts (`templates`, `prompt_templates`): a set of data/zeroshot/templates.json by its
key or a dataset of tfds_eval.DATASETS, or a .json file holding a list of template strings, each
with exactly one "{}" where the class name goes.

`LabelledImageSource` is a random-access source for `pipeline.eval_batches`: `source[i]` ->
{"image_bytes": bytes, "label": int, "where": image path}, or a skip marker (`records.skipped`):
"missing_file" when nothing is at the path (or a CSV row's image field is empty),
"unreadable_image" when the path is not a regular file, is over `images.MAX_FILE_BYTES` or cannot
be read (`images.read_image_file`; such a file is never read). Bytes that do not decode become
"unreadable_image" in the pipeline's decode step (`images.decode_rgb`), as for every other source;
the evaluators report the count as `<name>/skipped`. Everything else is checked when the source
is made, before any work: a missing folder or file, no classes, a class with no images, a label
that is not a class, a class-names or templates file that cannot be used; each error names the
config field, the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image

from rankclip_jax.data import csv_files, files, images, tfds_eval
from rankclip_jax.errors import UserError

# config.evals.<name>.dataset values that read the user's labelled images.
LAYOUTS = ("folder", "csv")

# The suffixes of image files in a class folder: those Pillow registers for a format the decoder
# opens (images.FORMATS), compared in lower case.
IMAGE_SUFFIXES = tuple(sorted(
    suffix for suffix, fmt in Image.registered_extensions().items() if fmt in images.FORMATS))

_INTEGER = re.compile(r"^[0-9]+$")
# Image paths as one UTF-8 buffer plus offsets, the CSV reader's packed list: a Python string of a
# 60-character path takes about twice the memory (ImageNet's train split has 1.28M).
_Packed = csv_files._PackedStrings  # pylint: disable=protected-access
_PREVIEW = 8  # how many names an error lists before "..."


class LabelledImagesError(UserError, ValueError):
  """Labelled images, class names or templates that cannot be used as configured; the message
  names the config field, the file and the fix."""


def _preview(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_PREVIEW])
  return shown + (f", ... ({len(names)} in all)" if len(names) > _PREVIEW else "")


def _read_json(path: str, field: str, expected: str) -> Any:
  if not os.path.isfile(path):
    raise LabelledImagesError(f"{field}={path!r}: no such file; give a JSON file holding "
                              f"{expected}.")
  try:
    with open(path, encoding="utf-8-sig") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise LabelledImagesError(f"{field}={path!r}: cannot read it as JSON ({e}); it should hold "
                              f"{expected}.") from None


# ---------------------------------------------------------------------------------- templates

_TEMPLATES_EXPECTED = 'a list of prompt templates, e.g. ["a photo of a {}.", "a drawing of a {}."]'


def is_templates_file(value: str) -> bool:
  """Whether a `templates` value names a JSON file rather than a set of templates.json."""
  return value.strip().lower().endswith(".json")


def prompt_templates(value: str, *, field: str = "templates") -> list[str]:
  """The prompt templates `value` names: a .json file holding a list of templates, each with
  exactly one "{}" (checked here, naming the file and the template), or a templates.json key or a
  dataset of tfds_eval.DATASETS (tfds_eval.templates)."""
  if not is_templates_file(value):
    try:
      return tfds_eval.templates(value)
    except KeyError as e:
      raise LabelledImagesError(f"{field}={value!r}: {e.args[0]} Or give a .json file holding "
                                f"{_TEMPLATES_EXPECTED}.") from None
  path = os.path.expanduser(value.strip())
  data = _read_json(path, field, _TEMPLATES_EXPECTED)
  if not isinstance(data, list) or not data:
    found = f"a JSON {type(data).__name__}" if data else "nothing (an empty list)"
    raise LabelledImagesError(f"{path} ({field}) holds {found}; it should hold "
                              f"{_TEMPLATES_EXPECTED}.")
  for i, t in enumerate(data):
    if not isinstance(t, str):
      raise LabelledImagesError(f"{path} ({field}): template {i} is a {type(t).__name__}, not a "
                                f"string; the file should hold {_TEMPLATES_EXPECTED}.")
    count = t.count("{}")
    try:
      t.format("x")
      ok = count == 1
    except (IndexError, KeyError, ValueError):
      ok = False
    if not ok:
      raise LabelledImagesError(
          f"{path} ({field}): template {i} {t!r} has {count} '{{}}'; each template needs exactly "
          "one '{}', where the class name goes, and no other braces (write a brace itself as "
          "'{{' or '}}'), e.g. \"a photo of a {}.\".")
  return list(data)


# ------------------------------------------------------------------------------------ classes

@dataclasses.dataclass(frozen=True)
class Classes:
  """The classes of a labelled set in label order: `keys` (subfolder names or CSV labels; a
  class-names list's names) and the readable `names` that prompts use. `indexed`: integer labels
  are indices into the classes (they came from a class-names file)."""

  keys: tuple[str, ...]
  names: tuple[str, ...]
  indexed: bool = False
  origin: str = ""  # where the classes come from, for messages

  def __len__(self) -> int:
    return len(self.keys)

  def lookup(self) -> tuple[dict[str, int], set[str]]:
    """{key: class index} and the keys that more than one class has."""
    index, twice = {}, set()
    for i, k in enumerate(self.keys):
      if k in index:
        twice.add(k)
      index.setdefault(k, i)
    return index, twice


_NAMES_EXPECTED = ('an object of readable names by subfolder name or label '
                   '({"n01440764": "tench", ...}) or a list of names indexed by label '
                   '(["tench", "goldfish", ...])')


def read_class_names(path: str, *, field: str = "class_names") -> list[str] | dict[str, str]:
  """A class-names file: a JSON list of names, or an object of names by subfolder name or label;
  every name a non-empty string."""
  path = os.path.expanduser(path.strip())
  data = _read_json(path, field, _NAMES_EXPECTED)
  if isinstance(data, list):
    items = list(enumerate(data))
  elif isinstance(data, dict):
    items = list(data.items())
  else:
    raise LabelledImagesError(f"{path} ({field}) holds a JSON {type(data).__name__}; it should "
                              f"hold {_NAMES_EXPECTED}.")
  if not items:
    raise LabelledImagesError(f"{path} ({field}) is empty; it should hold {_NAMES_EXPECTED}.")
  for key, name in items:
    if not isinstance(name, str) or not name.strip():
      where = f"entry {key}" if isinstance(data, list) else f"key {key!r}"
      raise LabelledImagesError(f"{path} ({field}): {where} is {name!r}, not a non-empty string; "
                                f"the file should hold {_NAMES_EXPECTED}.")
  if isinstance(data, list):
    return [n.strip() for n in data]
  return {str(k).strip(): n.strip() for k, n in data.items()}


def _sorted_labels(labels: set[str]) -> list[str]:
  if labels and all(_INTEGER.match(x) for x in labels):
    return sorted(labels, key=int)
  return sorted(labels)


def _classes_of_folders(folders: list[str], class_names: str, *, entry: str, where: str
                        ) -> Classes:
  """The classes of an ImageFolder root: its subfolders, named by `class_names` if given."""
  if not class_names:
    return Classes(tuple(folders), tuple(folders), origin=f"the subfolders of {where}")
  field = f"{entry}.class_names"
  names = read_class_names(class_names, field=field)
  path = os.path.expanduser(class_names.strip())
  if isinstance(names, list):
    if len(names) != len(folders):
      raise LabelledImagesError(
          f"{path} ({field}) lists {len(names)} names and {where} has {len(folders)} class "
          f"subfolders ({_preview(folders)}); a list names the subfolders in sorted order, one "
          "name each. Give one name per subfolder, or an object of names by subfolder name.")
    return Classes(tuple(folders), tuple(names), origin=f"the subfolders of {where}")
  unnamed = [f for f in folders if f not in names]
  if unnamed:
    raise LabelledImagesError(
        f"{path} ({field}) names no class for {len(unnamed)} of the {len(folders)} subfolders of "
        f"{where}: {_preview(unnamed)}. Add them to it (\"<subfolder>\": \"<readable name>\"), or "
        "remove those subfolders.")
  return Classes(tuple(folders), tuple(names[f] for f in folders),
                 origin=f"the subfolders of {where}")


def _classes_of_labels(labels: list[str], class_names: str, *, entry: str, where: str) -> Classes:
  """The classes of a CSV set: those of `class_names`, else the distinct labels."""
  if not class_names:
    keys = _sorted_labels({x for x in labels if x})
    return Classes(tuple(keys), tuple(keys), origin=f"the labels of {where}")
  field = f"{entry}.class_names"
  names = read_class_names(class_names, field=field)
  path = os.path.expanduser(class_names.strip())
  if isinstance(names, list):
    return Classes(tuple(names), tuple(names), indexed=True, origin=f"{path} ({field})")
  keys = sorted(names)
  return Classes(tuple(keys), tuple(names[k] for k in keys), indexed=True,
                 origin=f"{path} ({field})")


# ------------------------------------------------------------------------------------- sources

class LabelledImageSource:
  """Random access to (image file, class) pairs: `source[i]` -> {"image_bytes": bytes, "label":
  int, "where": path} or a skip marker (see the module docstring). `classes`: the Classes;
  `classnames`: their readable names, in label order. Made by folder_source / csv_source."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int], classes: Classes,
               description: str, rows: np.ndarray | None = None):
    self._paths = paths
    self._labels = np.asarray(labels, np.int32)
    self.classes = classes
    self.classnames = list(classes.names)
    self.description = description
    self._rows = rows

  def __len__(self) -> int:
    return len(self._paths) if self._rows is None else len(self._rows)

  def _row(self, i: int) -> int:
    i = int(i)
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"example {i} of {n} in {self.description}")
    i %= n
    return i if self._rows is None else int(self._rows[i])

  def path(self, i: int) -> str:
    return self._paths[self._row(i)]

  def label(self, i: int) -> int:
    return int(self._labels[self._row(i)])

  def examples(self) -> list[tuple[str, int]]:
    """(image path, label) of every example, in order."""
    return [(self.path(i), self.label(i)) for i in range(len(self))]

  def __getitem__(self, i: int) -> dict[str, Any]:
    row = self._row(i)
    path, label = self._paths[row], int(self._labels[row])
    data = csv_files.read_listed_image(
        path, f"{self.description}: example {int(i)} has no image path")
    if isinstance(data, dict):
      return data
    return {"image_bytes": data, "label": label, "where": path}

  def evenly(self, n: int) -> "LabelledImageSource":
    """n examples spread evenly over this listing (every len/n-th one, from the first), so that a
    folder's class-sorted listing is sampled across its classes; n <= 0 or >= len: all."""
    n = int(n)
    if n <= 0 or n >= len(self):
      return self
    rows = np.arange(n, dtype=np.int64) * len(self) // n
    if self._rows is not None:
      rows = self._rows[rows]
    return LabelledImageSource(self._paths, self._labels, self.classes,
                               f"{n} of {self.description}", rows=rows)

  def __repr__(self):
    return (f"LabelledImageSource({self.description}, {len(self)} images, "
            f"{len(self.classes)} classes)")


def _not_a_folder(path: str, field: str) -> LabelledImagesError:
  hint = (" For a CSV/TSV of (image path, label) rows, set dataset='csv'."
          if os.path.isfile(path) else "")
  return LabelledImagesError(
      f"{field}={path!r}: no such folder.{hint} Give the folder holding one subfolder per class "
      "(the ImageFolder layout: <path>/<class>/<image>.jpg, e.g. an ImageNet validation folder "
      "/data/imagenet/val/n01440764/*.JPEG).")


def _image_files(folder: str, field: str) -> list[str]:
  """The image files under `folder` at any depth, sorted by their path below it (see the module
  docstring: suffixes, hidden names, links). A folder that cannot be listed is an error."""
  def cannot_read(e: OSError):
    raise LabelledImagesError(f"{field}: cannot list {e.filename}: {e.strerror}; every folder "
                              f"below {folder} must be readable.")

  found = []
  for root, dirs, names in os.walk(folder, onerror=cannot_read):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found += [os.path.join(root, n) for n in names
              if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
  return sorted(found, key=lambda p: os.path.relpath(p, folder).split(os.sep))


def folder_source(path: str, *, class_names: str = "", classes: Classes | None = None,
                  entry: str = "config.evals.<name>", path_field: str = "path"
                  ) -> LabelledImageSource:
  """The images of an ImageFolder root `path` (module docstring), labelled by subfolder.

  classes: those of another set (a linear probe's training set): every subfolder must be one of
  their keys, and class_names is not read again. Errors name `<entry>.<path_field>` (and
  `<entry>.class_names`).
  """
  field = f"{entry}.{path_field}"
  if not isinstance(path, str):
    raise LabelledImagesError(f"{field}={path!r}: dataset='folder' reads one folder; give its "
                              "path as a string.")
  root = os.path.abspath(os.path.expanduser(path.strip())) if path.strip() else ""
  if not root or not os.path.isdir(root):
    raise _not_a_folder(path, field)
  try:
    entries = sorted(os.listdir(root))
  except OSError as e:
    raise LabelledImagesError(f"{field}={path!r}: cannot list {root}: {e.strerror}.") from None
  folders = [d for d in entries if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]
  if not folders:
    loose = [f for f in entries if f.lower().endswith(IMAGE_SUFFIXES)]
    found = (f"; it holds {len(loose)} image files directly, which the layout puts in a subfolder "
             "per class" if loose else "")
    raise LabelledImagesError(
        f"{field}={path!r}: {root} has no class subfolders{found}. The ImageFolder layout is "
        "<path>/<class>/<image>.jpg: one subfolder per class, named after it.")
  listed = {}
  for d in folders:
    listed[d] = _image_files(os.path.join(root, d), field)
    if not listed[d]:
      raise LabelledImagesError(
          f"{field}={path!r}: class subfolder {os.path.join(root, d)} holds no image files (looked "
          f"for {', '.join(IMAGE_SUFFIXES)} at any depth). Put the class's images in it or remove "
          "it.")
  if classes is None:
    classes = _classes_of_folders(folders, class_names, entry=entry, where=root)
    index = {k: i for i, k in enumerate(classes.keys)}
  else:
    index, _ = classes.lookup()
    strangers = [d for d in folders if d not in index]
    if strangers:
      raise LabelledImagesError(
          f"{field}={path!r}: the subfolders {_preview(strangers)} of {root} are not classes of "
          f"{classes.origin} ({_preview(list(classes.keys))}). Its subfolders must be classes of "
          "the training set: rename or remove them.")
  paths, labels = [], []
  for d in folders:
    paths += listed[d]
    labels += [index[d]] * len(listed[d])
  return LabelledImageSource(_Packed(paths), labels, classes, f"folder {root}")


def csv_source(path: str, *, image_key: str = "image", label_key: str = "label",
               delimiter: str = "", image_root: str = "", class_names: str = "",
               classes: Classes | None = None, entry: str = "config.evals.<name>",
               path_field: str = "path") -> LabelledImageSource:
  """The (image path, label) rows of the CSV/TSV file(s) `path` (module docstring).

  classes: those of another set (a linear probe's training set), which every label must be one of
  (class_names is not read again). Errors name `<entry>.<path_field>` and the other fields.
  """
  field = f"{entry}.{path_field}"
  if image_key == label_key:
    raise LabelledImagesError(
        f"{entry}.image_key and {entry}.label_key are both {image_key!r}; name the column of "
        "image paths and the column of labels.")
  root = ""
  if image_root.strip():
    root = os.path.abspath(os.path.expanduser(image_root.strip()))
    if not os.path.isdir(root):
      raise LabelledImagesError(f"{entry}.image_root={image_root!r}: no such folder; give the "
                                "folder the CSV's image paths are relative to (\"\": the CSV "
                                "file's own folder).")
  csvs = files.expand_paths(path, suffixes=(".csv", ".tsv"), field=field)
  columns = {image_key: "image_key=<column>", label_key: "label_key=<column>"}
  paths, labels, rows_of = [], [], []  # rows_of: (csv, row number) of each example
  for f in csvs:
    image_col, label_col = csv_files.read_columns(
        f, columns, delimiter=csv_files.delimiter_of(delimiter, f), field=field)
    for r, (image, label) in enumerate(zip(image_col, label_col), start=1):
      image = image.strip()
      paths.append((os.path.join(root, image) if root else csv_files.resolve(f, image))
                   if image else "")
      labels.append(label.strip())
      rows_of.append((f, r))
  if not paths:
    raise LabelledImagesError(f"{field}: {', '.join(csvs)} hold no rows below the header.")
  empty = [k for k, x in enumerate(labels) if not x]
  if empty:
    f, r = rows_of[empty[0]]
    raise LabelledImagesError(
        f"{f}: row {r} below the header has an empty label (column {label_key!r}, "
        f"{entry}.label_key){f', as do {len(empty) - 1} more rows' if len(empty) > 1 else ''}. "
        "Give every row its class.")
  where = ", ".join(csvs)
  if classes is None:
    classes = _classes_of_labels(labels, class_names, entry=entry, where=where)
  index, twice = classes.lookup()
  out, bad = [], []
  for k, label in enumerate(labels):
    if label in index and label not in twice:
      out.append(index[label])
    elif label not in index and classes.indexed and _INTEGER.match(label) and int(
        label) < len(classes):
      out.append(int(label))
    else:
      bad.append(k)
  if bad:
    f, r = rows_of[bad[0]]
    label = labels[bad[0]]
    more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
    if label in twice:
      why = (f"a name that {classes.origin} gives to more than one class; use the integer index "
             "of the class meant")
    elif classes.indexed:
      why = (f"neither one of the {len(classes)} classes of {classes.origin} "
             f"({_preview(list(classes.keys))}) nor an index in [0, {len(classes)}); correct the "
             "label, or add its class to that file")
    else:  # the classes of a linear probe's training set, from its labels
      why = (f"not one of the {len(classes)} classes of {classes.origin} "
             f"({_preview(list(classes.keys))}); the test set's labels must be classes of the "
             f"training set ({entry}.train_path): correct the label, or give {entry}.class_names "
             "to list every class")
    raise LabelledImagesError(f"{f}: row {r} below the header has label {label!r}{more}, {why}.")
  return LabelledImageSource(_Packed(paths), out, classes, f"CSV {where}")


def make_source(dataset: str, path: str, *, class_names: str = "", image_key: str = "image",
                label_key: str = "label", delimiter: str = "", image_root: str = "",
                classes: Classes | None = None, need_names: bool = False,
                entry: str = "config.evals.<name>", path_field: str = "path"
                ) -> LabelledImageSource:
  """The labelled images of dataset "folder" or "csv" at `path` (see folder_source, csv_source).

  need_names (zero-shot): classes named only by integers (subfolders or labels with no
  class_names) are an error, since prompts would read "a photo of a 3.".
  """
  if dataset not in LAYOUTS:
    raise LabelledImagesError(f"{entry}.dataset={dataset!r} is not one of {LAYOUTS}.")
  if not str(path).strip():
    raise LabelledImagesError(
        f"{entry}.{path_field} is empty: dataset={dataset!r} reads "
        + ("a folder with one subfolder per class; give it with "
           f"--{entry}.{path_field}=/data/imagenet/val." if dataset == "folder" else
           f"a CSV/TSV of (image path, label) rows; give it with --{entry}.{path_field}="
           "/data/labels.csv."))
  if dataset == "folder":
    src = folder_source(path, class_names=class_names, classes=classes, entry=entry,
                        path_field=path_field)
  else:
    src = csv_source(path, image_key=image_key, label_key=label_key, delimiter=delimiter,
                     image_root=image_root, class_names=class_names, classes=classes,
                     entry=entry, path_field=path_field)
  if need_names and not class_names and all(_INTEGER.match(k) for k in src.classes.keys):
    raise LabelledImagesError(
        f"{entry}.class_names is needed: the classes of {src.description} are the integers "
        f"{_preview(list(src.classes.keys))}, and zero-shot prompts need the classes' names. "
        f"Give --{entry}.class_names=<file.json> holding a list of names indexed by label "
        "([\"tench\", \"goldfish\", ...]) or an object of names by "
        + ("subfolder name." if dataset == "folder" else "label."))
  return src
