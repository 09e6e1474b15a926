"""Image decoding and the CLIP geometric transforms, on numpy/PIL, for grain workers.

- `decode_rgb`: encoded bytes (JPEG, PNG, WebP, ...) -> uint8 [H, W, 3]. Grey, palette, 16-bit and
  CMYK images become RGB; transparent images are composited over white (CLIP's `convert("RGB")`
  would show whatever colour the transparent pixels happen to store). Raises `BadImage` for bytes
  that are not a complete image, so the caller can skip and count them.
- `center_crop`: evaluation (resize the shorter side to `size`, bicubic, then a central square).
- `random_resized_crop`: training (a random box of `scale` x the area and aspect ratio in `ratio`,
  resized to `size`); open_clip's CLIP recipe uses scale (0.9, 1.0).

JPEGs are decoded at the smallest DCT scale that is still at least as large as what the transform
needs (`PIL.Image.draft`), which makes decoding big photos several times faster.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

# Decoding a corrupt or hostile file must be an error we can count, not a warning or a huge alloc.
Image.MAX_IMAGE_PIXELS = 1 << 28  # 268M pixels; above twice this PIL raises DecompressionBombError


class BadImage(ValueError):
  """The bytes are not a complete, decodable image."""


def _open(data: bytes, min_size: int | None) -> Image.Image:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
      if min_size and img.format == "JPEG":
        img.draft("RGB", (min_size, min_size))
      img.load()  # decode now: truncated files raise here, not later in a transform
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
