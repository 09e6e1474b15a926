"""Webdataset tar shards read as streams (config.data.train.kind = "webdataset_stream"): corpora of
any size, started in the time it takes to list their shards.

The random-access kind (`webdataset`, data/webdataset.py) reads every member's header at start-up
and keeps an index row per example in every process: fine for CC3M, ~1,000 CPU-seconds and ~37 GB
per process at 400M pairs. This kind reads only the shard list at start-up; each shard is read from
start to end when its turn comes, its headers parsed by the same bounded parser
(data/tar_headers.py), its examples grouped by key as webdataset does.

Order. Each source's shards are permuted anew every epoch, a function of (seed, source, epoch).
Process p of P reads shards p, p + P, ... of that order (hosts read disjoint shares); its grain
worker processes split its shards again (worker w of W takes its tasks w, w + W, ...). Each reader
keeps `cycle_length` shards open and takes one example from each in turn, and a shuffle window of
`shuffle_window` examples is drawn in random order (both as grain's InterleaveIterDataset and
WindowShuffleIterDataset do, but in the reader's thread and with a smaller position: see
_Interleave), so that a batch holds examples of many shards. With fewer shards
than processes, the processes that share a shard each take every k-th example of it (k readers), so
that every example is still read once per epoch and no process is left without data (start-up says
so). An example's random crop is drawn from (seed, source, shard, the example's ordinal in its
shard, epoch): the same pixels whichever process or worker reads it.

Several sources (`path` 'a::b', `weights` '1::3'): each repeats on its own epochs, and grain's
MixedIterDataset interleaves them in proportion to the weights (deterministically, not by chance);
each example carries its source's index, and the training loop logs the share of each source
(`data/source_share/<name>`).

Position. A checkpoint holds, per process (and per worker), the interleave's position (which task
is next, and the byte offset and example ordinal of each open shard) and where the current shuffle
window began: a few KB, the same at 100 shards as at 100,000, since the shard order is recomputed
from (seed, epoch). A resumed run re-reads the current window from its start and continues with
exactly the examples and batches the uninterrupted run would have had. Resumed on another number
of processes, each source restarts at the beginning of the earliest epoch any process was still in,
and the log says so: the shards of that epoch already read are read again; nothing is skipped.

Bad data. A shard that cannot be opened, is not a tar, has a corrupt header or is cut short is used
up to the damage, then left: one skip of kind `shard_<damage kind>` (data/records.py) per damaged
shard per epoch, counted in the train state like every skipped example (exact across hosts,
workers and resumes, since the skip is part of the stream), and the shard is named once per process
in the log. Bad examples inside a shard are skipped and counted as in the random-access kind.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np
from absl import logging

from rankclip_jax.data import files, pipeline, tar_headers
from rankclip_jax.data.records import skip_kind, skipped
from rankclip_jax.data.webdataset import MAX_CAPTION_BYTES, MAX_IMAGE_BYTES, split_key
from rankclip_jax.errors import UserError

SOURCE_SEPARATOR = "::"
# Defaults for 224-px training: a batch comes from one reader (one worker process), which cycles
# through 16 open shards; a window of 1,024 examples holds ~64 of each, so a batch of 256 drawn from
# it holds examples of all 16. The window holds encoded images (CC3M's: ~20-60 KB), ~50 MB a reader.
DEFAULT_CYCLE_LENGTH = 16
DEFAULT_SHUFFLE_WINDOW = 1024
_logged_damage: set[str] = set()  # shards named in this process's log


class StreamConfigError(UserError, ValueError):
  """The streaming source's fields do not fit together; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Corpus:
  """One source of a streaming mix: its name (in the logged shares), shards and weight."""
  name: str
  shards: tuple[str, ...]
  weight: float


@dataclasses.dataclass(frozen=True)
class Task:
  """One shard of one epoch, for one reader: every example whose ordinal in the shard is
  `part` modulo `parts` (parts > 1 only with fewer shards than processes)."""
  source: int
  shard: int
  epoch: int
  part: int = 0
  parts: int = 1


