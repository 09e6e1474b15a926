"""The run's metric writer, chosen by what is installed: CLU's `create_default_writer` where
TensorFlow (and clu) can be imported, else the same interface over tensorboard_writer.py, which
writes the same TensorBoard event files with the `tensorboard` package alone. One log line says
which. Either way every scalar is also logged (absl INFO, as CLU's LoggingWriter does), and
processes other than the first (`just_logging`) only log.

The interface the trainer and evaluate.py use: write_scalars(step, {name: number}),
write_images(step, {name: [N, H, W, C]}), write_hparams({name: value}), flush(), close().
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Optional

from absl import logging

from rankclip_jax.tensorboard_writer import TensorBoardWriter


def _clu_metric_writers():
  """(clu.metric_writers, None), or (None, why not): clu imports TensorFlow unconditionally."""
  try:
    metric_writers = importlib.import_module("clu.metric_writers")
  except ImportError as e:  # also a TensorFlow that fails to load (a shadowed or broken install)
    return None, f"{type(e).__name__}: {e}"
  return metric_writers, None


def backend() -> tuple[str, str]:
  """("clu", "") where CLU's writer can be used, else ("tensorboard", why not)."""
  clu_writers, why_not = _clu_metric_writers()
  return ("clu", "") if clu_writers is not None else ("tensorboard", why_not)


def _keep_tensorflow_off_accelerators():
  """TensorFlow only writes summaries here: a GPU build would otherwise reserve GPU memory that
  JAX needs. (tensorflow-cpu has no GPU to hide; a TensorFlow already using GPUs raises, kept.)"""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except (ImportError, RuntimeError, ValueError, AttributeError):
    pass


class LoggingWriter:
  """Every scalar to the INFO log, in CLU's LoggingWriter format: "[step] a=1.5, b=2"."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
              for k, v in sorted(scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))

  def write_images(self, step: int, images: Mapping[str, Any]):
    logging.info("[%d] Got images: %s.", step, {k: getattr(v, "shape", None)
                                                 for k, v in images.items()})

  def write_hparams(self, hparams: Mapping[str, Any]):
    logging.info("[Hyperparameters] %s", hparams)

  def flush(self):
    logging.flush()

  def close(self):
    self.flush()


class MultiWriter:
  """Each call to every writer in turn."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_images(self, step: int, images: Mapping[str, Any]):
    for w in self.writers:
      w.write_images(step, images)

  def write_hparams(self, hparams: Mapping[str, Any]):
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def create_default_writer(logdir: Optional[str], *, just_logging: bool = False):
  """CLU's default writer if TensorFlow is importable, else LoggingWriter + TensorBoardWriter
  (only LoggingWriter when just_logging or without a logdir)."""
  clu_writers, why_not = _clu_metric_writers()
  if clu_writers is not None:
    _keep_tensorflow_off_accelerators()
    logging.info("Metric writer: CLU's (TensorFlow summaries) in %s.", logdir)
    return clu_writers.create_default_writer(logdir, just_logging=just_logging)
  logging.info("Metric writer: TensorBoard event files by the tensorboard package in %s (CLU's "
               "needs TensorFlow: %s).", logdir, why_not)
  writers = [LoggingWriter()]
  if logdir and not just_logging:
    writers.append(TensorBoardWriter(logdir))
  return MultiWriter(writers)
