"""The metric writer without TensorFlow: the event files it writes hold, record for record, what
CLU's TensorFlow writer writes (read back with tensorboard's own reader), and the choice between
the two follows what can be imported."""

import glob
import io
import logging
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from rankclip_jax import metric_writer
from rankclip_jax.tensorboard_writer import TensorBoardWriter

HPARAMS = {"loss.cross_weight": 0.0625, "model": {"size": "micro", "scan": True},
           "betas": (0.9, 0.999), "steps": np.int64(30), "note": None}
PICTURE = (np.arange(4 * 5 * 3).reshape(1, 4, 5, 3) * 4).astype(np.uint8)


def _write(writer):
  writer.write_hparams(HPARAMS)
  writer.write_scalars(3, {"train/loss": 1.25, "count": 4, "np": np.float32(2.5)})
  writer.write_scalars(7, {"train/loss": 1.0})
  writer.write_images(7, {"pic": PICTURE, "grey": np.full((2, 3, 3, 1), 0.5, np.float32)})
  writer.close()


def _records(logdir):
  """[(step, tag, plugin, plugin content, data class, dtype, shape, value)] of the one event file
  in logdir; images as their decoded pixels (PNG encoders compress differently), the hparams
  record as its parsed hyperparameters (its start time differs between runs)."""
  files = glob.glob(f"{logdir}/events.out.tfevents.*")
  assert len(files) == 1, files
  out = []
  # The events as stored (EventFileLoader would fill in missing data classes while reading).
  for event in event_file_loader.LegacyEventFileLoader(files[0]).Load():
    for v in event.summary.value:
      array = tensor_util.make_ndarray(v.tensor)
      plugin = v.metadata.plugin_data
      value, content = array.tolist(), plugin.content
      if plugin.plugin_name == "hparams":
        info = hparams_metadata.parse_session_start_info_plugin_data(content)
        value = (info.group_name, {k: str(x).strip() for k, x in info.hparams.items()})
        content = b""
      if plugin.plugin_name == "images":
        value = value[:2] + [np.asarray(Image.open(io.BytesIO(png))).tolist() for png in value[2:]]
      out.append((event.step, v.tag, plugin.plugin_name, content, v.metadata.data_class,
                  array.dtype.str, array.shape, value))
  return out


def test_event_files_hold_what_clus_tensorflow_writer_writes(tmp_path):
  clu_writers = pytest.importorskip("clu.metric_writers")  # needs TensorFlow, as in CI
  _write(clu_writers.create_default_writer(str(tmp_path / "clu"), asynchronous=False))
  _write(TensorBoardWriter(str(tmp_path / "tb")))
  theirs, ours = _records(tmp_path / "clu"), _records(tmp_path / "tb")
  assert [r[:2] for r in ours] == [
      (0, "_hparams_/session_start_info"), (3, "train/loss"), (3, "count"), (3, "np"),
      (7, "train/loss"), (7, "pic"), (7, "grey")]
  assert ours == theirs
  scalars = {(r[0], r[1]): r[7] for r in ours if r[2] == "scalars"}
  assert scalars[(3, "count")] == 4.0 and scalars[(7, "train/loss")] == 1.0
  hparams = ours[0][7][1]
  assert hparams["model.size"] == 'string_value: "micro"' and "betas.1" in hparams


def test_images_come_back_as_the_same_pixels(tmp_path):
  _write(TensorBoardWriter(str(tmp_path)))
  images = {r[1]: r[7] for r in _records(tmp_path) if r[2] == "images"}
  width, height, pixels = images["pic"]
  assert (width, height) == (b"5", b"4")
  np.testing.assert_array_equal(pixels, PICTURE[0])
  assert images["grey"][2:] == [[[127] * 3] * 3] * 2  # two images, 0.5 -> 127 as TensorFlow's


def _without_tensorflow(monkeypatch):
  """Imports of TensorFlow and of CLU's writers fail, as where they are not installed (also
  when this test process imported them before)."""
  for name in ("tensorflow", "clu.metric_writers"):
    monkeypatch.setitem(sys.modules, name, None)


def test_without_tensorflow_the_tensorboard_writer_is_chosen_and_says_so(tmp_path, monkeypatch,
                                                                         caplog):
  _without_tensorflow(monkeypatch)
  assert metric_writer.backend()[0] == "tensorboard"
  with caplog.at_level(logging.INFO, logger="absl"):
    writer = metric_writer.create_default_writer(str(tmp_path))
    writer.write_scalars(5, {"train/loss": 0.5, "steps_per_sec": 2})
    writer.close()
  lines = [r.getMessage() for r in caplog.records if "Metric writer" in r.getMessage()]
  assert len(lines) == 1 and "tensorboard package" in lines[0], lines
  assert any(r.getMessage() == "[5] steps_per_sec=2, train/loss=0.5" for r in caplog.records)
  assert [(r[0], r[1], r[7]) for r in _records(tmp_path)] == [(5, "train/loss", 0.5),
                                                             (5, "steps_per_sec", 2.0)]


def test_just_logging_writes_no_files(tmp_path, monkeypatch, caplog):
  _without_tensorflow(monkeypatch)
  with caplog.at_level(logging.INFO, logger="absl"):
    writer = metric_writer.create_default_writer(str(tmp_path), just_logging=True)
    writer.write_scalars(1, {"a": 1.5})
    writer.write_hparams({"b": 1})
    writer.close()
  assert any(r.getMessage() == "[1] a=1.5" for r in caplog.records)
  assert list(tmp_path.iterdir()) == []


def test_with_tensorflow_clus_writer_is_chosen():
  pytest.importorskip("clu.metric_writers")
  assert metric_writer.backend() == ("clu", "")


def test_config_metric_writer_chooses_and_clu_without_tensorflow_is_an_error(tmp_path,
                                                                             monkeypatch):
  # "tensorboard": the tensorboard package's writer even where TensorFlow imports.
  writer = metric_writer.create_default_writer(str(tmp_path / "tb"), choice="tensorboard")
  assert isinstance(writer, metric_writer.MultiWriter)
  assert any(isinstance(w, metric_writer.TensorBoardWriter) for w in writer.writers)
  writer.close()
  with pytest.raises(metric_writer.MetricWriterError, match="choose one of"):
    metric_writer.create_default_writer(str(tmp_path), choice="tf")
  _without_tensorflow(monkeypatch)
  with pytest.raises(metric_writer.MetricWriterError, match="--config.metric_writer=auto"):
    metric_writer.create_default_writer(str(tmp_path), choice="clu")
