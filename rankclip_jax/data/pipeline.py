"""grain input pipelines: source -> decode/augment -> tokenize -> batch.

Training: an infinite, per-epoch reshuffled, per-process sharded, checkpointable grain iterator
yielding this process's slice of the global batch as numpy arrays. Evaluation: finite batches in
order, the last one padded, with a `mask` marking real examples.

Sources (config `kind`, data/sources.py): `synthetic` (the embedded scenes, the default),
`webdataset` (tar shards as img2dataset writes them), `csv` (image path + caption columns). Real
images are decoded and cropped in the pipeline: a random resized crop for training, resize + centre
crop for evaluation. Image pairs (PC-CLIP) have their own recipe in data/pairs.py.

Bad examples never stop a run: a source or the decode step turns them into skip markers
(rankclip_jax.data.records); `DropSkipped` removes them and attaches to the next good example how
many of each kind it dropped, so the counts ride in the batch (`skipped`: int32 [B, kinds]) through
worker processes and hosts to the train step, which keeps their running total in the checkpoint.

The pipeline knows nothing about models: it returns {"image": float32 [B, H, W, 3] normalised with
the CLIP mean/std, "text": int32 [B, context_length], "skipped", plus any integer labels}; and
"synthetic_text" (tokenized like "text") when the source gives a synthetic caption of each image
(asked for by the losses that read one: ALIP). An empty synthetic caption skips its example, counted
as an empty caption.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
from typing import Any, Iterator, Mapping

import grain
import numpy as np
from absl import logging
from PIL import Image

from rankclip_jax.data import images
from rankclip_jax.data.records import SKIP_INDEX, SKIP_KINDS, skip_kind, skipped
from rankclip_jax.data.tokenizer import ClipTokenizer

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)

# A run whose data is this many bad examples in a row is stopped: it would never make a batch.
MAX_CONSECUTIVE_SKIPS = 10_000


def normalize_image(image_uint8: np.ndarray) -> np.ndarray:
  return (image_uint8.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


@dataclasses.dataclass
class DecodeImage(grain.transforms.RandomMap):
  """Raw record -> {"image": uint8 [S, S, 3], "caption": str, ...}, or a skip marker.

  Accepts encoded bytes (`image_bytes`), a PIL image, or a uint8 array (already S x S: passed
  through). train: random resized crop of `crop_scale` of the area; else resize + centre crop.
  """

  image_size: int
  train: bool = True
  crop_scale: tuple[float, float] = (0.9, 1.0)

  def random_map(self, record: Mapping[str, Any], rng: np.random.Generator):
    if skip_kind(record):
      return record
    where = record.get("where", "?")
    out = {k: v for k, v in record.items() if k not in ("image_bytes", "where")}
    if "caption" in record:
      caption = record["caption"].strip()
      if not caption:
        return skipped("empty_caption", where)
      out["caption"] = caption
    if "synthetic_caption" in record:  # sources give it only when asked (ALIP)
      caption = (record["synthetic_caption"] or "").strip()
      if not caption:
        return skipped("empty_caption", f"{where} (synthetic caption)")
      out["synthetic_caption"] = caption
    image = record["image_bytes"] if "image_bytes" in record else record["image"]
    size = self.image_size
    if isinstance(image, np.ndarray) and image.shape == (size, size, 3) and image.dtype == np.uint8:
      out["image"] = image
      return out
    try:
      if isinstance(image, (bytes, bytearray)):
        image = images.decode_rgb(bytes(image), min_size=size)
      elif isinstance(image, np.ndarray):
        image = images.to_rgb(Image.fromarray(image))
      else:
        image = images.to_rgb(image)
    except images.BadImage:
      return skipped("unreadable_image", where)
    out["image"] = (images.random_resized_crop(image, size, rng, scale=tuple(self.crop_scale))
                    if self.train else images.center_crop(image, size))
    return out


@dataclasses.dataclass
class Preprocess(grain.transforms.Map):
  """Decoded example -> model inputs. Picklable, so it runs in grain worker processes too."""

  tokenizer: ClipTokenizer
  label_keys: tuple[str, ...] = ()

  def map(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if skip_kind(example):
      return example
    out = {"image": normalize_image(np.asarray(example["image"]))}
    if "caption" in example:
      out["text"] = self.tokenizer(example["caption"])[0]
    if "synthetic_caption" in example:
      out["synthetic_text"] = self.tokenizer(example["synthetic_caption"])[0]
    for key in self.label_keys:
      out[key] = np.int32(example[key])
    return out


class _DropSkippedIterator(grain.DatasetIterator):
  _logged = 0

  def __next__(self):
    counts = np.zeros(len(SKIP_KINDS), np.int32)
    while True:
      record = next(self._parent)
      kind = skip_kind(record)
      if kind is None:
        break
      counts[SKIP_INDEX[kind]] += 1
      if _DropSkippedIterator._logged < 20:
        _DropSkippedIterator._logged += 1
        logging.warning("Skipped an example (%s): %s", kind, record.get("where"))
      if counts.sum() >= MAX_CONSECUTIVE_SKIPS:
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_SKIPS} examples in a row could not be used (last: {kind}, "
            f"{record.get('where')}; counts {dict(zip(SKIP_KINDS, counts.tolist()))}). The data "
            "source is probably misconfigured (wrong paths, columns or member extensions).")
    return dict(record, skipped=counts)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class DropSkipped(grain.IterDataset):
  """Drops skip markers; each kept example carries `skipped`: int32 [len(SKIP_KINDS)], how many
  of each kind were dropped just before it (so batches sum to exact counts, whatever the workers)."""

  def __iter__(self):
    return _DropSkippedIterator(self._parent.__iter__())


def train_iterator(source, *, per_process_batch_size: int, seed: int, tokenizer: ClipTokenizer,
                   image_size: int, crop_scale: tuple[float, float] = (0.9, 1.0),
                   process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                   num_threads: int = 4, prefetch: int = 8) -> grain.DatasetIterator:
  """Infinite iterator over this process's batches; `get_state`/`set_state` give its position.

  Reshuffled every epoch from `seed`; process p reads examples p, p + P, p + 2P, ... of each epoch's
  order, so the processes together see every example once per epoch. Random crops are drawn from
  (seed, position), so a resumed run sees exactly the pixels the uninterrupted one would have.
  """
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)
        # Before the per-process slice: an example's random crop depends on its position in the
        # global order only, so 1 or N processes train on the same pixels.
        .random_map(DecodeImage(image_size, train=True, crop_scale=tuple(crop_scale)),
                    seed=seed + 1)
        [process_index::process_count]
        .map(Preprocess(tokenizer)))
  return batched_iterator(ds, per_process_batch_size=per_process_batch_size,
                          worker_count=worker_count, num_threads=num_threads, prefetch=prefetch)


def batched_iterator(ds: grain.MapDataset, *, per_process_batch_size: int, worker_count: int = 0,
                     num_threads: int = 4, prefetch: int = 8) -> grain.DatasetIterator:
  """This process's examples -> an iterator of batches: skip markers dropped and counted
  (DropSkipped), read in threads, optionally in worker processes; checkpointable."""
  ids = DropSkipped(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                         prefetch_buffer_size=prefetch)))
  ids = ids.batch(per_process_batch_size, drop_remainder=True)
  if worker_count > 0:
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(ids)


def eval_batches(source, *, batch_size: int, tokenizer: ClipTokenizer, image_size: int,
                 label_keys: tuple[str, ...] = (), captions: bool = False,
                 skip_counter: dict[str, int] | None = None, num_threads: int = 8
                 ) -> Iterator[dict[str, np.ndarray]]:
  """All usable examples of `source` in order, in batches of `batch_size`; the last is padded.

  Images are decoded and centre-cropped to `image_size` (arrays already that size pass through).
  Each batch has `mask` (True for real examples). With captions=True the raw caption strings come
  along as a Python list under `caption` (or, for sources with several per image, a list of lists
  under `captions`). Examples that cannot be used are left out and counted per kind into
  `skip_counter`. Reading and decoding run in `num_threads` threads.
  """
  decode = DecodeImage(image_size, train=False)
  pre = Preprocess(tokenizer, label_keys)

  def load(i):
    try:
      record = decode.random_map(source[i], None)
    except images.BadImage as e:  # sources that decode themselves (TFDS)
      record = skipped("unreadable_image", f"example {i}: {e}")
    return record if skip_kind(record) else (record, pre.map(record))

  def in_order():
    # Reading and decoding in threads (Pillow releases the GIL), results kept in source order.
    n, chunk = len(source), max(batch_size, 64)
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      for start in range(0, n, chunk):
        yield from pool.map(load, range(start, min(n, start + chunk)))

  raw, items = [], []
  for loaded in itertools.chain(in_order(), [None]):
    if loaded is not None:
      kind = skip_kind(loaded) if isinstance(loaded, dict) else None
      if kind is not None:
        if skip_counter is not None:
          skip_counter[kind] = skip_counter.get(kind, 0) + 1
        continue
      raw.append(loaded[0])
      items.append(loaded[1])
    if items and (len(items) == batch_size or loaded is None):
      real = len(items)
      items += [items[-1]] * (batch_size - real)
      batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
      batch["mask"] = np.arange(batch_size) < real
      if captions:  # one caption per example, or several (retrieval sets: `captions`)
        key = "captions" if "captions" in raw[0] else "caption"
        batch[key] = [r[key] for r in raw]
      yield batch
      raw, items = [], []


def remap_data_position(states: list[dict], process_index: int, process_count: int) -> dict:
  """The input position of process `process_index` of `process_count` when the checkpoint's
  positions were saved by len(states) processes.

  Process p of P reads examples p, p + P, p + 2P, ... of the global order (data/pipeline.py), and
  its state {"next_index": n} counts the examples of its slice it has taken (skipped ones
  included). Every global example before G = min_p(n_p P + p) has been read; the new processes
  continue from G: process q of Q at ceil((G - q) / Q). Without skipped examples all n_p are equal
  and this is exact; otherwise the few examples past G that some processes had read come again.
  """
  for state in states:
    if set(state) != {"next_index"}:
      raise ValueError(
          f"The saved input position {state} is not a plain example index (it was saved with "
          "grain worker processes, config.data.worker_count > 0): it cannot be carried to a "
          f"different process count ({len(states)} -> {process_count}). Resume with "
          f"{len(states)} processes.")
  old = len(states)
  first_unread = min(int(s["next_index"]) * old + p for p, s in enumerate(states))
  return {"next_index": max(0, -(-(first_unread - process_index) // process_count))}