def _split_list(text: str) -> list[str]:
  return [p.strip() for p in str(text).split(SOURCE_SEPARATOR)] if str(text).strip() else []


def _is_url(path: str) -> bool:
  return "://" in path


def expand_shards(pattern: str, field: str) -> list[str]:
  """The shards one source's pattern names: local paths as data/files.py expands them; a URL
  (gs://bucket/cc12m/{00000..01242}.tar) through fsspec (gcsfs for gs://): brace ranges expanded
  and globs listed by the filesystem."""
  if not _is_url(pattern):
    return files.expand_paths(pattern, suffixes=(".tar",), field=field)
  import fsspec  # pylint: disable=import-outside-toplevel
  out = []
  for entry in files._split_top_level(pattern):  # pylint: disable=protected-access
    for p in files.expand_braces(entry):
      fs, _, _ = fsspec.get_fs_token_paths(p)
      protocol = p.split("://", 1)[0]
      found = fs.glob(p) if any(c in p for c in "*?[") else ([p] if fs.exists(p) else [])
      if not found:
        raise files.DataPathError(f"{field}={entry!r}: {p} matches no file. Check the path (and "
                                  "that the filesystem's credentials reach it).")
      out.extend(f if "://" in f else f"{protocol}://{f}" for f in sorted(found))
  return list(dict.fromkeys(out))


def _default_name(pattern: str, index: int) -> str:
  """A readable name for a source: the last folder of its pattern without wildcards."""
  head = re.split(r"[*?\[{]", pattern, maxsplit=1)[0]
  folder = os.path.basename(os.path.dirname(head.rstrip("/") + "/x")) or f"source{index}"
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", folder) or f"source{index}"


def parse_sources(path: str, weights: str = "", names: str = "", field: str = "config.data.train"
                  ) -> list[tuple[str, str, float]]:
  """(name, pattern, weight) of each source of `path` ('a::b'), its weights ('1::3'; '' = equal)
  and names ('' = the last folder of each pattern); nothing is read: config validation calls it
  before any work starts."""
  patterns = _split_list(path)
  if not patterns or not all(patterns):
    raise files.DataPathError(f"{field}.path={path!r}: give tar shards, e.g. --{field}.path="
                              "'/data/cc12m/{00000..01242}.tar' (several sources: 'a::b').")
  ws = _split_list(weights) or ["1"] * len(patterns)
  if len(ws) != len(patterns):
    raise StreamConfigError(f"{field}.weights={weights!r} gives {len(ws)} weight(s) for "
                            f"{len(patterns)} source(s) in {field}.path; give one per source, "
                            "separated by '::' as the paths are (e.g. '1::3').")
  try:
    wf = [float(w) for w in ws]
  except ValueError:
    raise StreamConfigError(f"{field}.weights={weights!r}: each weight must be a number, e.g. "
                            "'1::3'.") from None
  if not all(np.isfinite(w) and w > 0 for w in wf):
    raise StreamConfigError(f"{field}.weights={weights!r}: weights must be positive numbers.")
  ns = _split_list(names) or [_default_name(p, i) for i, p in enumerate(patterns)]
  if len(ns) != len(patterns):
    raise StreamConfigError(f"{field}.names={names!r} gives {len(ns)} name(s) for "
                            f"{len(patterns)} source(s); give one per source, separated by '::'.")
  if len(set(ns)) != len(ns):  # default names can clash (two folders called 'shards')
    if names:
      raise StreamConfigError(f"{field}.names={names!r}: each source needs its own name.")
    ns = [f"{n}{i}" if ns.count(n) > 1 else n for i, n in enumerate(ns)]
  for n in ns:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", n):
      raise StreamConfigError(f"{field}.names: {n!r} must be letters, digits and '_.-' (it names "
                              "a metric, data/source_share/<name>).")
  return list(zip(ns, patterns, wf))


