"""What a source hands to the pipeline: a raw example, or a marker saying why one was skipped.

Sources never raise for one bad example (a missing file, an unreadable image, an empty caption, a
broken tar member): they return `skipped(kind, where)`, the pipeline drops it and counts it per
kind, and the counts reach the metrics (`data/skipped/<kind>`) and the checkpoint. Whole files that
cannot be opened are errors at start-up instead, naming the file.
"""

from __future__ import annotations

from typing import Any, Mapping

# Order matters: counts travel through the pipeline as a vector indexed by these.
SKIP_KINDS = (
    "missing_file",  # a CSV row's image path does not exist
    "unreadable_image",  # not a decodable image: corrupt, truncated, empty, not an image at all
    "empty_caption",  # no text, or only white space
    "broken_member",  # a tar member that cannot be read (cut short, header corrupt)
    "incomplete_example",  # a tar key with an image but no caption, or the reverse
    # Streamed tar shards (data/tar_stream.py): one per damaged shard per epoch, by the damage's
    # kind (data/tar_headers.py); the examples after the damage are not read, so not counted.
    "shard_cannot_open",
    "shard_read_error",
    "shard_not_a_tar",
    "shard_corrupt_header",
    "shard_truncated",
)
SKIP_INDEX = {k: i for i, k in enumerate(SKIP_KINDS)}

_SKIPPED = "__skipped__"


def skipped(kind: str, where: str) -> dict[str, str]:
  if kind not in SKIP_INDEX:
    raise ValueError(f"Unknown skip kind {kind!r}; one of {SKIP_KINDS}.")
  return {_SKIPPED: kind, "where": where}


def skip_kind(record: Mapping[str, Any]) -> str | None:
  """The skip kind if `record` is a skip marker, else None."""
  return record.get(_SKIPPED) if isinstance(record, Mapping) else None


def skip_counts(skipped_vector) -> dict[str, int]:
  """int [len(SKIP_KINDS)] (a batch's or the train state's running total) -> {"<kind>": count}."""
  return {k: int(v) for k, v in zip(SKIP_KINDS, [int(x) for x in skipped_vector])}
