"""grain input pipelines: source -> decode/augment -> tokenize -> batch.

Training: an infinite, per-epoch reshuffled, per-process sharded, checkpointable grain iterator
yielding this process's slice of the global batch as numpy arrays. Evaluation: finite batches in
order, the last one padded, with a `mask` marking real examples.

The pipeline knows nothing about models: it returns {"image": float32 [B, H, W, 3] normalised with
the CLIP mean/std, "text": int32 [B, context_length], plus any integer labels of the source}.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import grain
import numpy as np

from rankclip_jax.data import synthetic
from rankclip_jax.data.tokenizer import ClipTokenizer

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)

SOURCE_KINDS = ("synthetic",)


def normalize_image(image_uint8: np.ndarray) -> np.ndarray:
  return (image_uint8.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def make_source(source_config, *, image_size: int, seed: int, split: str | None = None):
  """A random-access source from a data config (`kind` plus the kind's own fields)."""
  kind = source_config.kind
  if kind == "synthetic":
    return synthetic.SyntheticScenes(
        num_records=int(source_config.num_records), seed=seed,
        split=split or source_config.split, image_size=image_size,
        min_objects=int(source_config.min_objects), max_objects=int(source_config.max_objects),
        caption_mode=source_config.get("caption_mode", "random"),
        monochrome_fraction=float(source_config.get("monochrome_fraction", 0.0)))
  raise ValueError(
      f"Unknown data source kind {kind!r}; choose one of {SOURCE_KINDS}.")


@dataclasses.dataclass
class Preprocess(grain.transforms.Map):
  """Raw example -> model inputs. Picklable, so it runs in grain worker processes too."""

  tokenizer: ClipTokenizer
  label_keys: tuple[str, ...] = ()

  def map(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {
        "image": normalize_image(np.asarray(example["image"])),
        "text": self.tokenizer(example["caption"])[0],
    }
    for key in self.label_keys:
      out[key] = np.int32(example[key])
    return out


def train_iterator(source, *, per_process_batch_size: int, seed: int, tokenizer: ClipTokenizer,
                   process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                   num_threads: int = 4, prefetch: int = 8) -> grain.DatasetIterator:
  """Infinite iterator over this process's batches; `get_state`/`set_state` give its position.

  Reshuffled every epoch from `seed`; process p reads examples p, p + P, p + 2P, ... of each epoch's
  order, so the processes together see every example once per epoch.
  """
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat(None)
        [process_index::process_count]
        .map(Preprocess(tokenizer))
        .batch(per_process_batch_size, drop_remainder=True))
  ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                             prefetch_buffer_size=prefetch))
  if worker_count > 0:
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(ids)


def eval_batches(source, *, batch_size: int, tokenizer: ClipTokenizer,
                 label_keys: tuple[str, ...] = (), captions: bool = False
                 ) -> Iterator[dict[str, np.ndarray]]:
  """All examples of `source` in order, in batches of `batch_size`; the last batch is padded.

  Each batch has `mask` (True for real examples). With captions=True the raw caption strings come
  along as a Python list under `caption` (for retrieval relevance by identical caption).
  """
  n = len(source)
  pre = Preprocess(tokenizer, label_keys)
  for start in range(0, n, batch_size):
    raw = [source[i] for i in range(start, min(n, start + batch_size))]
    items = [pre.map(r) for r in raw]
    real = len(items)
    items += [items[-1]] * (batch_size - real)
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    batch["mask"] = np.arange(batch_size) < real
    if captions:
      batch["caption"] = [r["caption"] for r in raw]
    yield batch
