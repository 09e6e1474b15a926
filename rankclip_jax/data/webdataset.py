"""Webdataset tar shards (img2dataset's output for CC3M/CC12M/LAION) as a random-access source.

A shard is a plain tar file whose members are grouped into examples by key: `000000123.jpg`,
`000000123.txt`, `000000123.json` are one example with key `000000123` (webdataset's rule: the key
is the member path up to the first dot of its file name, the rest is the extension).

At start-up every shard's headers are read (not its data: one 512-byte read per member, ~10 us
each in Python, spread over a process per core when there are many shards) into a compact index of
(shard, offset, size) per image and caption. Examples are then read by offset with `os.pread`, so
grain can shuffle globally, shard over hosts and resume at an exact position like any random-access
source.

Problems found while indexing stay in the index as skip entries, so that reading the dataset counts
them like any other bad example (`data/skipped/<kind>`, and the train state):
- a key with an image but no caption (or the reverse): `incomplete_example`;
- an image member larger than MAX_IMAGE_BYTES (32 MiB): `unreadable_image`, never read. A caption
  member is read up to MAX_CAPTION_BYTES (64 KiB); the rest of it is never read.
- a damaged shard (data/tar_headers.py parses headers with bounds, and names the damage): its
  members before the damage are used, the rest of it is one `broken_member` per epoch, and the
  shard is named once in the log with the damage's kind and byte offset. The kinds: a shard that
  cannot be opened or read; one that is not a tar at all (empty, shorter than a header, its first
  header garbled); a header that is corrupt (checksum, a size that is negative or not a number, a
  malformed pax record); data cut short, or a file that ends without an end-of-archive marker
  (cut at a header boundary). A summary by kind follows at start-up and in the source's repr;
  these shard counts are not part of the train state (its skip counts keep their shape).
- A shard damaged before its first member is unreadable. When more than
  `max_unreadable_shard_fraction` of the shards are (config.data.train, default 0.1: the share is
  unreadable shards / all shards), or all of them, the source raises ShardError naming the first:
  a wrong path or a corpus that is mostly broken (an interrupted download, error pages saved as
  .tar) stops the run at start-up with one `Error:` line, while the few bad shards of a healthy
  web corpus (well under 1%: one in 40,000 is typical) are skipped. A partly damaged shard does not
  count towards the share: most of it is used.

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
from typing import NamedTuple, Sequence

import numpy as np
from absl import logging

from rankclip_jax.data import files, images, tar_headers
from rankclip_jax.data.records import SKIP_INDEX, SKIP_KINDS, skipped
from rankclip_jax.errors import UserError

DEFAULT_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
DEFAULT_CAPTION_EXTS = ("txt",)

# One row per example. kind: 0 for a good example, else 1 + index into SKIP_KINDS.
INDEX_DTYPE = np.dtype([("shard", np.int32), ("kind", np.int8), ("image_offset", np.int64),
                        ("image_size", np.int64), ("caption_offset", np.int64),
                        ("caption_size", np.int32), ("synthetic_offset", np.int64),
                        ("synthetic_size", np.int32), ("key", "S48")])

# Caps on member sizes, applied at indexing, so that a larger member is never read. An image member
# above MAX_IMAGE_BYTES is skipped (unreadable_image): web images as img2dataset stores them take
# tens to hundreds of KB and camera originals a few MB, while every decode thread of every worker
# process holds one whole image member in memory at once; the same cap as an image file read from
# a path (images.MAX_FILE_BYTES). A caption member is read up to
# MAX_CAPTION_BYTES and the rest left unread: captions are cut to config.context_length tokens
# (77: a few hundred characters) anyway, and the cap keeps INDEX_DTYPE's int32 sizes in range.
MAX_IMAGE_BYTES = images.MAX_FILE_BYTES
MAX_CAPTION_BYTES = 64 << 10
# The share of shards that may be wholly unreadable before a run stops at start-up: see the module
# docstring. config.data.train.max_unreadable_shard_fraction.
MAX_UNREADABLE_SHARD_FRACTION = 0.1


class ShardError(UserError, OSError):
  """The tar shards cannot be used: too many are unreadable, or none holds an example."""


def scan_tar(path: str) -> tuple[list[tuple[str, int, int]], tar_headers.Damage | None]:
  """Regular-file members of a tar as (name, data offset, size), and where it is damaged, if it is
  (members before that point are kept); never raises for a bad or missing file."""
  scan = tar_headers.scan_file(path)
  return scan.members, scan.damage


def split_key(name: str) -> tuple[str, str]:
  """'dir/000123.seg.jpg' -> ('dir/000123', 'seg.jpg'): key up to the first dot of the basename."""
  slash = name.rfind("/") + 1
  dot = name.find(".", slash)
  if dot < 0:
    return name, ""
  return name[:dot], name[dot + 1:].lower()


def example_rows(shard_id: int, members: Sequence[tuple[str, int, int]],
                 image_exts: Sequence[str], caption_exts: Sequence[str],
                 synthetic_exts: Sequence[str] = (), max_image_bytes: int = MAX_IMAGE_BYTES
                 ) -> list[tuple]:
  """Index rows (INDEX_DTYPE) of a shard's members, one per key in order of first appearance."""
  by_key: dict[str, dict[str, tuple[int, int]]] = collections.OrderedDict()
  for name, offset, size in members:
    key, ext = split_key(name)
    if key.startswith("__") or not ext:  # webdataset's metadata members, extension-less files
      continue
    by_key.setdefault(key, {})[ext] = (offset, size)
  rows = []
  for key, exts in by_key.items():
    image = next((exts[e] for e in image_exts if e in exts), None)
    caption = next((exts[e] for e in caption_exts if e in exts), None)
    synthetic = next((exts[e] for e in synthetic_exts if e in exts), (0, 0))
    key_bytes = key.encode("utf-8")[-48:]
    if image is None or caption is None:
      kind = "incomplete_example"
    elif image[1] > max_image_bytes:  # never read: see MAX_IMAGE_BYTES
      kind = "unreadable_image"
    elif synthetic_exts and not synthetic[1]:  # no synthetic caption, or an empty one
      kind = "empty_caption"
    else:
      rows.append((shard_id, 0, image[0], image[1], caption[0],
                   min(caption[1], MAX_CAPTION_BYTES), synthetic[0],
                   min(synthetic[1], MAX_CAPTION_BYTES), key_bytes))
      continue
    rows.append((shard_id, 1 + SKIP_INDEX[kind], 0, 0, 0, 0, 0, 0, key_bytes))
  return rows


