"""Rendering: a scene -> uint8 pixels, with vectorised numpy signed-distance maths.

Signed distances (in pixels, negative inside) are computed on the pixel grid of a patch around each
object; coverage = clip(0.5 - distance, 0, 1) anti-aliases the edges without supersampling. The
background is flat or graded, and a fixed noise texture (a window of it per scene) is added last.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from rankclip_jax.data.synthetic.scenes import Background, Scene, SceneObject
from rankclip_jax.data.synthetic.vocabulary import BACKGROUND_RGB, COLOUR_RGB, SHAPES, _EXTENT


def _box(u, v, hx, hy):
  qx, qy = np.abs(u) - hx, np.abs(v) - hy
  outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
  return outside + np.minimum(np.maximum(qx, qy), 0)


def _diamond(u, v, half_diagonal):
  c = math.sqrt(0.5)
  return _box(c * (u + v), c * (v - u), half_diagonal * c, half_diagonal * c)


def _circle(u, v, r):
  return np.sqrt(u * u + v * v) - r


def _triangle(u, v, r):
  # Equilateral, pointing up, circumradius 1.15 r, centred on its centroid.
  rc = 1.15 * r
  s3 = math.sqrt(3) / 2
  d = np.maximum(np.maximum(v, s3 * u - 0.5 * v), -s3 * u - 0.5 * v) - rc / 2
  return np.maximum(d, np.sqrt(u * u + v * v) - rc)  # clamp the vertices' extent


def _star(u, v, r):
  # Five points, outer radius 1.05 r, inner radius 0.45 of that; fold into one half sector.
  ro, ri = 1.05 * r, 0.45 * 1.05 * r
  w = 2 * math.pi / 5
  rho = np.sqrt(u * u + v * v)
  theta = np.arctan2(u, -v)  # 0 pointing up
  tf = np.abs(np.mod(theta + w / 2, w) - w / 2)
  qx, qy = rho * np.cos(tf), rho * np.sin(tf)
  ax, ay = ro, 0.0
  bx, by = ri * math.cos(w / 2), ri * math.sin(w / 2)
  ex, ey = bx - ax, by - ay
  norm = math.hypot(ex, ey)
  nx, ny = ey / norm, -ex / norm  # outward normal of the edge A->B
  if nx * ax + ny * ay < 0:
    nx, ny = -nx, -ny
  d = nx * (qx - ax) + ny * (qy - ay)
  return np.maximum(d, rho - ro)


def _cross(u, v, r):
  a, t = 0.95 * r, 0.32 * r
  return np.minimum(_box(u, v, a, t), _box(u, v, t, a))


def _heart(u, v, r):
  h = 0.8 * r
  c = 0.1035 * h  # centres the bounding box vertically
  k = math.sqrt(0.5) * h
  return np.minimum(
      _diamond(u, v - c, h),
      np.minimum(_circle(u + h / 2, v - c + h / 2, k), _circle(u - h / 2, v - c + h / 2, k)))


def _ring(u, v, r):
  outer, inner = 0.92 * r, 0.5 * r
  return np.abs(np.sqrt(u * u + v * v) - (outer + inner) / 2) - (outer - inner) / 2


_SDF = {
    "circle": lambda u, v, r: _circle(u, v, 0.88 * r),
    "square": lambda u, v, r: _box(u, v, 0.78 * r, 0.78 * r),
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "diamond": lambda u, v, r: _diamond(u, v, 1.05 * r),
    "heart": _heart,
    "ring": _ring,
}
assert tuple(_SDF) == SHAPES


def _object_patch(obj: SceneObject, image_size: int):
  """(y0, y1, x0, x1, coverage [y1-y0, x1-x0]) of the object's pixels, or None if off-image."""
  s = image_size
  cx, cy, r = obj.x * s, obj.y * s, obj.radius * s
  ext = _EXTENT[SHAPES[obj.shape]] * r + 2.0
  x0, x1 = max(0, int(math.floor(cx - ext))), min(s, int(math.ceil(cx + ext)))
  y0, y1 = max(0, int(math.floor(cy - ext))), min(s, int(math.ceil(cy + ext)))
  if x0 >= x1 or y0 >= y1:
    return None
  dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
  dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
  ca, sa = math.cos(obj.angle), math.sin(obj.angle)
  u = ca * dx + sa * dy
  v = -sa * dx + ca * dy
  sd = _SDF[SHAPES[obj.shape]](u, v, r)
  return y0, y1, x0, x1, np.clip(0.5 - sd, 0.0, 1.0).astype(np.float32)


def render_background(background: Background, image_size: int) -> np.ndarray:
  """float32 [S, S, 3] background (no noise)."""
  s = image_size
  base = BACKGROUND_RGB[background.colour]
  if background.kind == "flat":
    line = np.tile(base, (s, 1))  # [s, 3]
  else:
    ramp = (np.arange(s, dtype=np.float32) + 0.5) / s * 2.0 - 1.0  # -1 .. 1
    line = base + ramp[:, None] * np.float32(background.gradient)
  if background.kind == "vertical":  # (copies laid out for speed: inner runs of 3 are slow)
    img = np.repeat(line, s, axis=0).reshape(s, s, 3)
  else:
    img = np.broadcast_to(line[None], (s, s, 3)).copy()
  return img


_NOISE_WINDOWS = 61  # noise windows per axis: 61 * 61 different noise patterns per image size


@functools.lru_cache(maxsize=8)
def _noise_texture(image_size: int) -> np.ndarray:
  """Fixed standard-normal float32 texture [S + 60, S + 60, 3]; the same in every process."""
  side = image_size + _NOISE_WINDOWS - 1
  texture = np.random.default_rng(20240531).standard_normal((side, side, 3), dtype=np.float32)
  texture.setflags(write=False)  # shared by all threads
  return texture


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def render_scene(scene: Scene, image_size: int, monochrome: bool = False) -> np.ndarray:
  """uint8 [image_size, image_size, 3]; objects drawn largest first (none hides a smaller one).

  monochrome=True draws a grey-level version: the background's luminance, and every object in one
  grey that contrasts with it (light on dark, dark on light), so only shapes, sizes, positions and
  the count remain visible.
  """
  img = render_background(scene.background, image_size)
  if monochrome:
    img = np.repeat((img @ _LUMA)[..., None], 3, axis=-1)
    object_grey = 25.0 if float(BACKGROUND_RGB[scene.background.colour] @ _LUMA) >= 128 else 235.0
  for obj in sorted(scene.objects, key=lambda o: -o.radius):
    patch = _object_patch(obj, image_size)
    if patch is None:
      continue
    y0, y1, x0, x1, cov = patch
    if monochrome:
      colour = np.full(3, object_grey + float(np.mean(obj.rgb_jitter)), np.float32)
    else:
      colour = COLOUR_RGB[obj.colour] + np.asarray(obj.rgb_jitter, np.float32)
    region = img[y0:y1, x0:x1]
    region += cov[..., None] * (colour - region)
  if scene.background.noise > 0:
    k = int(scene.noise_offset * _NOISE_WINDOWS * _NOISE_WINDOWS)
    oy, ox = divmod(k, _NOISE_WINDOWS)
    texture = _noise_texture(image_size)
    noise = texture[oy:oy + image_size, ox:ox + image_size]
    if monochrome:
      noise = noise[..., :1]  # the same noise in every channel keeps the image grey
    img += noise * np.float32(scene.background.noise)
  np.clip(img, 0.0, 255.0, out=img)
  return (img + 0.5).astype(np.uint8)