def corpora(path: str, weights: str = "", names: str = "", field: str = "config.data.train"
            ) -> list[Corpus]:
  """The sources (parse_sources) with their shard lists expanded: listed, nothing read."""
  return [Corpus(n, tuple(expand_shards(p, f"{field}.path")), w)
          for n, p, w in parse_sources(path, weights, names, field)]


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, source: int, epoch: int, num_shards: int) -> np.ndarray:
  return np.random.default_rng([seed, source, epoch]).permutation(num_shards)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which shard tasks a process reads: task t of process p, for one source."""
  seed: int
  source: int
  num_shards: int
  process_index: int
  process_count: int

  @property
  def per_epoch(self) -> int:
    """Tasks of this process per epoch."""
    if self.num_shards >= self.process_count:
      return len(range(self.process_index, self.num_shards, self.process_count))
    return 1

  def task(self, t: int, first_epoch: int = 0) -> Task:
    n, p, big_p = self.num_shards, self.process_index, self.process_count
    epoch, i = divmod(t, self.per_epoch)
    epoch += first_epoch
    order = _epoch_order(self.seed, self.source, epoch, n)
    if n >= big_p:
      return Task(self.source, int(order[p + i * big_p]), epoch)
    # Fewer shards than processes: the processes p = s, s + n, ... share shard s of the order.
    return Task(self.source, int(order[p % n]), epoch, part=p // n,
                parts=len(range(p % n, big_p, n)))


def _open(path: str):
  """(binary file, size) of a shard: local regular files only (a FIFO would block a reader), or a
  URL through fsspec."""
  if _is_url(path):
    import fsspec  # pylint: disable=import-outside-toplevel
    f = fsspec.open(path, "rb").open()
    return f, getattr(f, "size", None)
  fd, size = tar_headers.open_regular(path)
  return os.fdopen(fd, "rb", buffering=1 << 20), size


@dataclasses.dataclass(frozen=True)
class Members:
  """Which members make an example, and the caps on what is read."""
  image_exts: tuple[str, ...]
  caption_exts: tuple[str, ...]
  synthetic_exts: tuple[str, ...] = ()
  max_image_bytes: int = MAX_IMAGE_BYTES


_TOO_BIG = object()


class _ShardIterator(grain.DatasetIterator):
  """The examples of one task, in shard order; state: the byte offset and ordinal of the next
  example (its first header), or the damage still to report, or done."""

  def __init__(self, path: str, task: Task, members: Members):
    super().__init__()
    self._path, self._task, self._members = path, task, members
    self._offset, self._ordinal, self._tail, self._done = 0, 0, "", False
    self._gen = None

  def get_state(self) -> dict:
    t = self._task
    return {"s": t.source, "e": t.epoch, "k": t.shard, "o": self._offset, "j": self._ordinal,
            "x": self._tail, "d": int(self._done)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._close()
    self._offset, self._ordinal = int(state["o"]), int(state["j"])
    self._tail, self._done = str(state["x"]), bool(state["d"])

  def __next__(self) -> dict:
    if self._gen is None:
      self._gen = self._records()
    return next(self._gen)

  def _close(self):
    if self._gen is not None:
      self._gen.close()
      self._gen = None

  def close(self):
    self._close()

  def _where(self, key: str) -> str:
    return f"{self._path}:{key}"

  def _damage_marker(self, kind: str):
    """The shard's damage, counted once per epoch (by the reader of part 0)."""
    self._tail, self._done = "", True
    if self._task.part == 0:
      t = self._task
      return dict(skipped(f"shard_{kind}", self._path), _id=(t.source, t.shard, -1, t.epoch),
                  source=t.source)
    return None

  def _records(self) -> Iterator[dict]:
    if self._done:
      return
    if self._tail:
      marker = self._damage_marker(self._tail)
      if marker is not None:
        yield marker
      return
    task, m = self._task, self._members
    wanted = set(m.image_exts) | set(m.caption_exts) | set(m.synthetic_exts)
    try:
      f, size = _open(self._path)
    except Exception as e:  # pylint: disable=broad-except
      damage = tar_headers.Damage("cannot_open", 0, f"{type(e).__name__}: {e}")
    else:
      damage = None
    if damage is None:
      def read_at(offset, n):
        f.seek(offset)
        return f.read(n)
      walk = tar_headers.TarWalk(read_at, size, start=self._offset)
      group = None  # [key, ordinal, mine, {ext: bytes or _TOO_BIG}]
      try:
        try:
          for member in walk:
            key, ext = split_key(member.name)
            if key.startswith("__") or not ext:
              continue
            if group is None or key != group[0]:
              if group is not None:
                record = self._example(group)
                # The position is the next example's first header: a walk started there yields
                # it and the rest (get_state may be called while `record` is out).
                self._offset, self._ordinal = walk.member_start, group[1] + 1
                if record is not None:
                  yield record
              ordinal = self._ordinal
              group = [key, ordinal, ordinal % task.parts == task.part, {}]
            if group[2] and ext in wanted and ext not in group[3]:
              if ext in m.image_exts and member.size > m.max_image_bytes:
                group[3][ext] = _TOO_BIG
              else:
                cap = member.size if ext in m.image_exts else min(member.size, MAX_CAPTION_BYTES)
                data = read_at(member.offset, cap)
                if len(data) < cap:  # cut short: the walk finds it at the next header
                  group[3][ext] = b"" if ext not in m.image_exts else data
                else:
                  group[3][ext] = data
          damage = walk.damage
        except OSError as e:
          damage = tar_headers.Damage("read_error", walk.member_start, f"{type(e).__name__}: {e}")
      finally:
        f.close()
      last = self._example(group) if group is not None else None
      if group is not None:
        self._ordinal = group[1] + 1
      self._tail = damage.kind if damage is not None else ""
      if damage is None:
        self._done = True
      if last is not None:
        yield last
    if damage is not None:
      if self._path not in _logged_damage:
        _logged_damage.add(self._path)
        logging.warning("Tar shard %s; the rest of it is skipped (counted as shard_%s each "
                        "epoch).", damage.describe(self._path), damage.kind)
      marker = self._damage_marker(damage.kind)
      if marker is not None:
        yield marker

  def _example(self, group) -> dict | None:
    key, ordinal, mine, parts = group
    if not mine:
      return None
    m, where = self._members, self._where(key)
    image = next((parts[e] for e in m.image_exts if e in parts), None)
    caption = next((parts[e] for e in m.caption_exts if e in parts), None)
    synthetic = next((parts[e] for e in m.synthetic_exts if e in parts), None)
    t = self._task
    ident = {"_id": (t.source, t.shard, ordinal, t.epoch), "source": t.source}
    if image is None or caption is None:
      return dict(skipped("incomplete_example", where), **ident)
    if image is _TOO_BIG:
      return dict(skipped("unreadable_image", where), **ident)
    out = {"image_bytes": image, "caption": caption.decode("utf-8", "replace"), "where": where,
           **ident}
    if m.synthetic_exts:
      if not synthetic:
        return dict(skipped("empty_caption", where), **ident)
      out["synthetic_caption"] = synthetic.decode("utf-8", "replace")
    return out


