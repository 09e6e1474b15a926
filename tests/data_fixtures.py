"""Small real data sets on disk for the reader tests: JPEG/PNG files, webdataset tar shards as
img2dataset writes them, and CSV/TSV files, each with a known set of bad examples.

Images are rendered synthetic scenes (so a model can learn from them) encoded with Pillow; the bad
examples are one of each kind the readers must survive: a corrupt JPEG, a truncated JPEG, an empty
caption, a missing file (CSV), a key without a caption (tar), plus a grey PNG and an RGBA PNG that
must be read correctly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

from rankclip_jax.data import synthetic


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt, **kw)
  return buf.getvalue()


def scenes(n: int, image_size: int = 40, seed: int = 0):
  """n (uint8 [S, S, 3] image, caption) pairs of the embedded synthetic scenes."""
  src = synthetic.SyntheticScenes(num_records=n, seed=seed, split="train", image_size=image_size,
                                  min_objects=1, max_objects=2, caption_mode="full")
  return [(src[i]["image"], src[i]["caption"]) for i in range(n)]


def grey_png(image: np.ndarray) -> bytes:
  return encode(np.asarray(Image.fromarray(image).convert("L")), "PNG")


def rgba_png(image: np.ndarray) -> bytes:
  """RGBA with the left half fully transparent (pixels stored there: pure black)."""
  rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=-1)
  half = image.shape[1] // 2
  rgba[:, :half, :3] = 0
  rgba[:, :half, 3] = 0
  return encode(rgba, "PNG")


def corrupt_jpeg(seed: int = 0) -> bytes:
  rng = np.random.default_rng(seed)
  return b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes()


def truncated_jpeg(image: np.ndarray) -> bytes:
  data = encode(image, "JPEG", quality=90)
  return data[:len(data) // 2]


# What each fixture holds that the readers must skip, per kind.
TAR_BAD = {"unreadable_image": 2, "empty_caption": 1, "incomplete_example": 1}
CSV_BAD = {"missing_file": 1, "unreadable_image": 2, "empty_caption": 1}


def _add(tar: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0
  tar.addfile(info, io.BytesIO(data))


def write_tar_shards(directory: str, *, num_good: int = 40, num_shards: int = 3,
                     image_size: int = 40, seed: int = 0) -> dict:
  """img2dataset-style shards `{directory}/0000{i}.tar` with `{key}.jpg/.txt/.json` members.

  Besides num_good good JPEG examples (two of them the grey and RGBA PNGs, stored as `.png`) the
  shards hold the bad examples of TAR_BAD. Returns {"pattern": brace pattern of the shards,
  "good": {key: caption}, "png_keys": (grey key, rgba key)}.
  """
  os.makedirs(directory, exist_ok=True)
  data = scenes(num_good + 4, image_size, seed)
  examples = []  # (key, {ext: bytes})
  for i, (image, caption) in enumerate(data[:num_good]):
    key = f"{i:09d}"
    members = {"jpg": encode(image, "JPEG", quality=95), "txt": caption.encode(),
               "json": json.dumps({"key": key, "caption": caption, "status": "success"}).encode()}
    if i == 1:
      members = {"png": grey_png(image), "txt": caption.encode()}
    elif i == 2:
      members = {"png": rgba_png(image), "txt": caption.encode()}
    examples.append((key, members))
  spare = data[num_good:]
  examples += [
      (f"{num_good + 0:09d}", {"jpg": corrupt_jpeg(seed), "txt": b"a corrupt image"}),
      (f"{num_good + 1:09d}", {"jpg": truncated_jpeg(spare[1][0]), "txt": b"a cut image"}),
      (f"{num_good + 2:09d}", {"jpg": encode(spare[2][0], "JPEG"), "txt": b"  \n"}),
      (f"{num_good + 3:09d}", {"jpg": encode(spare[3][0], "JPEG")}),  # no caption
  ]
  order = np.random.default_rng(seed).permutation(len(examples))
  paths = []
  for s, chunk in enumerate(np.array_split(order, num_shards)):
    path = os.path.join(directory, f"{s:05d}.tar")
    with tarfile.open(path, "w") as tar:
      for j in chunk:
        key, members = examples[j]
        for ext, payload in members.items():
          _add(tar, f"{key}.{ext}", payload)
    paths.append(path)
  bad_kinds = ("unreadable_image", "unreadable_image", "empty_caption", "incomplete_example")
  return {"pattern": os.path.join(directory, f"{{00000..{num_shards - 1:05d}}}.tar"),
          "good": {k: m["txt"].decode() for k, m in examples[:num_good]},
          "bad": {f"{num_good + i:09d}": kind for i, kind in enumerate(bad_kinds)},
          "png_keys": (f"{1:09d}", f"{2:09d}"), "images": [d[0] for d in data[:num_good]]}


def write_csv(directory: str, *, num_good: int = 40, image_size: int = 40, seed: int = 0,
              delimiter: str = ",", name: str = "train.csv", image_key: str = "image",
              caption_key: str = "caption") -> dict:
  """`{directory}/{name}` with image paths relative to it (in `images/`), plus CSV_BAD's bad rows.

  Returns {"path": csv path, "good": {relative image path: caption}, "bad": {path: skip kind}}.
  """
  image_dir = os.path.join(directory, "images")
  os.makedirs(image_dir, exist_ok=True)
  data = scenes(num_good + 4, image_size, seed)
  rows, good = [], {}
  for i, (image, caption) in enumerate(data[:num_good]):
    if i == 1:
      rel, payload = f"images/{i:05d}.png", grey_png(image)
    elif i == 2:
      rel, payload = f"images/{i:05d}.png", rgba_png(image)
    else:
      rel, payload = f"images/{i:05d}.jpg", encode(image, "JPEG", quality=95)
    with open(os.path.join(directory, rel), "wb") as f:
      f.write(payload)
    rows.append((rel, caption))
    good[rel] = caption
  bad = [("images/missing.jpg", "a file that is not there"),
         ("images/corrupt.jpg", "a corrupt image"),
         ("images/truncated.jpg", "a cut image"),
         ("images/empty_caption.jpg", "")]
  with open(os.path.join(directory, "images/corrupt.jpg"), "wb") as f:
    f.write(corrupt_jpeg(seed))
  with open(os.path.join(directory, "images/truncated.jpg"), "wb") as f:
    f.write(truncated_jpeg(data[num_good + 1][0]))
  with open(os.path.join(directory, "images/empty_caption.jpg"), "wb") as f:
    f.write(encode(data[num_good + 2][0], "JPEG"))
  rows += bad
  order = np.random.default_rng(seed).permutation(len(rows))
  path = os.path.join(directory, name)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(["id", image_key, caption_key])
    for j in order:
      writer.writerow([int(j), *rows[j]])
  kinds = ("missing_file", "unreadable_image", "unreadable_image", "empty_caption")
  return {"path": path, "good": good, "bad": {rel: k for (rel, _), k in zip(bad, kinds)}}


# ----------------------------------------------------------------------------- damaged tar shards

def tar_bytes(members, fmt=tarfile.GNU_FORMAT) -> bytes:
  """A tar archive of [(name, data)] in order, written by Python's tarfile (as img2dataset's writer
  does): GNU long names, ustar prefixes or pax headers as `fmt` needs them for long names."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
    for name, payload in members:
      _add(tar, name, payload)
  return buf.getvalue()


