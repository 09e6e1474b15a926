"""Hostile images, image paths and captions: decompression bombs, formats outside a web corpus (EPS
and its Ghostscript subprocess), paths that are FIFOs, devices or huge files, and megabyte captions.
Each is skipped and counted or capped, never decoded, read or cleaned whole; hangs are bounded."""

import csv
import io
import json
import os
import resource
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile

from rankclip_jax.data import images, pipeline
from rankclip_jax.data import tokenizer as tokenizer_module
from rankclip_jax.data.csv_files import CsvSource
from rankclip_jax.data.karpathy import KarpathyRetrievalSource
from rankclip_jax.data.records import skip_kind
from rankclip_jax.data.tokenizer import ClipTokenizer

from data_fixtures import encode, scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERSIZE = 64 << 20  # bytes: over the image file cap (images.MAX_FILE_BYTES); written sparse


def bomb_png(width: int, height: int) -> bytes:
  """A 1-bit grey PNG of width x height zeros: a few KB that decode to width*height bytes."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  rows = bytes(1 + (width + 7) // 8) * 64  # each row: filter byte 0, then the packed zero bits
  z = zlib.compressobj(9)
  idat = b"".join(z.compress(rows) for _ in range(height // 64))
  idat += z.compress(bytes(1 + (width + 7) // 8) * (height % 64)) + z.flush()
  ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
          + chunk(b"IEND", b""))


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 16 lineto stroke
showpage
%%EOF
"""


# --------------------------------------------------------------------------- decompression bombs

@pytest.mark.parametrize("width,height", [(8192, 8192), (20000, 20000)])
def test_a_decompression_bomb_is_refused_from_its_header_never_decoded(monkeypatch, width, height):
  data = bomb_png(width, height)
  assert len(data) < 64 << 10  # a few KB that would take width*height bytes and more to decode
  assert struct.unpack(">II", data[16:24]) == (width, height)  # IHDR: the size it claims
  loads = []
  real_load = ImageFile.ImageFile.load
  monkeypatch.setattr(ImageFile.ImageFile, "load",
                      lambda self: loads.append(self.size) or real_load(self))
  with pytest.raises(images.BadImage, match="pixel"):
    images.decode_rgb(data, min_size=224)
  decode = pipeline.DecodeImage(32, train=True)
  record = decode.random_map({"image_bytes": data, "caption": "zeros", "where": "bomb.png"},
                             np.random.default_rng(0))
  assert skip_kind(record) == "unreadable_image"
  assert loads == []  # refused from the header: not one pixel decoded


def test_a_large_jpeg_is_measured_after_its_draft_other_formats_as_stored(monkeypatch):
  """A photo over the pixel cap decodes at the reduced JPEG scale that fits; a PNG cannot."""
  image = np.asarray(Image.fromarray(scenes(1, 50)[0][0]).resize((200, 200)))
  monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64)  # 200 x 200 is over it, 1/4 scale is not
  jpeg = encode(image, "JPEG", quality=90)
  assert images.decode_rgb(jpeg, min_size=32).size == (50, 50)  # the most reduction keeping 32
  assert images.decode_rgb(jpeg).size == (50, 50)  # 1/2 (100 x 100) is still over the cap
  with pytest.raises(images.BadImage, match="pixel"):
    images.decode_rgb(jpeg, min_size=150)  # the transform needs more than the cap allows
  with pytest.raises(images.BadImage, match="pixel"):
    images.decode_rgb(encode(image, "PNG"))


# ---------------------------------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_the_formats_of_a_web_corpus_decode(fmt):
  image = scenes(1, 24)[0][0]
  assert np.asarray(images.decode_rgb(encode(image, fmt))).shape == (24, 24, 3)


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX", "SGI"])
def test_other_formats_are_unreadable(fmt):
  data = encode(scenes(1, 24)[0][0], fmt)
  assert Image.open(io.BytesIO(data)).format  # Pillow itself would decode it
  with pytest.raises(images.BadImage):
    images.decode_rgb(data)


def test_eps_is_refused_without_starting_ghostscript(monkeypatch, tmp_path):
  started, opened = [], []

  def no_subprocess(*args, **kwargs):
    started.append(args)
    raise OSError("no subprocess may start")

  for name in ("Popen", "check_call", "run", "call", "check_output"):
    monkeypatch.setattr(subprocess, name, no_subprocess)
  monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # unknown yet: Pillow would look for gs
  real_open = EpsImagePlugin.EpsImageFile._open
  monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open",
                      lambda self: opened.append(1) or real_open(self))
  with pytest.raises(images.BadImage):
    images.decode_rgb(EPS)
  (tmp_path / "img.eps").write_bytes(EPS)
  with open(tmp_path / "rows.csv", "w", newline="") as f:
    csv.writer(f).writerows([["image", "caption"], ["img.eps", "a line"]])
  record = pipeline.DecodeImage(32, train=False).random_map(
      CsvSource(str(tmp_path / "rows.csv"))[0], None)
  assert skip_kind(record) == "unreadable_image"
  assert started == [] and opened == []  # the EPS plugin never saw the bytes