class _Tasks:
  """The shard tasks of one source for one process, every epoch from `first_epoch` on: task t is
  `start + t * step` of the process's sequence (a grain worker's slice of it: step W)."""

  def __init__(self, corpus: Corpus, plan: Plan, members: Members, first_epoch: int,
               start: int = 0, step: int = 1):
    self._corpus, self._plan, self._members, self._first = corpus, plan, members, first_epoch
    self._start, self._step = start, step

  def sliced(self, sl: slice) -> "_Tasks":
    start, step = sl.start or 0, sl.step or 1
    if start < 0 or step < 1 or sl.stop is not None:
      raise ValueError(f"the shard tasks are endless: slice {sl} takes start::step only")
    return _Tasks(self._corpus, self._plan, self._members, self._first,
                  self._start + start * self._step, self._step * step)

  def reader(self, t: int) -> _ShardIterator:
    task = self._plan.task(self._start + t * self._step, self._first)
    return _ShardIterator(self._corpus.shards[task.shard], task, self._members)


class _Interleave(grain.IterDataset):
  """The examples of `cycle_length` open shard tasks, one from each in turn; an exhausted task is
  replaced by the next. In the reader's own thread: grain's InterleaveIterDataset gives every open
  shard a prefetch thread, which costs more CPU per example (measured: 100 us) than reading it
  (45 us) on local disks. Grain worker processes slice the tasks (set_slice)."""

  def __init__(self, tasks: _Tasks, cycle_length: int):
    super().__init__([])
    self._tasks, self._cycle = tasks, cycle_length

  def set_slice(self, sl: slice, sequential_slice: bool = False):
    del sequential_slice
    self._tasks = self._tasks.sliced(sl)

  def __iter__(self):
    return _InterleaveIterator(self._tasks, self._cycle)