def tar_layout(data: bytes) -> list[tarfile.TarInfo]:
  """tarfile's members of an archive: `offset` is a member's first header (its GNU long name or
  pax header, if it has one), `offset_data - 512` its own header, `offset_data` its data."""
  with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
    return tar.getmembers()


def end_marker(data: bytes) -> int:
  """Where an archive's end-of-archive marker (its first zero block) starts."""
  last = tar_layout(data)[-1]
  return last.offset_data + (last.size + 511) // 512 * 512


def with_header_field(data: bytes, header: int, start: int, end: int, value: bytes,
                      fix_checksum: bool = True) -> bytes:
  """`data` with bytes [start, end) of the header block at offset `header` set to `value` (padded
  with NULs), and that header's checksum recomputed (unless fix_checksum=False)."""
  assert len(value) <= end - start
  block = bytearray(data[header:header + 512])
  block[start:end] = value.ljust(end - start, b"\0")
  if fix_checksum:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
  return data[:header] + bytes(block) + data[header + 512:]


def damaged_shards(good_path: str, directory: str) -> dict[str, str]:
  """Damaged copies of a good shard (write_tar_shards') that a reader must survive, in
  `directory` as `<kind>.tar`; returns {kind: path}:

  not_a_tar: text; cut_at_header: cut exactly at the header of its middle member (no end-of-archive
  marker); negative_size: the middle member's size set to -512 in octal; bad_pax: a pax-format
  copy (members under a long directory name, so each has a pax header) whose middle member's pax
  record has length 0.
  """
  os.makedirs(directory, exist_ok=True)
  data = open(good_path, "rb").read()
  layout = tar_layout(data)
  middle = layout[len(layout) // 2]
  long_dir = "d" * 120 + "/"
  with tarfile.open(good_path) as tar:
    members = [(long_dir + m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
  pax = tar_bytes(members, tarfile.PAX_FORMAT)
  start = tar_layout(pax)[len(layout) // 2].offset + 512  # its pax header's data: one record
  digits = pax.index(b" ", start) - start
  assert pax[start + digits:start + digits + 6] == b" path="
  shards = {
      "not_a_tar": b"<html><body>404 Not Found</body></html>\n" * 30,
      "cut_at_header": data[:middle.offset],
      "negative_size": with_header_field(data, middle.offset_data - 512, 124, 136, b"-0001000"),
      "bad_pax": pax[:start] + b"0" * digits + pax[start + digits:],
  }
  paths = {}
  for kind, payload in shards.items():
    paths[kind] = os.path.join(directory, f"{kind}.tar")
    with open(paths[kind], "wb") as f:
      f.write(payload)
  return paths
