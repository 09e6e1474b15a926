"""Image decoding and the CLIP geometric transforms, on numpy/PIL, for grain workers.

- `decode_rgb`: encoded bytes -> uint8 [H, W, 3]. Grey, palette, 16-bit and CMYK images become RGB;
  transparent images are composited over white (CLIP's `convert("RGB")` would show whatever colour
  the transparent pixels happen to store). Raises `BadImage` for bytes that are not a complete
  image, so the caller can skip and count them ("unreadable_image").
- `read_image_file`: the bytes of an image file named by a data file (a CSV row, a Karpathy split).
- `center_crop`: evaluation (resize the shorter side to `size`, bicubic, then a central square).
- `random_resized_crop`: training (a random box of `scale` x the area and aspect ratio in `ratio`,
  resized to `size`); open_clip's CLIP recipe uses scale (0.9, 1.0).

JPEGs are decoded at the smallest DCT scale that is still at least as large as what the transform
needs (`PIL.Image.draft`), which makes decoding big photos several times faster.

Web-crawled corpora hold hostile files as a matter of course; what each gets (`BadImage`, which
the readers skip and count as "unreadable_image", unless said otherwise):
- a format other than JPEG, PNG, WebP, GIF, BMP and TIFF (`FORMATS`): never opened by its Pillow
  plugin. EPS would start Ghostscript as a subprocess, and the rarer formats' decoders are attack
  surface a web corpus has no use for.
- more than `MAX_PIXELS` pixels to decode (a decompression bomb: a few KB of PNG that inflate to
  gigabytes): refused from the header's size, before any pixel is decoded. A JPEG is measured at
  the reduced scale it is drafted to, so a big photo still decodes cheaply.
- `read_image_file`: a path that is not a regular file (a FIFO would block a reader for ever,
  /dev/zero never ends, a directory) or a file over `MAX_FILE_BYTES`: refused without reading it.
  Nothing at the path: FileNotFoundError (counted as "missing_file").
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

# The formats web corpora hold (img2dataset writes JPEG, PNG or WebP; crawls add GIF, BMP, TIFF).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# The most pixels one decode may produce: 2^25, e.g. an 8K frame (7680 x 4320) or a 24 MP camera
# image (6000 x 4000) in any format. Our transforms need 224-336 pixels a side, so a larger image
# gains nothing, and large photos are JPEGs, which are drafted to 1/2-1/8 scale first and measured
# after it. A decode then takes at most 128 MiB (RGBA), with 4-8 decode threads in flight; at
# 2^28 pixels one 32 KB PNG (16384 x 16384) took 1.3 GiB and 3 s.
MAX_PIXELS = 1 << 25

# The largest image file read from a path: a 24 MP JPEG at high quality is about 10 MB and a web
# image rarely 1 MB, so a file over 32 MiB is a raw export (BMP/TIFF) or not an image; with 4-8
# reads in flight a reader holds at most a few hundred MiB.
MAX_FILE_BYTES = 32 << 20


class BadImage(ValueError):
  """The bytes are not a complete, decodable image."""


def _draft(img: Image.Image, min_size: int | None) -> None:
  """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale: the most reduction that keeps `min_size`
  pixels a side, or without `min_size` the least that fits MAX_PIXELS. Other formats: no-op."""
  if not isinstance(img, JpegImagePlugin.JpegImageFile):  # MPO (phone photos) is a JPEG too
    return
  if min_size:
    img.draft("RGB", (min_size, min_size))
    return
  w, h = img.size
  for s in (1, 2, 4, 8):
    if -(-w // s) * -(-h // s) <= MAX_PIXELS:
      if s > 1:
        img.draft("RGB", (w // s, h // s))
      return


def _open(data: bytes, min_size: int | None) -> Image.Image:
  try:
    with warnings.catch_warnings():
      # MAX_PIXELS below decides, after a JPEG's draft; Pillow's own limit still raises (twice its
      # 89M-pixel warning level), which BadImage reports.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data), formats=FORMATS)  # header only: nothing decoded yet
    _draft(img, min_size)
    if img.width * img.height > MAX_PIXELS:
      raise BadImage(f"{img.format} image of {img.width} x {img.height} pixels is over the "
                     f"{MAX_PIXELS}-pixel limit (a decompression bomb?); not decoded")
    img.load()  # decode now: truncated files raise here, not later in a transform
  except BadImage:
    raise
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
    raise BadImage(f"{type(e).__name__}: {e}") from None
  try:
    img = ImageOps.exif_transpose(img)
  except Exception:  # a broken EXIF block does not make the pixels unusable
    pass
  return img


def to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == "RGB":
    return img
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    arr = np.asarray(img, np.float64)
    top = max(float(arr.max()), 1.0)
    img = Image.fromarray(np.clip(arr / (65535.0 if top > 255 else 255.0) * 255.0, 0, 255)
                          .astype(np.uint8))
  if img.mode == "F":
    img = Image.fromarray(np.clip(np.asarray(img) * 255.0, 0, 255).astype(np.uint8))
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return img.convert("RGB")


def decode_rgb(data: bytes, min_size: int | None = None) -> Image.Image:
  """Encoded image bytes -> RGB PIL image (at least `min_size` on each side for JPEG drafts)."""
  if not data:
    raise BadImage("empty file")
  img = _open(data, min_size)
  if img.width < 1 or img.height < 1:
    raise BadImage(f"image has size {img.size}")
  return to_rgb(img)


def read_image_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
  """The bytes of the regular file at `path`, at most `max_bytes` of them.

  Raises FileNotFoundError when nothing is at `path`, BadImage when it is not a regular file or is
  over `max_bytes` (neither is read), OSError when it cannot be read (no permission, I/O error).
  """
  if not stat.S_ISREG(os.stat(path).st_mode):  # not even opened: opening a device can act
    raise BadImage(f"{path} is not a regular file")
  # O_NONBLOCK: a path swapped for a FIFO since the stat still opens at once (and fstat refuses it).
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
  with open(fd, "rb") as f:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise BadImage(f"{path} is not a regular file")
    if st.st_size > max_bytes:
      raise BadImage(f"{path} holds {st.st_size} bytes, over the {max_bytes}-byte limit")
    data = f.read(max_bytes + 1)  # a file that grew since the fstat is still read only this far
  if len(data) > max_bytes:
    raise BadImage(f"{path} holds over {max_bytes} bytes, the limit")
  return data


def center_crop(img: Image.Image, size: int) -> np.ndarray:
  """Resize the shorter side to `size` (bicubic), crop the central size x size: uint8 [S, S, 3]."""
  w, h = img.size
  s = size / min(w, h)
  nw, nh = max(size, round(w * s)), max(size, round(h * s))
  if (nw, nh) != (w, h):
    img = img.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - size) // 2, (nh - size) // 2
  return np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.9, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """A random crop of `scale` x the area with aspect ratio in `ratio`, resized to size x size.

  Draws up to 10 boxes like torchvision's RandomResizedCrop; if none fits inside the image, falls
  back to the largest central box of a clamped aspect ratio.
  """
  w, h = img.size
  area = w * h
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      left = int(rng.integers(0, w - cw + 1))
      top = int(rng.integers(0, h - ch + 1))
      break
  else:
    aspect = w / h
    if aspect < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
      cw, ch = int(round(h * ratio[1])), h
    else:
      cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
  box = (left, top, left + cw, top + ch)
  return np.asarray(img.resize((size, size), Image.BICUBIC, box=box), np.uint8)
