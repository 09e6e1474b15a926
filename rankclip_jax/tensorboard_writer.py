"""TensorBoard event files written with the `tensorboard` package alone (no TensorFlow).

CLU's writer needs TensorFlow (about 1.3 GB, and often absent from GPU and TPU installs) only to
write summaries. This writer puts the same records in the event files: one event per value, with
the plugin metadata that `tf.summary.scalar` / `image` and TensorBoard's hparams API write
(float32 scalars, PNG-encoded images, the hparams session-start record at step 0), so TensorBoard
draws the same curves, pictures and hparams table whichever wrote them
(tests/test_metric_writer.py compares the two files record by record).
`tensorboard.summary.writer.event_file_writer` does the file format (TFRecord framing, CRC) and
writes from a background thread. Remote logdirs (gs://, s3://) go through fsspec.
"""

from __future__ import annotations

import io
import time
from typing import Any, Mapping

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from rankclip_jax.errors import UserError


class MetricWriterError(UserError, OSError):
  """The event files cannot be written where asked (e.g. a gs:// logdir without gcsfs)."""


# The plugin metadata tf.summary.scalar / image write (no data class: readers derive it).
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name="", description="")
_IMAGE_METADATA = image_metadata.create_summary_metadata(display_name="", description="")


def flatten(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts (and lists) to {"a.b.0": value}, None to "" (as CLU flattens hparams)."""
  out = {}
  for k, v in hparams.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) or hasattr(v, "items"):
      out.update(flatten(v, key + "."))
    elif isinstance(v, (list, tuple)):
      out.update(flatten({str(i): x for i, x in enumerate(v)}, key + "."))
    else:
      out[key] = "" if v is None else v
  return out


def _hparam_value(v):
  """TensorBoard's hparams take bool, number or string; numpy scalars become Python ones."""
  if isinstance(v, np.generic):
    v = v.item()
  return v if isinstance(v, (bool, int, float, str)) else str(v)


def png_images(value) -> list[bytes]:
  """[N, H, W, C] or [H, W, C] (C 1, 3 or 4; uint8, or floats in [0, 1] as tf.summary.image
  takes them) -> one PNG per image."""
  array = np.asarray(value)
  if array.ndim == 3:
    array = array[None]
  if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f"An image summary needs [N, H, W, C] with C in 1, 3, 4; got {array.shape}.")
  if array.dtype != np.uint8:  # tf.image.convert_image_dtype's saturating cast: x * 255.5, floored
    array = np.clip(array.astype(np.float32) * 255.5, 0.0, 255.0).astype(np.uint8)
  pngs = []
  for image in array:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    pngs.append(buf.getvalue())
  return pngs


class TensorBoardWriter:
  """write_scalars / write_images / write_hparams / flush / close into event files in `logdir`."""

  def __init__(self, logdir: str):
    try:
      self._file = EventFileWriter(str(logdir), filename_suffix=".v2")
    except ImportError as e:  # fsspec's "Please install gcsfs to access Google Storage"
      raise MetricWriterError(
          f"Cannot write TensorBoard event files to {logdir}: {e}. Without TensorFlow, remote "
          "paths are written through fsspec: pip install gcsfs (gs://) or s3fs (s3://), or "
          "install TensorFlow to use CLU's writer.") from e

  def _add(self, step: int, tag: str, tensor, metadata):
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, tensor=tensor, metadata=metadata)])
    self._file.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for tag, value in scalars.items():
      # float32, whatever came in (ints, numpy or jax scalars), as tf.summary.scalar stores it.
      self._add(step, tag, tensor_util.make_tensor_proto(np.float32(np.asarray(value))),
                _SCALAR_METADATA)

  def write_images(self, step: int, images: Mapping[str, Any]):
    for tag, value in images.items():
      pngs = png_images(value)
      height, width = np.asarray(value).shape[-3:-1]
      # The image plugin's layout: [width, height, png_1, ..., png_n] as one string tensor.
      self._add(step, tag, tensor_util.make_tensor_proto(
          [str(width).encode(), str(height).encode()] + pngs), _IMAGE_METADATA)

  def write_hparams(self, hparams: Mapping[str, Any]):
    flat = {k: _hparam_value(v) for k, v in flatten(hparams).items()}
    self._file.add_event(event_pb2.Event(wall_time=time.time(), step=0,
                                         summary=hparams_summary.hparams_pb(flat)))

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()
