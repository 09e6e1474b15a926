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
import sys
import types
from typing import Any, Mapping, Optional

from absl import logging

from rankclip_jax.errors import UserError
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


def _tensorboard_without_tensorflow():
  """The tensorboard package imports TensorFlow for its file I/O wherever it is installed, unless
  the module `tensorboard.compat.notf` exists (TensorBoard's own switch to its TensorFlow stub).
  Registered only while TensorFlow is not loaded yet: then the process never pays its import."""
  if "tensorflow" not in sys.modules and "tensorboard.compat.notf" not in sys.modules:
    sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")


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


# config.metric_writer: "auto" (CLU's where TensorFlow imports, else the tensorboard package's),
# "clu" (an error without TensorFlow), "tensorboard" (never imports TensorFlow: saves its ~4 s of
# start-up where it is installed). The event files are the same either way.
CHOICES = ("auto", "clu", "tensorboard")


class MetricWriterError(UserError):
  """config.metric_writer asks for a writer this environment cannot give."""


def create_default_writer(logdir: Optional[str], *, just_logging: bool = False,
                          choice: str = "auto"):
  """CLU's default writer if TensorFlow is importable (choice "auto" or "clu"), else
  LoggingWriter + TensorBoardWriter (only LoggingWriter when just_logging or without a logdir)."""
  if choice not in CHOICES:
    raise MetricWriterError(f"config.metric_writer={choice!r}; choose one of {list(CHOICES)}.")
  if choice == "tensorboard":
    clu_writers, why_not = None, "config.metric_writer='tensorboard'"
    _tensorboard_without_tensorflow()
  else:
    clu_writers, why_not = _clu_metric_writers()
  if clu_writers is None and choice == "clu":
    raise MetricWriterError(
        f"config.metric_writer='clu' needs clu's writer, which needs TensorFlow ({why_not}). "
        "Install it (pip install tensorflow-cpu) or set --config.metric_writer=auto.")
  if clu_writers is not None:
    _keep_tensorflow_off_accelerators()
    logging.info("Metric writer: CLU's (TensorFlow summaries) in %s.", logdir)
    return clu_writers.create_default_writer(logdir, just_logging=just_logging)
  logging.info("Metric writer: TensorBoard event files by the tensorboard package in %s (not "
               "CLU's: %s).", logdir, why_not)
  writers = [LoggingWriter()]
  if logdir and not just_logging:
    writers.append(TensorBoardWriter(logdir))
  return MultiWriter(writers)