class ShardIndex(NamedTuple):
  rows: np.ndarray  # INDEX_DTYPE, the damage (if any) as a last broken_member row
  damage: tar_headers.Damage | None
  members: int  # regular file members read before the damage


def index_shard(shard_id: int, path: str, image_exts: Sequence[str],
                caption_exts: Sequence[str], synthetic_exts: Sequence[str] = (),
                max_image_bytes: int = MAX_IMAGE_BYTES) -> ShardIndex:
  members, damage = scan_tar(path)
  rows = example_rows(shard_id, members, image_exts, caption_exts, synthetic_exts,
                      max_image_bytes)
  if damage is not None:  # one skip per epoch for the rest of the shard, whatever it held
    rows.append((shard_id, 1 + SKIP_INDEX["broken_member"], 0, 0, 0, 0, 0, 0,
                 damage.short.encode("utf-8")[:48]))
  return ShardIndex(np.array(rows, INDEX_DTYPE), damage, len(members))


def _index_shard(args) -> ShardIndex:
  return index_shard(*args)


def index_shards(shards: Sequence[str], image_exts: Sequence[str], caption_exts: Sequence[str],
                 processes: int | None = None, synthetic_exts: Sequence[str] = (),
                 max_image_bytes: int = MAX_IMAGE_BYTES) -> list[ShardIndex]:
  """index_shard over many shards: in a pool of processes when there are many (header parsing is
  Python, so threads would share one core), else in this process."""
  jobs = [(i, path, tuple(image_exts), tuple(caption_exts), tuple(synthetic_exts),
           max_image_bytes) for i, path in enumerate(shards)]
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


def check_damage(shards: Sequence[str], parts: Sequence[ShardIndex], *, field: str,
                 max_unreadable_fraction: float) -> dict[str, int]:
  """Names each damaged shard once in the log, with a summary; returns {damage kind: shards}.

  Raises ShardError when more than `max_unreadable_fraction` of the shards are unreadable (damaged
  before their first member: nothing of them can be used).
  """
  counts = collections.Counter()
  unreadable = []
  for path, part in zip(shards, parts):
    if part.damage is None:
      continue
    counts[part.damage.kind] += 1
    if part.members:
      logging.warning("Tar shard %s; its %d members before that point are used, the rest of it "
                      "is skipped.", part.damage.describe(path), part.members)
    else:
      unreadable.append((path, part.damage))
      logging.warning("Tar shard %s; it is skipped.", part.damage.describe(path))
  if counts:
    logging.warning(
        "Tar shards: %d of %d damaged (%s), %d of them unreadable; each damaged shard counts as "
        "one broken_member skip per epoch.", sum(counts.values()), len(shards),
        ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), len(unreadable))
  if unreadable and (len(unreadable) > max_unreadable_fraction * len(shards)
                     or len(unreadable) == len(shards)):
    knob = f"{field.rsplit('.', 1)[0]}." if "." in field else ""
    knob += "max_unreadable_shard_fraction"
    path, damage = unreadable[0]
    some = len(unreadable) < len(shards)
    share = (f"{len(unreadable) / len(shards):.1%}, more than {knob}={max_unreadable_fraction}"
             if some else "none can")
    raise ShardError(
        f"{field}: {len(unreadable)} of {len(shards)} tar shard(s) cannot be read at all "
        f"({share}); first: {damage.describe(path)}. Check the path and the files"
        f"{f', or raise {knob} to train on the rest' if some else ''}.")
  return dict(counts)


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
               index_processes: int | None = None,
               max_unreadable_shard_fraction: float = MAX_UNREADABLE_SHARD_FRACTION,
               max_image_bytes: int = MAX_IMAGE_BYTES):
    self.shards = files.expand_paths(path, suffixes=(".tar",), field=field)
    self.image_exts = tuple(e.lower().lstrip(".") for e in image_exts)
    self.caption_exts = tuple(e.lower().lstrip(".") for e in caption_exts)
    self.synthetic_exts = tuple(e.lower().lstrip(".") for e in synthetic_caption_exts)
    parts = index_shards(self.shards, self.image_exts, self.caption_exts, index_processes,
                         self.synthetic_exts, max_image_bytes)
    # {damage kind: shards}: logged at start-up, shown in repr; not part of the train state.
    self.shard_damage = check_damage(self.shards, parts, field=field,
                                     max_unreadable_fraction=max_unreadable_shard_fraction)
    self.index = np.concatenate([p.rows for p in parts])
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
    damaged = (f" ({sum(self.shard_damage.values())} damaged: "
               f"{', '.join(f'{k} {v}' for k, v in sorted(self.shard_damage.items()))})"
               if self.shard_damage else "")
    return (f"WebDatasetSource({len(self.shards)} shards{damaged}, {len(self)} examples, "
            f"first {self.shards[0]})")