class _InterleaveIterator(grain.DatasetIterator):

  def __init__(self, tasks: _Tasks, cycle: int):
    super().__init__()
    self._tasks = tasks
    self._slots: list = [None] * cycle  # (task index, reader)
    self._next, self._turn = 0, 0

  def __next__(self):
    while True:
      slot = self._slots[self._turn]
      if slot is None:
        slot = self._slots[self._turn] = (self._next, self._tasks.reader(self._next))
        self._next += 1
      try:
        record = next(slot[1])
      except StopIteration:
        self._slots[self._turn] = None  # the next task takes its place, at its turn
        continue
      self._turn = (self._turn + 1) % len(self._slots)
      return record

  def get_state(self):
    return {"next": self._next, "turn": self._turn,
            "slots": [None if s is None else dict(s[1].get_state(), t=s[0]) for s in self._slots]}

  def set_state(self, state):
    self.close()
    self._next, self._turn = int(state["next"]), int(state["turn"])
    self._slots = []
    for st in state["slots"]:
      if st is None:
        self._slots.append(None)
        continue
      reader = self._tasks.reader(int(st["t"]))
      reader.set_state(st)
      self._slots.append((int(st["t"]), reader))

  def close(self):
    for s in self._slots:
      if s is not None:
        s[1].close()


class _WindowShuffle(grain.IterDataset):
  """Reads `window` records and gives them in a random order drawn from (seed, window index).
  State: the parent's state where the window began, the window's index and how many of it were
  given; a restore reads the window again and skips those."""

  def __init__(self, parent: grain.IterDataset, window: int, seed: int):
    super().__init__(parent)
    self._window, self._seed = window, seed

  def __iter__(self):
    return _WindowShuffleIterator(self._parent.__iter__(), self._window, self._seed)


class _WindowShuffleIterator(grain.DatasetIterator):

  def __init__(self, parent, window: int, seed: int):
    super().__init__(parent)
    self._size, self._seed = window, seed
    self._index, self._given, self._items = 0, 0, []
    self._start = self._parent.get_state()

  def _fill(self):
    items = [next(self._parent) for _ in range(self._size)]  # the parent is endless
    order = np.random.default_rng([self._seed, self._index]).permutation(len(items))
    self._items = [items[i] for i in order]

  def __next__(self):
    if self._given == len(self._items):
      if self._items:
        self._index += 1
      self._start = self._parent.get_state()
      self._fill()
      self._given = 0
    record = self._items[self._given]
    self._items[self._given] = None
    self._given += 1
    return record

  def get_state(self):
    return {"start": self._start, "window": self._index, "given": self._given,
            "filled": int(bool(self._items))}

  def set_state(self, state):
    self._start = state["start"]
    self._parent.set_state(self._start)
    self._index, self._given = int(state["window"]), int(state["given"])
    self._items = []
    if state["filled"]:
      self._fill()
      for i in range(self._given):
        self._items[i] = None


@dataclasses.dataclass
class _Decode(grain.transforms.Map):
  """DecodeImage with a generator drawn from the example's identity (seed, source, shard,
  ordinal, epoch): the same crop whichever reader decodes it."""
  decode: pipeline.DecodeImage
  seed: int

  def map(self, record):
    ident = record.get("_id")
    out = {k: v for k, v in record.items() if k != "_id"}
    if skip_kind(record):
      return out
    rng = np.random.default_rng([self.seed, *ident])
    return self.decode.random_map(out, rng)


