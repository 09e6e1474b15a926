"""The data source kinds (config `kind` of config.data.train, or of a diagnostics evaluation's
`data`): the one registry of their names, what each builds, and how its training batches are made.

- synthetic: the embedded procedurally generated scenes (data/synthetic), the default;
- webdataset: tar shards as img2dataset writes them, indexed at start-up and read by random
  access (data/webdataset.py): global shuffling; for corpora up to tens of millions of pairs;
- webdataset_stream: the same shards read as streams, never indexed (data/tar_stream.py): starts
  in seconds at any size, mixes several sources by weight; for larger corpora;
- csv: CSV/TSV files of image path + caption rows (data/csv_files.py);
- synthetic_pairs, csv_pairs: image pairs with comparative captions, for PC-CLIP fine-tuning
  (data/pairs.py). Their batches hold "image_a" and "image_b" instead of "image".

A source config holds every kind's fields (configs: data_source), so the kind can be switched on
the command line; each kind's builder takes the fields it reads as keyword arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from rankclip_jax.data import pairs, pipeline, synthetic, tar_stream
from rankclip_jax.data.csv_files import CsvSource
from rankclip_jax.data.files import DataPathError, expand_paths
from rankclip_jax.data.webdataset import (DEFAULT_CAPTION_EXTS, DEFAULT_IMAGE_EXTS,
                                          MAX_UNREADABLE_SHARD_FRACTION, WebDatasetSource)
from rankclip_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class SourceKind:
  """build(**fields, image_size=, seed=, field=) -> a random-access source; iterator(source, ...)
  -> this process's infinite, checkpointable training batches of it."""

  build: Callable[..., Any]
  iterator: Callable[..., Any]
  # The image fields of a training batch: one image, or a pair (PC-CLIP).
  image_keys: tuple[str, ...] = ("image",)
  # Kinds that read files: an example of their `path`, for the error when it is empty.
  path_example: str = ""
  # Whether it can give a synthetic caption of each image (ALIP), asked by build(...,
  # synthetic_captions=True): the embedded scenes' captioner, or a csv column / webdataset member
  # named by `synthetic_caption_key`.
  synthetic_captions: bool = False

  @property
  def pairs(self) -> bool:
    return self.image_keys != ("image",)


SOURCES: Registry[SourceKind] = Registry("config.data.train.kind")


def _extensions(value) -> tuple[str, ...]:
  """'jpg;png' or ('jpg', 'png') -> ('jpg', 'png') (webdataset's way of naming alternatives)."""
  parts = value.split(";") if isinstance(value, str) else list(value)
  return tuple(p.strip().lower().lstrip(".") for p in parts if p.strip())


def _synthetic(*, num_records, split, min_objects, max_objects, image_size, seed,
               caption_mode="random", monochrome_fraction=0.0, synthetic_captions=False,
               captioner_error=synthetic.CAPTIONER_ERROR, **_):
  return synthetic.SyntheticScenes(
      num_records=int(num_records), seed=seed, split=split, image_size=image_size,
      min_objects=int(min_objects), max_objects=int(max_objects), caption_mode=caption_mode,
      monochrome_fraction=float(monochrome_fraction), synthetic_captions=bool(synthetic_captions),
      captioner_error=float(captioner_error))


def _webdataset(*, path, field, image_key="", caption_key="", synthetic_caption_key="",
                synthetic_captions=False,
                max_unreadable_shard_fraction=MAX_UNREADABLE_SHARD_FRACTION, **_):
  return WebDatasetSource(path, image_exts=_extensions(image_key or DEFAULT_IMAGE_EXTS),
                          caption_exts=_extensions(caption_key or DEFAULT_CAPTION_EXTS),
                          synthetic_caption_exts=(_extensions(synthetic_caption_key)
                                                  if synthetic_captions else ()),
                          field=f"{field}.path",
                          max_unreadable_shard_fraction=float(max_unreadable_shard_fraction))


def _webdataset_stream(*, path, field, image_key="", caption_key="", synthetic_caption_key="",
                       synthetic_captions=False, weights="", names="",
                       cycle_length=tar_stream.DEFAULT_CYCLE_LENGTH,
                       shuffle_window=tar_stream.DEFAULT_SHUFFLE_WINDOW, **_):
  return tar_stream.StreamSource(
      path, weights=weights, names=names,
      image_exts=_extensions(image_key or DEFAULT_IMAGE_EXTS),
      caption_exts=_extensions(caption_key or DEFAULT_CAPTION_EXTS),
      synthetic_caption_exts=(_extensions(synthetic_caption_key) if synthetic_captions else ()),
      cycle_length=cycle_length, shuffle_window=shuffle_window, field=field)


def _csv(*, path, field, image_key="", caption_key="", delimiter="", synthetic_caption_key="",
         synthetic_captions=False, **_):
  return CsvSource(path, image_key=image_key or "image", caption_key=caption_key or "caption",
                   synthetic_caption_key=synthetic_caption_key if synthetic_captions else "",
                   delimiter=delimiter, field=f"{field}.path")


def _synthetic_pairs(*, num_records, split, image_size, seed, **_):
  return pairs.SyntheticPairs(num_records=int(num_records), seed=seed, split=split,
                              image_size=image_size)


def _csv_pairs(*, path, field, image_key="", caption_key="", delimiter="", **_):
  paths = expand_paths(path, suffixes=(".csv", ".tsv"), field=f"{field}.path")
  if len(paths) != 1:
    raise DataPathError(f"{field}.path: csv_pairs reads one CSV/TSV file; got {len(paths)}.")
  a_key, _, b_key = (image_key or "image_a,image_b").partition(",")
  return pairs.CsvPairs(paths[0], image_a_key=a_key.strip(), image_b_key=b_key.strip() or "image_b",
                        caption_key=caption_key or "caption", delimiter=delimiter,
                        field=f"{field}.path")


SOURCES.add("synthetic", SourceKind(_synthetic, pipeline.train_iterator, synthetic_captions=True))
SOURCES.add("webdataset", SourceKind(_webdataset, pipeline.train_iterator,
                                     path_example="'/data/cc3m/{00000..00331}.tar'",
                                     synthetic_captions=True))
SOURCES.add("webdataset_stream", SourceKind(
    _webdataset_stream, tar_stream.stream_iterator,
    path_example="'/data/cc12m/{00000..01242}.tar::/data/laion/*.tar'", synthetic_captions=True))
SOURCES.add("csv", SourceKind(_csv, pipeline.train_iterator, path_example="/data/cc3m/train.csv",
                              synthetic_captions=True))
PAIR_KEYS = ("image_a", "image_b")
SOURCES.add("synthetic_pairs", SourceKind(_synthetic_pairs, pairs.pair_iterator, PAIR_KEYS))
SOURCES.add("csv_pairs", SourceKind(_csv_pairs, pairs.pair_iterator, PAIR_KEYS,
                                    path_example="/data/pairs.csv"))


def make_source(source_config, *, image_size: int, seed: int, split: str | None = None,
                field: str = "config.data.train"):
  """A random-access source from a data config (`kind` plus the kind's own fields); `field` names
  the config entry in error messages."""
  kind = SOURCES.get(source_config.kind, f"{field}.kind")
  fields = {k: v for k, v in source_config.items() if k != "kind"}
  if split:
    fields["split"] = split
  return kind.build(**fields, image_size=image_size, seed=seed, field=field)
