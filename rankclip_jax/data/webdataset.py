"""Webdataset tar shards (img2dataset's output for CC3M/CC12M/LAION) as a random-access source.

A shard is a plain tar file whose members are grouped into examples by key: `000000123.jpg`,
`000000123.txt`, `000000123.json` are one example with key `000000123` (webdataset's rule: the key
is the member path up to the first dot of its file name, the rest is the extension).

At start-up every shard's headers are read (not its data: one 512-byte read per member, ~10 us
each in Python, spread over a process per core when there are many shards) into a compact index of (shard, offset, size) per image and
caption. Examples are then read by offset with `os.pread`, so grain can shuffle globally, shard over
hosts and resume at an exact position like any random-access source.

Problems found while indexing stay in the index as skip entries, so that reading the dataset counts
them like any other bad example: a key with an image but no caption (or the reverse) is an
`incomplete_example`; a member cut short or a corrupt header is a `broken_member` (indexing of that
shard stops there, with a warning naming it). A shard that cannot be opened or is not a tar file at
all is an error naming it.

A loss that reads a synthetic caption of each image (ALIP) takes it from one more member per key,
named by its extension (config `synthetic_caption_key`, e.g. 'syn.txt' for <key>.syn.txt); a key
without one, or with an empty one, is skipped and counted as an empty caption. Other losses never
index or read those members.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import threading
from typing import Sequence

import numpy as np
from absl import logging

from rankclip_jax.data import files
from rankclip_jax.data.records import SKIP_INDEX, SKIP_KINDS, skipped
from rankclip_jax.errors import UserError

BLOCK = 512
DEFAULT_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
DEFAULT_CAPTION_EXTS = ("txt",)

# One row per example. kind: 0 for a good example, else 1 + index into SKIP_KINDS.
INDEX_DTYPE = np.dtype([("shard", np.int32), ("kind", np.int8), ("image_offset", np.int64),
                        ("image_size", np.int64), ("caption_offset", np.int64),
                        ("caption_size", np.int32), ("synthetic_offset", np.int64),
                        ("synthetic_size", np.int32), ("key", "S48")])


class ShardError(UserError, OSError):
  """A whole shard cannot be used (cannot be opened, or is not a tar file)."""


def _octal_or_base256(field: bytes) -> int:
  if field and field[0] & 0x80:  # GNU base-256 encoding for large numbers
    return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
  text = field.split(b"\0", 1)[0].strip()
  return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
  try:
    stored = _octal_or_base256(header[148:156])
  except ValueError:
    return False
  return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


def _pax_path(data: bytes) -> str | None:
  """The `path` record of a pax extended header ("<len> path=<name>\\n" records)."""
  pos = 0
  path = None
  while pos < len(data):
    space = data.find(b" ", pos)
    if space < 0:
      break
    length = int(data[pos:space])
    record = data[space + 1:pos + length - 1]  # without the trailing newline
    key, _, value = record.partition(b"=")
    if key == b"path":
      path = value.decode("utf-8", "replace")
    pos += length
  return path


def scan_tar(path: str) -> tuple[list[tuple[str, int, int]], str | None]:
  """Regular-file members of a tar as (name, data offset, size), and a problem description if
  the archive is cut short or corrupt part-way (members before that point are kept).

  Raises ShardError if the file cannot be opened or its first header is not a tar header.
  """
  try:
    f = open(path, "rb")
  except OSError as e:
    raise ShardError(f"Cannot open tar shard {path}: {e}") from None
  members: list[tuple[str, int, int]] = []
  problem = None
  with f:
    file_size = os.fstat(f.fileno()).st_size
    offset = 0
    long_name = None
    while True:
      f.seek(offset)
      header = f.read(BLOCK)
      if len(header) < BLOCK:
        if offset == 0:
          raise ShardError(f"{path} is not a tar file (shorter than one tar header).")
        if header:
          problem = f"cut short inside a header at byte {offset}"
        break
      if header == b"\0" * BLOCK:
        break  # end-of-archive marker
      if not _checksum_ok(header):
        if offset == 0:
          raise ShardError(f"{path} is not a tar file (no valid tar header at its start).")
        problem = f"corrupt tar header at byte {offset}"
        break
      size = _octal_or_base256(header[124:136])
      typeflag = header[156:157]
      data_offset = offset + BLOCK
      if data_offset + size > file_size:
        problem = f"member at byte {offset} is cut short ({file_size - data_offset} of {size} bytes)"
        break
      if typeflag == b"L":  # GNU long name: the next member's name is this member's data
        f.seek(data_offset)
        long_name = f.read(size).split(b"\0", 1)[0].decode("utf-8", "replace")
      elif typeflag == b"x":  # pax extended header for the next member
        f.seek(data_offset)
        long_name = _pax_path(f.read(size)) or long_name
      elif typeflag in (b"0", b"\0", b"7"):  # regular file (7: contiguous file)
        if long_name is not None:
          name = long_name
        else:
          name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
          if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            if prefix:
              name = prefix + "/" + name
        members.append((name, data_offset, size))
        long_name = None
      else:  # directories, links, pax globals: not example data
        long_name = None if typeflag != b"g" else long_name
      offset = data_offset + (size + BLOCK - 1) // BLOCK * BLOCK
  return members, problem


def split_key(name: str) -> tuple[str, str]:
  """'dir/000123.seg.jpg' -> ('dir/000123', 'seg.jpg'): key up to the first dot of the basename."""
  slash = name.rfind("/") + 1
  dot = name.find(".", slash)
  if dot < 0:
    return name, ""
  return name[:dot], name[dot + 1:].lower()


def index_shard(shard_id: int, path: str, image_exts: Sequence[str],
                caption_exts: Sequence[str], synthetic_exts: Sequence[str] = ()) -> np.ndarray:
  members, problem = scan_tar(path)
  by_key: dict[str, dict[str, tuple[int, int]]] = collections.OrderedDict()
  for name, offset, size in members:
    key, ext = split_key(name)
    if key.startswith("__") or not ext:  # webdataset's metadata members, extension-less files
      continue
    by_key.setdefault(key, {})[ext] = (offset, size)
  incomplete = 1 + SKIP_INDEX["incomplete_example"]
  rows = []
  for key, exts in by_key.items():
    image = next((exts[e] for e in image_exts if e in exts), None)
    caption = next((exts[e] for e in caption_exts if e in exts), None)
    synthetic = next((exts[e] for e in synthetic_exts if e in exts), (0, 0))
    key_bytes = key.encode("utf-8")[-48:]
    if image is None or caption is None:
      rows.append((shard_id, incomplete, 0, 0, 0, 0, 0, 0, key_bytes))
    elif synthetic_exts and not synthetic[1]:  # no synthetic caption, or an empty one
      rows.append((shard_id, 1 + SKIP_INDEX["empty_caption"], 0, 0, 0, 0, 0, 0, key_bytes))
    else:
      rows.append((shard_id, 0, image[0], image[1], caption[0], caption[1], *synthetic,
                   key_bytes))
  if problem is not None:
    logging.warning("Tar shard %s: %s; its %d complete examples before that point are used.",
                    path, problem, len(by_key))
    rows.append((shard_id, 1 + SKIP_INDEX["broken_member"], 0, 0, 0, 0, 0, 0,
                 problem.encode("utf-8")[:48]))
  return np.array(rows, INDEX_DTYPE)


def _index_shard(args) -> np.ndarray:
  return index_shard(*args)


def index_shards(shards: Sequence[str], image_exts: Sequence[str], caption_exts: Sequence[str],
                 processes: int | None = None, synthetic_exts: Sequence[str] = ()
                 ) -> list[np.ndarray]:
  """index_shard over many shards: in a pool of processes when there are many (header parsing is
  Python, so threads would share one core), else in this process."""
  jobs = [(i, path, tuple(image_exts), tuple(caption_exts), tuple(synthetic_exts))
          for i, path in enumerate(shards)]
  processes = min(os.cpu_count() or 1, 32) if processes is None else processes
  if processes <= 1 or len(shards) < 8:
    return [_index_shard(job) for job in jobs]
  # spawn, not fork: the parent may already run JAX/grain threads, which fork would break.
  ctx = multiprocessing.get_context("spawn")
  try:
    with concurrent.futures.ProcessPoolExecutor(min(processes, len(shards)), mp_context=ctx) as ex:
      return list(ex.map(_index_shard, jobs, chunksize=max(1, len(jobs) // (4 * processes))))
  except concurrent.futures.process.BrokenProcessPool:
    # Spawned processes re-import __main__; a script read from stdin, for example, cannot be.
    logging.warning("Indexing tar shards in worker processes failed; indexing them here.")
    return [_index_shard(job) for job in jobs]


class _FileCache:
  """Open read-only file descriptors, shared by the reader threads of one process (pread has no
  file position, so one descriptor serves all threads); at most `capacity` are kept open."""

  def __init__(self, capacity: int = 128):
    self.capacity = capacity
    self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
    self._lock = threading.Lock()

  def read(self, path: str, offset: int, size: int) -> bytes:
    with self._lock:
      fd = self._fds.get(path)
      if fd is None:
        fd = os.open(path, os.O_RDONLY)
        self._fds[path] = fd
        while len(self._fds) > self.capacity:
          _, old = self._fds.popitem(last=False)
          os.close(old)
      else:
        self._fds.move_to_end(path)
    return os.pread(fd, size, offset)

  def close(self):
    with self._lock:
      for fd in self._fds.values():
        os.close(fd)
      self._fds.clear()


class WebDatasetSource:
  """Random access to the examples of webdataset tar shards.

  `source[i]` is {"image_bytes": bytes, "caption": str, "where": "<shard>:<key>"} (and
  "synthetic_caption": str when `synthetic_caption_exts` are given) or a skip marker
  (rankclip_jax.data.records). Picklable: worker processes reopen the shards themselves.
  """

  def __init__(self, path: str | Sequence[str], *, image_exts: Sequence[str] = DEFAULT_IMAGE_EXTS,
               caption_exts: Sequence[str] = DEFAULT_CAPTION_EXTS,
               synthetic_caption_exts: Sequence[str] = (), field: str = "path",
               index_processes: int | None = None):
    self.shards = files.expand_paths(path, suffixes=(".tar",), field=field)
    self.image_exts = tuple(e.lower().lstrip(".") for e in image_exts)
    self.caption_exts = tuple(e.lower().lstrip(".") for e in caption_exts)
    self.synthetic_exts = tuple(e.lower().lstrip(".") for e in synthetic_caption_exts)
    parts = index_shards(self.shards, self.image_exts, self.caption_exts, index_processes,
                         self.synthetic_exts)
    self.index = np.concatenate(parts)
    if not len(self.index):
      raise ShardError(f"{field}: the {len(self.shards)} tar shard(s) hold no members "
                       f"(first: {self.shards[0]}).")
    if not np.any(self.index["kind"] == 0):
      image, caption = '/'.join(self.image_exts), '/'.join(self.caption_exts)
      if self.synthetic_exts:
        members = (f"an image ({image}), a caption ({caption}) and a synthetic caption "
                   f"({'/'.join(self.synthetic_exts)}) member")
      else:
        members = f"both an image ({image}) and a caption ({caption}) member"
      raise ShardError(
          f"{field}: none of the {len(self.index)} keys in {len(self.shards)} tar shard(s) has "
          f"{members} (first shard: {self.shards[0]}). Set the extensions with "
          f"{field.rsplit('.', 1)[0]}.image_key / .caption_key"
          f"{' / .synthetic_caption_key' if self.synthetic_exts else ''}.")
    self._files = _FileCache()

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int):
    row = self.index[int(i)]
    shard = self.shards[row["shard"]]
    where = f"{shard}:{row['key'].decode('utf-8', 'replace')}"
    if row["kind"]:
      return skipped(SKIP_KINDS[row["kind"] - 1], where)
    try:
      image = self._files.read(shard, int(row["image_offset"]), int(row["image_size"]))
      caption = self._files.read(shard, int(row["caption_offset"]), int(row["caption_size"]))
      synthetic = (self._files.read(shard, int(row["synthetic_offset"]),
                                    int(row["synthetic_size"])) if self.synthetic_exts else b"")
    except OSError:
      return skipped("broken_member", where)
    if (len(image) != row["image_size"] or len(caption) != row["caption_size"]
        or len(synthetic) != (row["synthetic_size"] if self.synthetic_exts else 0)):
      return skipped("broken_member", where)  # the file changed since it was indexed
    out = {"image_bytes": image, "caption": caption.decode("utf-8", "replace"), "where": where}
    if self.synthetic_exts:
      out["synthetic_caption"] = synthetic.decode("utf-8", "replace")
    return out

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_files"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._files = _FileCache()

  def __repr__(self):
    return (f"WebDatasetSource({len(self.shards)} shards, {len(self)} examples, "
            f"first {self.shards[0]})")