# ------------------------------------------------------------------------------------ image paths

_READ_ALL = """
import json, os, sys
from rankclip_jax.data.csv_files import CsvSource
from rankclip_jax.data.karpathy import KarpathyRetrievalSource
from rankclip_jax.data.records import skip_kind
d = sys.argv[1]
csv_source = CsvSource(os.path.join(d, "rows.csv"))
karpathy = KarpathyRetrievalSource(os.path.join(d, "split.json"), os.path.join(d, "img"))
print(json.dumps({"csv": [skip_kind(csv_source[i]) for i in range(len(csv_source))],
                  "karpathy": [skip_kind(karpathy[i]) for i in range(len(karpathy))]}))
"""


def _sources_naming(tmp_path, hazard: str):
  """rows.csv and split.json naming a good image, then `hazard` (a path), in tmp_path."""
  root = tmp_path / "img"
  root.mkdir()
  (root / "good.jpg").write_bytes(encode(scenes(1, 24)[0][0], "JPEG"))
  with open(tmp_path / "rows.csv", "w", newline="") as f:
    csv.writer(f).writerows([["image", "caption"], ["img/good.jpg", "good"], [hazard, "bad"]])
  entries = [{"filename": name, "split": "test", "sentences": [{"raw": "a caption"}]}
             for name in ("good.jpg", os.path.relpath(hazard, root))]
  (tmp_path / "split.json").write_text(json.dumps({"images": entries}))


def _limit_memory():
  resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("hazard", ["fifo", "/dev/zero"])
def test_fifo_and_device_paths_are_skipped_without_reading(tmp_path, hazard):
  """A FIFO would block the reader for ever and /dev/zero never ends; both readers skip them.

  Read in a subprocess with a time and a memory limit, so that a reader that blocks or reads
  without end fails this test instead of hanging or exhausting the machine."""
  if hazard == "fifo":
    hazard = str(tmp_path / "img" / "fifo.jpg")
    _sources_naming(tmp_path, hazard)
    os.mkfifo(hazard)
  else:
    _sources_naming(tmp_path, hazard)
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=REPO)
  try:
    done = subprocess.run([sys.executable, "-c", _READ_ALL, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env=env, preexec_fn=_limit_memory, check=False)
  except subprocess.TimeoutExpired:
    pytest.fail(f"reading the sources with {hazard} among their images did not end in 60 s")
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout.splitlines()[-1]) == {
      "csv": [None, "unreadable_image"], "karpathy": [None, "unreadable_image"]}


def test_oversize_files_and_directories_are_skipped_without_reading(tmp_path):
  big = tmp_path / "img" / "big.jpg"
  _sources_naming(tmp_path, str(big))
  with open(big, "wb") as f:
    f.truncate(OVERSIZE)  # sparse: takes no disk
  for reader in (CsvSource(str(tmp_path / "rows.csv")),
                 KarpathyRetrievalSource(tmp_path / "split.json", tmp_path / "img")):
    assert skip_kind(reader[0]) is None
    assert skip_kind(reader[1]) == "unreadable_image"
  os.remove(big)
  os.mkdir(big)
  assert skip_kind(CsvSource(str(tmp_path / "rows.csv"))[1]) == "unreadable_image"
  os.rmdir(big)
  assert skip_kind(CsvSource(str(tmp_path / "rows.csv"))[1]) == "missing_file"
  # Exactly the cap is read; one byte more is not.
  (tmp_path / "ten").write_bytes(bytes(10))
  assert images.read_image_file(str(tmp_path / "ten"), max_bytes=10) == bytes(10)
  with pytest.raises(images.BadImage, match="limit"):
    images.read_image_file(str(tmp_path / "ten"), max_bytes=9)
  assert images.MAX_FILE_BYTES < OVERSIZE