def _shard_states(tree: Any) -> Iterator[Mapping[str, Any]]:
  """Every shard reader's state inside a saved pipeline state (any nesting)."""
  if isinstance(tree, Mapping):
    if {"s", "e", "k", "o", "j"} <= set(tree):
      yield tree
    for v in tree.values():
      yield from _shard_states(v)
  elif isinstance(tree, (list, tuple)):
    for v in tree:
      yield from _shard_states(v)


class StreamIterator(grain.DatasetIterator):
  """This process's training batches from streamed shards: get_state/set_state give its exact
  position; `remap_state` carries a position saved by another number of processes; `take_shares`
  gives each source's share of the examples since it was last called."""

  def __init__(self, build, num_sources: int, names: Sequence[str]):
    super().__init__()
    self._build = build  # first_epochs -> a grain iterator of batches
    self._names = list(names)
    self._first_epochs = [0] * num_sources
    self._it = build(self._first_epochs)
    self._counts = np.zeros(num_sources, np.int64)

  def __next__(self):
    batch = next(self._it)
    if "source" in batch:
      self._counts += np.bincount(np.asarray(batch["source"]), minlength=len(self._counts))
    return batch

  def take_shares(self) -> dict[str, float]:
    total = self._counts.sum()
    shares = {} if not total else {n: float(c / total) for n, c in zip(self._names, self._counts)}
    self._counts[:] = 0
    return shares

  def get_state(self):
    return {"first_epochs": list(self._first_epochs), "pipeline": self._it.get_state()}

  def set_state(self, state):
    if "restart_epochs" in state:  # from remap_state: a fresh pipeline at those epochs
      self._replace(list(state["restart_epochs"]))
      return
    if list(state["first_epochs"]) != self._first_epochs:
      self._replace(list(state["first_epochs"]))
    self._it.set_state(state["pipeline"])

  def _replace(self, first_epochs):
    if hasattr(self._it, "close"):
      self._it.close()
    self._first_epochs = first_epochs
    self._it = self._build(first_epochs)

  def remap_state(self, states: Sequence[Mapping[str, Any]], process_index: int,
                  process_count: int) -> dict:
    """The state to continue from when `states` were saved by len(states) processes: each source
    from the start of the earliest epoch any of them was still reading."""
    earliest = [None] * len(self._first_epochs)
    for st in states:
      for s in _shard_states(st):
        src, epoch = int(s["s"]), int(s["e"])
        if not s.get("d") and (earliest[src] is None or epoch < earliest[src]):
          earliest[src] = epoch
    if any(e is None for e in earliest):  # a source without an open shard: from its first epoch
      firsts = [min((st.get("first_epochs") or [0] * len(earliest))[i] for st in states)
                for i in range(len(earliest))]
      earliest = [f if e is None else e for e, f in zip(earliest, firsts)]
    logging.warning(
        "The data position was saved by %d processes and this run has %d: the shard order is "
        "per process, so each source restarts at the beginning of the earliest epoch a process "
        "was still reading (%s). The shards of that epoch read before the interruption are read "
        "again (seen twice); no example is skipped.", len(states), process_count,
        ", ".join(f"{n}: epoch {e}" for n, e in zip(self._names, earliest)))
    return {"restart_epochs": earliest}

  def close(self):
    if hasattr(self._it, "close"):
      self._it.close()

  def start_prefetch(self):
    if hasattr(self._it, "start_prefetch"):
      self._it.start_prefetch()


