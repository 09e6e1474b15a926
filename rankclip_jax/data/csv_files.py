"""CSV/TSV files of (image path, caption) rows as a random-access source.

The format of the RankCLIP and CyCLIP training code: a header row naming the columns, one example
per row, the image path relative to the CSV file's directory (or absolute). Column names and the
delimiter come from the config:

    --config.data.train.kind=csv --config.data.train.path=/data/cc3m/train.csv \
    --config.data.train.image_key=image --config.data.train.caption_key=caption \
    --config.data.train.delimiter=','

The rows are read at start-up; images are read when an example is read, so a missing file or an
unreadable image costs that one example (skipped and counted), never the run. A CSV that cannot be
opened or lacks a named column is an error naming the file, the column, and the columns it has.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Sequence

import numpy as np

from rankclip_jax.data import files
from rankclip_jax.data.records import skipped


class CsvFormatError(ValueError):
  """A CSV/TSV file cannot be used as configured; the message names the file and the fix."""


def _delimiter(value: str, path: str) -> str:
  if not value:
    return "\t" if path.lower().endswith(".tsv") else ","
  named = {"tab": "\t", "\\t": "\t", "comma": ",", "space": " "}
  d = named.get(value, value)
  if len(d) != 1:
    raise CsvFormatError(f"delimiter={value!r} must be one character (or 'tab', '\\t', 'comma').")
  return d


def read_rows(path: str, *, image_key: str, caption_key: str, delimiter: str,
              field: str = "path") -> tuple[list[str], list[str]]:
  """(absolute image paths, captions) of one CSV/TSV file."""
  csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
  base = os.path.dirname(os.path.abspath(path))
  try:
    f = open(path, newline="", encoding="utf-8-sig")
  except OSError as e:
    raise CsvFormatError(f"{field}: cannot open {path}: {e}") from None
  with f:
    reader = csv.DictReader(f, delimiter=delimiter)
    columns = reader.fieldnames or []
    for what, key in (("image_key", image_key), ("caption_key", caption_key)):
      if key not in columns:
        hint = (" The header looks like one column: is the delimiter right (delimiter="
                f"{delimiter!r})?" if len(columns) == 1 else "")
        raise CsvFormatError(
            f"{path} has no column {key!r} ({field.rsplit('.', 1)[0]}.{what}); its columns "
            f"are {columns}.{hint} Set --{field.rsplit('.', 1)[0]}.{what}=<column>.")
    images, captions = [], []
    try:
      for row in reader:
        image = (row.get(image_key) or "").strip()
        images.append(os.path.join(base, image) if image else "")
        captions.append(row.get(caption_key) or "")
    except csv.Error as e:
      raise CsvFormatError(f"{path}, line {reader.line_num}: {e}") from None
  return images, captions


class _PackedStrings:
  """A list of strings as one UTF-8 buffer plus offsets: millions of rows pickle into grain
  worker processes in milliseconds, where a list of Python strings would take seconds."""

  def __init__(self, strings: Sequence[str]):
    encoded = [s.encode("utf-8") for s in strings]
    self.offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
    self.buffer = np.frombuffer(b"".join(encoded), np.uint8)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> str:
    return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")


class CsvSource:
  """Random access to (image file, caption) rows of one or more CSV/TSV files.

  `source[i]` is {"image_bytes": bytes, "caption": str, "where": "<image path>"} or a skip marker
  (rankclip_jax.data.records): a missing or unreadable image file, or an empty image field.
  """

  def __init__(self, path: str | Sequence[str], *, image_key: str = "image",
               caption_key: str = "caption", delimiter: str = "", field: str = "path"):
    self.files = files.expand_paths(path, suffixes=(".csv", ".tsv"), field=field)
    images, captions = [], []
    for f in self.files:
      i, c = read_rows(f, image_key=image_key, caption_key=caption_key,
                       delimiter=_delimiter(delimiter, f), field=field)
      images += i
      captions += c
    if not images:
      raise CsvFormatError(f"{field}: {', '.join(self.files)} hold no rows below the header.")
    self.images = _PackedStrings(images)
    self.captions = _PackedStrings(captions)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int):
    path = self.images[int(i)]
    if not path:
      return skipped("missing_file", f"{self.files[0]}: row {int(i)} has an empty image path")
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return skipped("missing_file", path)
    except OSError:
      return skipped("unreadable_image", path)
    return {"image_bytes": data, "caption": self.captions[int(i)], "where": path}

  def __repr__(self):
    return f"CsvSource({len(self.files)} files, {len(self)} rows, first {self.files[0]})"