def _in_thread(fn, fifo: str, seconds: float = 10.0):
  """fn() in a daemon thread: (result or exception, finished in time). A call still blocked on
  the FIFO after `seconds` is released by opening the FIFO's write end, so no thread is left."""
  out = []
  thread = threading.Thread(target=lambda: out.append(_call(fn)), daemon=True)
  thread.start()
  thread.join(seconds)
  in_time = not thread.is_alive()
  if not in_time:
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a blocked reader sees end of file
    thread.join(seconds)
  return (out[0] if out else None), in_time


def _call(fn):
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    return e


def test_a_path_swapped_for_a_fifo_after_its_stat_cannot_block(tmp_path, monkeypatch):
  fifo = str(tmp_path / "swapped.jpg")
  os.mkfifo(fifo)
  regular = os.stat(__file__)
  real_stat = os.stat
  monkeypatch.setattr(os, "stat",
                      lambda p, *a, **k: regular if p == fifo else real_stat(p, *a, **k))
  result, in_time = _in_thread(lambda: images.read_image_file(fifo), fifo)
  assert in_time, "reading a path swapped for a FIFO blocked"
  assert isinstance(result, images.BadImage) and "not a regular file" in str(result)


def test_pc_clip_pairs_skip_a_fifo_and_an_oversize_file(tmp_path):
  from rankclip_jax.data import pairs  # pylint: disable=g-import-not-at-top
  Image.fromarray(scenes(1, 24)[0][0]).save(tmp_path / "a.png")
  os.mkfifo(tmp_path / "fifo.png")
  with open(tmp_path / "big.png", "wb") as f:
    f.truncate(OVERSIZE)
  with open(tmp_path / "pairs.csv", "w", newline="") as f:
    csv.writer(f).writerows([["image_a", "image_b", "caption"], ["a.png", "fifo.png", "x"],
                             ["big.png", "a.png", "y"], ["a.png", "a.png", "z"]])
  source = pairs.CsvPairs(str(tmp_path / "pairs.csv"))
  result, in_time = _in_thread(lambda: [skip_kind(source[i]) for i in range(3)],
                               str(tmp_path / "fifo.png"))
  assert in_time, "reading a FIFO named by a pairs CSV blocked"
  assert result == ["unreadable_image", "unreadable_image", None]
  assert images.MAX_FILE_BYTES < OVERSIZE


# --------------------------------------------------------------------------------------- captions

def test_a_megabyte_caption_is_cut_to_its_start_before_cleaning(monkeypatch):
  tok = ClipTokenizer()
  bound = 200 * tok.context_length  # not the cap itself: 200 characters per token of context
  huge = "Caf\u00e9 &amp; cr\u00e8me, " * 250_000  # 4M characters, not plain ASCII: ftfy runs
  assert len(huge) >= 4_000_000
  seen = []
  real_clean = tokenizer_module.clean_text
  monkeypatch.setattr(tokenizer_module, "clean_text",
                      lambda t: seen.append(len(t)) or real_clean(t))
  ids = tok(huge)
  assert max(seen) <= bound
  # What is kept is the caption's start: the same ids as its first few hundred characters.
  np.testing.assert_array_equal(ids, tok(huge[:600]))
  assert (ids[0] != 0).all()  # the start fills the whole context

  def seconds(text):
    best = float("inf")
    for _ in range(3):
      start = time.perf_counter()
      tok(text)
      best = min(best, time.perf_counter() - start)
    return best

  # A 4M-character caption costs about what its first `bound` characters cost (uncapped: ~500x).
  assert seconds(huge) < 20 * seconds(huge[:bound]) + 1e-3


def test_csv_and_synthetic_captions_reach_cleaning_capped(tmp_path, monkeypatch):
  (tmp_path / "a.jpg").write_bytes(encode(scenes(1, 24)[0][0], "JPEG"))
  huge = "a red square on the left " * 160_000
  with open(tmp_path / "rows.csv", "w", newline="") as f:
    csv.writer(f).writerows([["image", "caption", "alip"], ["a.jpg", huge, huge[::-1]]])
  seen = []
  real_clean = tokenizer_module.clean_text
  monkeypatch.setattr(tokenizer_module, "clean_text",
                      lambda t: seen.append(len(t)) or real_clean(t))
  tok = ClipTokenizer(16)
  record = CsvSource(str(tmp_path / "rows.csv"), synthetic_caption_key="alip")[0]
  decoded = pipeline.DecodeImage(24, train=False).random_map(record, None)
  out = pipeline.Preprocess(tok).map(decoded)
  assert len(seen) == 2 and max(seen) <= 200 * 16
  np.testing.assert_array_equal(out["text"], tok(huge[:200])[0])
  np.testing.assert_array_equal(out["synthetic_text"], tok(huge[::-1][:200].strip())[0])