class StreamSource:
  """The shards of a streaming run (listed, never indexed) and how to read them. Picklable."""

  def __init__(self, path: str, *, weights: str = "", names: str = "",
               image_exts: Sequence[str], caption_exts: Sequence[str],
               synthetic_caption_exts: Sequence[str] = (), cycle_length: int =
               DEFAULT_CYCLE_LENGTH, shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
               field: str = "config.data.train", max_image_bytes: int = MAX_IMAGE_BYTES):
    self.corpora = corpora(path, weights, names, field)
    self.members = Members(tuple(e.lower().lstrip(".") for e in image_exts),
                           tuple(e.lower().lstrip(".") for e in caption_exts),
                           tuple(e.lower().lstrip(".") for e in synthetic_caption_exts),
                           int(max_image_bytes))
    if int(cycle_length) < 1 or int(shuffle_window) < 1:
      raise StreamConfigError(f"{field}.cycle_length={cycle_length} and {field}.shuffle_window="
                              f"{shuffle_window} must be at least 1.")
    self.cycle_length, self.shuffle_window, self.field = (int(cycle_length), int(shuffle_window),
                                                          field)

  def __repr__(self):
    parts = ", ".join(f"{c.name}: {len(c.shards)} shards x{c.weight:g}" for c in self.corpora)
    return f"StreamSource({parts}; cycle {self.cycle_length}, window {self.shuffle_window})"

  def describe_split(self, process_count: int, worker_count: int) -> list[str]:
    """Lines for the start-up log on how the shards are split between readers."""
    readers = process_count * max(worker_count, 1)
    out = []
    for c in self.corpora:
      n = len(c.shards)
      if n < process_count:
        out.append(f"{c.name}: {n} shard(s) for {process_count} processes: the processes sharing "
                   "a shard each read every k-th example of it (k sharing it), so each example is "
                   "still read once per epoch.")
      elif n < readers:
        out.append(f"{c.name}: {n} shard(s) for {readers} readers ({process_count} process(es) x "
                   f"{worker_count} workers): a worker reads a shard of a later epoch when its "
                   "process has fewer shards than workers; more shards than readers keep them all "
                   "in the same epoch.")
    return out


def record_stream(source: StreamSource, *, seed: int, process_index: int = 0,
                  process_count: int = 1, first_epochs: Sequence[int] | None = None
                  ) -> grain.IterDataset:
  """This process's raw records, before decoding: each source's shards interleaved, the sources
  mixed by weight, then drawn through the shuffle window. A record is an example ({"image_bytes",
  "caption", "where", "source", "_id": (source, shard, ordinal in the shard, epoch)}) or a skip
  marker (data/records.py) with the same identity; a damaged shard's marker has ordinal -1."""
  first_epochs = list(first_epochs or [0] * len(source.corpora))
  streams = []
  for i, c in enumerate(source.corpora):
    plan = Plan(seed, i, len(c.shards), process_index, process_count)
    streams.append(_Interleave(_Tasks(c, plan, source.members, first_epochs[i]),
                               source.cycle_length))
  ds = streams[0] if len(streams) == 1 else grain.IterDataset.mix(
      streams, [c.weight for c in source.corpora])
  return _WindowShuffle(ds, source.shuffle_window, seed)


def stream_iterator(source: StreamSource, *, per_process_batch_size: int, seed: int,
                    tokenizer, image_size: int, crop_scale=(0.9, 1.0), process_index: int = 0,
                    process_count: int = 1, worker_count: int = 0, num_threads: int = 4,
                    prefetch: int = 2) -> StreamIterator:
  """This process's infinite, checkpointable batches of streamed shards (see the module
  docstring). `num_threads` is unused: a stream is decoded in its reader's thread (use
  worker processes, config.data.worker_count, to decode in parallel). Without workers, a thread
  prepares the next `prefetch` whole batches while the step runs (a batch of 64 at 224 px is
  ~37 MiB)."""
  del num_threads
  for line in source.describe_split(process_count, worker_count):
    logging.warning("Training data: %s", line)
  decode = _Decode(pipeline.DecodeImage(image_size, train=True, crop_scale=tuple(crop_scale)),
                   seed + 1)
  pre = pipeline.Preprocess(tokenizer, label_keys=("source",))

  def build(first_epochs):
    ds = record_stream(source, seed=seed, process_index=process_index,
                       process_count=process_count, first_epochs=first_epochs)
    ds = pipeline.DropSkipped(ds.map(decode).map(pre))
    ds = ds.batch(per_process_batch_size, drop_remainder=True)
    if worker_count > 0:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    elif prefetch > 0:
      ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    return iter(ds)

  return StreamIterator(build, len(source.corpora), [c.name for c in source.corpora])


def state_size(it: StreamIterator) -> int:
  """Bytes of the iterator's saved position (JSON, as the checkpoint writes it)."""
  return len(json.dumps(it.get_state(), indent=4))
