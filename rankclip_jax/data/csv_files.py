"""CSV/TSV files of (image path, caption) rows as a random-access source.

The format of the RankCLIP and CyCLIP training code: a header row naming the columns, one example
per row, the image path relative to the CSV file's directory (or absolute). Column names and the
delimiter come from the config:

    --config.data.train.kind=csv --config.data.train.path=/data/cc3m/train.csv \
    --config.data.train.image_key=image --config.data.train.caption_key=caption \
    --config.data.train.delimiter=','

A loss that reads a synthetic caption of each image (ALIP) takes it from one more column,
--config.data.train.synthetic_caption_key=<column>; an empty cell skips the row, counted as an
empty caption. Other losses never read that column.

The rows are read at start-up; images are read when an example is read, so a bad image costs that
one example (skipped and counted), never the run: an empty image field or nothing at the path is
"missing_file"; a path that is not a regular file (a FIFO, which would block the reader for ever,
/dev/zero, which never ends, a directory), a file over `images.MAX_FILE_BYTES` (32 MiB; neither is
read) or one that cannot be read is "unreadable_image", like bytes that do not decode. A CSV that
cannot be opened or lacks a named column is an error naming the file, the column, and the columns
it has. Captions are used as they are; the tokenizer cleans and caps them (data/tokenizer.py).
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Sequence

import numpy as np

from rankclip_jax.data import files, images
from rankclip_jax.data.records import skipped
from rankclip_jax.errors import UserError


class CsvFormatError(UserError, ValueError):
  """A CSV/TSV file cannot be used as configured; the message names the file and the fix."""


def read_columns(path: str, columns: dict[str, str], *, delimiter: str, field: str = "path"
                 ) -> list[list[str]]:
  """The named columns of one CSV/TSV file: one list of strings per column, in row order.

  columns: {column name: the setting that names it, as the fix to print, e.g. "image_key=<column>"}
  (the setting is relative to the config entry whose `field` is given, e.g. config.data.train.path).
  A UTF-8 byte-order mark is ignored; a missing column is an error naming the file, the column,
  the columns the file has and the setting to change.
  """
  csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
  entry = field.rsplit(".", 1)[0]
  try:
    f = open(path, newline="", encoding="utf-8-sig")
  except OSError as e:
    raise CsvFormatError(f"{field}: cannot open {path}: {e}") from None
  with f:
    reader = csv.DictReader(f, delimiter=delimiter)
    names = reader.fieldnames or []
    for key, setting in columns.items():
      if key not in names:
        hint = (" The header looks like one column: is the delimiter right (delimiter="
                f"{delimiter!r})?" if len(names) == 1 else "")
        raise CsvFormatError(
            f"{path} has no column {key!r} ({entry}.{setting.split('=')[0]}); its columns "
            f"are {names}.{hint} Set --{entry}.{setting}.")
    out = [[] for _ in columns]
    try:
      for row in reader:
        for values, key in zip(out, columns):
          values.append(row.get(key) or "")
    except csv.Error as e:
      raise CsvFormatError(f"{path}, line {reader.line_num}: {e}") from None
  return out


def read_rows(path: str, *, image_key: str, caption_key: str, delimiter: str,
              field: str = "path") -> tuple[list[str], list[str]]:
  """(absolute image paths, captions) of one CSV/TSV file."""
  images, captions = read_columns(
      path, {image_key: "image_key=<column>", caption_key: "caption_key=<column>"},
      delimiter=delimiter, field=field)
  return [resolve(path, image) for image in images], captions


def resolve(csv_path: str, image: str) -> str:
  """An image field of a CSV row as an absolute path ("" stays ""): relative to the CSV's folder."""
  image = image.strip()
  return os.path.join(os.path.dirname(os.path.abspath(csv_path)), image) if image else ""


def delimiter_of(value: str, path: str) -> str:
  """config `delimiter` ("" = tab for .tsv, comma otherwise; or 'tab', '\\t', 'comma', 'space', a
  character) for the file at `path`."""
  if not value:
    return "\t" if path.lower().endswith(".tsv") else ","
  named = {"tab": "\t", "\\t": "\t", "comma": ",", "space": " "}
  d = named.get(value, value)
  if len(d) != 1:
    raise CsvFormatError(f"delimiter={value!r} must be one character (or 'tab', '\\t', 'comma').")
  return d


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


def read_listed_image(path: str, no_path: str) -> bytes | dict:
  """The bytes of an image file a listing names, or the skip marker saying why not: no path
  (`no_path` says where), a missing file, one that cannot be read (not a regular file, over
  images.MAX_FILE_BYTES, no permission)."""
  if not path:
    return skipped("missing_file", no_path)
  try:
    return images.read_image_file(path)
  except FileNotFoundError:
    return skipped("missing_file", path)
  except (OSError, images.BadImage) as e:
    return skipped("unreadable_image", f"{path}: {e}")


class CsvSource:
  """Random access to (image file, caption) rows of one or more CSV/TSV files.

  `source[i]` is {"image_bytes": bytes, "caption": str, "where": "<image path>"} (and
  "synthetic_caption": str when `synthetic_caption_key` names a column) or a skip marker
  (rankclip_jax.data.records): a missing or unreadable image file, or an empty image field.
  """

  def __init__(self, path: str | Sequence[str], *, image_key: str = "image",
               caption_key: str = "caption", synthetic_caption_key: str = "",
               delimiter: str = "", field: str = "path"):
    self.files = files.expand_paths(path, suffixes=(".csv", ".tsv"), field=field)
    images, captions, synthetic = [], [], []
    columns = {image_key: "image_key=<column>", caption_key: "caption_key=<column>"}
    if synthetic_caption_key:
      if synthetic_caption_key in columns:
        raise CsvFormatError(
            f"{field.rsplit('.', 1)[0]}.synthetic_caption_key={synthetic_caption_key!r} names the "
            "image or caption column; name the column of the synthetic captions.")
      columns[synthetic_caption_key] = "synthetic_caption_key=<column>"
    for f in self.files:
      i, c, *syn = read_columns(f, columns, delimiter=delimiter_of(delimiter, f), field=field)
      images += [resolve(f, image) for image in i]
      captions += c
      synthetic += syn[0] if syn else []
    if not images:
      raise CsvFormatError(f"{field}: {', '.join(self.files)} hold no rows below the header.")
    self.images = _PackedStrings(images)
    self.captions = _PackedStrings(captions)
    self.synthetic_captions = _PackedStrings(synthetic) if synthetic_caption_key else None

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int):
    path = self.images[int(i)]
    data = read_listed_image(path, f"{self.files[0]}: row {int(i)} has an empty image path")
    if isinstance(data, dict):
      return data
    out = {"image_bytes": data, "caption": self.captions[int(i)], "where": path}
    if self.synthetic_captions is not None:
      out["synthetic_caption"] = self.synthetic_captions[int(i)]
    return out

  def __repr__(self):
    return f"CsvSource({len(self.files)} files, {len(self)} rows, first {self.files[0]})"
