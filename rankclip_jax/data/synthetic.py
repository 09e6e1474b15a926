"""The embedded, procedurally generated default dataset: coloured shapes with partial captions.

Every example is a small scene of 1..5 flat coloured shapes on a (possibly graded, always
slightly noisy) background, rendered with vectorised numpy signed-distance maths, plus one caption
drawn from templates that each describe the scene *partially* and in different words ("a red
circle.", "something green on a beige background.", "three shapes, including a purple ring.", ...).
One caption therefore fits many images and one image many captions: the many-to-many structure
RankCLIP exploits.

Example `i` of split `s` with seed `k` is a pure function of (k, s, i): its generator is
`np.random.default_rng([k, split_id, i])`, so examples are reproducible alone, in any order, in any
process, and `SyntheticScenes` is a stateless, picklable grain random-access source.

Zero-shot evaluation tasks: shape (8 classes), colour (8), object count, and shape-colour
combination (64 classes) on the `held_out` split, whose scenes contain only the 8 combinations in
`HELD_OUT_COMBOS` that the `train` and `test` splits never show. `zero_shot_task(task)` gives the
class names, prompt templates (worded like the captions), label key and label offset.

Vocabulary words are canonical: a shape or colour is always called by its name in `SHAPES` /
`COLOUR_NAMES`, so prompts built from those names match the training captions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------
# Vocabulary.

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "diamond", "heart", "ring")

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (215, 35, 35)),
    ("orange", (245, 135, 15)),
    ("yellow", (240, 215, 30)),
    ("green", (35, 165, 55)),
    ("cyan", (40, 210, 225)),
    ("blue", (35, 80, 235)),
    ("purple", (145, 45, 195)),
    ("pink", (250, 125, 195)),
)
COLOUR_NAMES: tuple[str, ...] = tuple(name for name, _ in COLOURS)
COLOUR_RGB = np.array([rgb for _, rgb in COLOURS], np.float32)  # [num_colours, 3]

# (name, min radius, max radius): the object's nominal radius as a fraction of the image size (at 48
# px: about 12-14, 17-20 and 24-28 px across; a shape needs some 10 px before a star, a cross and a
# heart look different). The ranges do not overlap, so a strictly larger size class is strictly
# larger on screen.
SIZES: tuple[tuple[str, float, float], ...] = (
    ("small", 0.125, 0.15),
    ("medium", 0.18, 0.21),
    ("large", 0.25, 0.29),
)
SIZE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SIZES)
# Words a caption may use for each size class.
SIZE_WORDS: tuple[tuple[str, ...], ...] = (("small", "little"), ("medium-sized",), ("large", "big"))

# Background base colours: none is an object colour, and each scene's background is drawn only from
# those that contrast with all of its objects' colours (see `_BG_COMPATIBLE`).
BACKGROUNDS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("light grey", (195, 195, 195)),
    ("dark grey", (70, 70, 72)),
    ("white", (242, 242, 238)),
    ("black", (18, 18, 20)),
    ("beige", (222, 206, 170)),
    ("navy", (22, 28, 70)),
    ("brown", (105, 72, 45)),
)
BACKGROUND_NAMES: tuple[str, ...] = tuple(name for name, _ in BACKGROUNDS)
BACKGROUND_RGB = np.array([rgb for _, rgb in BACKGROUNDS], np.float32)
BACKGROUND_KINDS: tuple[str, ...] = ("flat", "vertical", "horizontal")


def _cielab(rgb: np.ndarray) -> np.ndarray:
  """sRGB (0..255) -> CIELAB (D65), for perceptual colour distances."""
  c = np.asarray(rgb, np.float64) / 255.0
  c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
  xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                      [0.0193, 0.1192, 0.9505]]).T / np.array([0.9505, 1.0, 1.089])
  f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
  return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                   200 * (f[..., 1] - f[..., 2])], axis=-1)


_MIN_CONTRAST = 60.0  # minimum CIELAB distance (delta E 1976) between a background and an object
_BG_COMPATIBLE = (np.linalg.norm(_cielab(BACKGROUND_RGB)[:, None] - _cielab(COLOUR_RGB)[None],
                                 axis=-1) >= _MIN_CONTRAST)  # [num_backgrounds, num_colours]
assert _BG_COMPATIBLE.all(axis=1).any(), "some background must suit every colour"

# Rough position of an object's centre, from thirds of the image.
POSITION_WORDS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")

NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five")
MAX_OBJECTS = len(NUMBER_WORDS)

SPLITS: tuple[str, ...] = ("train", "test", "held_out")
CAPTION_MODES: tuple[str, ...] = ("random", "full")

# One held-out colour per shape, all colours distinct (a permuted diagonal): shape i is never shown
# in colour _HELD_OUT_COLOUR[i] during training, but every shape and every colour still appears in
# training with its 7 other partners.
_HELD_OUT_COLOUR: tuple[int, ...] = (3, 6, 0, 5, 7, 1, 4, 2)
HELD_OUT_COMBOS: frozenset[tuple[int, int]] = frozenset(
    (s, c) for s, c in enumerate(_HELD_OUT_COLOUR))

NUM_COMBOS = len(SHAPES) * len(COLOURS)


def combo_index(shape: int, colour: int) -> int:
  return int(shape) * len(COLOURS) + int(colour)


# ------------------------------------------------------------------------------------------------
# Scenes.


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One shape. Geometry is in units of the image size, so a scene renders at any resolution."""
  shape: int      # index into SHAPES
  colour: int     # index into COLOURS
  size: int       # index into SIZES
  radius: float   # nominal radius, fraction of the image size (the farthest point is at most
                  # 1.16 radius from the centre: see _EXTENT)
  x: float        # centre, fraction of the image width (0 = left)
  y: float        # centre, fraction of the image height (0 = top)
  angle: float = 0.0  # rotation in radians, small (a square never turns into a diamond)
  rgb_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the colour's RGB

  @property
  def combo(self) -> int:
    return combo_index(self.shape, self.colour)


@dataclasses.dataclass(frozen=True)
class Background:
  colour: int            # index into BACKGROUNDS
  kind: str = "flat"     # one of BACKGROUND_KINDS
  gradient: float = 0.0  # brightness added at the far edge minus the near edge, halved
  noise: float = 0.0     # std of the per-pixel noise over the whole image (uint8 units)


@dataclasses.dataclass(frozen=True)
class Scene:
  """Objects (the first is the main object: strictly the largest) on a background."""
  objects: tuple[SceneObject, ...]
  background: Background
  noise_offset: float = 0.0  # in [0, 1): which window of the fixed noise texture (see render_scene)

  @property
  def main(self) -> SceneObject:
    return self.objects[0]

  @property
  def count(self) -> int:
    return len(self.objects)


def _position(obj: SceneObject) -> tuple[str, str]:
  """(vertical, horizontal) third of the image holding the object's centre."""
  h = "left" if obj.x < 1 / 3 else ("right" if obj.x > 2 / 3 else "centre")
  v = "top" if obj.y < 1 / 3 else ("bottom" if obj.y > 2 / 3 else "middle")
  return v, h


def position_phrase(obj: SceneObject) -> str:
  """'on the left', 'at the top', 'in the bottom right', 'in the centre', ..."""
  v, h = _position(obj)
  if v == "middle":
    return "in the centre" if h == "centre" else f"on the {h}"
  if h == "centre":
    return f"at the {v}"
  return f"in the {v} {h}"


_PLACEMENT_TRIES = 128  # candidate positions per object
_LAYOUT_TRIES = 16  # positions of the main object tried before accepting an overlap

# Every scene consumes one block of uniforms with a fixed layout (fast, and any scene is a pure
# function of its generator's state): name -> shape of the slice.
_UNIFORM_LAYOUT: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("count", (1,)),
    ("shape_keys", (len(SHAPES),)),
    ("colour", (MAX_OBJECTS,)),
    ("size", (MAX_OBJECTS,)),
    ("radius", (MAX_OBJECTS,)),
    ("angle", (MAX_OBJECTS,)),
    ("jitter", (MAX_OBJECTS, 3)),
    ("position", (MAX_OBJECTS, _PLACEMENT_TRIES, 2)),
    ("background", (6,)),
)
_UNIFORM_SLICES = {}
_offset = 0
for _name, _shape in _UNIFORM_LAYOUT:
  _UNIFORM_SLICES[_name] = (_offset, _offset + math.prod(_shape), _shape)
  _offset += math.prod(_shape)
_NUM_UNIFORMS = _offset
del _offset, _name, _shape
_SIZE_LO = np.array([lo for _, lo, _ in SIZES])
_SIZE_HI = np.array([hi for _, _, hi in SIZES])
_HELD_OUT_COLOUR_ARRAY = np.array(_HELD_OUT_COLOUR)
# Largest rotation (radians) per shape: about 14 degrees, but under 6 for the square and the
# diamond, which are each other turned by 45 degrees.
_MAX_ANGLE = np.array([0.1 if s in ("square", "diamond") else 0.25 for s in SHAPES])


def sample_scene(rng: np.random.Generator, *, split: str = "train", min_objects: int = 1,
                 max_objects: int = 3) -> Scene:
  """Draws a scene. `split` only decides which shape-colour combinations are allowed."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; choose one of {SPLITS}.")
  _check_object_range(min_objects, max_objects)
  flat = rng.random(_NUM_UNIFORMS)
  u = {name: flat[a:b].reshape(shape) for name, (a, b, shape) in _UNIFORM_SLICES.items()}

  n = min_objects + min(int(u["count"][0] * (max_objects - min_objects + 1)),
                        max_objects - min_objects)
  shapes = np.argsort(u["shape_keys"])[:n]  # distinct shapes within a scene
  held = _HELD_OUT_COLOUR_ARRAY[shapes]
  if split == "held_out":
    colours = held
  else:  # any colour but the shape's held-out partner
    colours = np.minimum((u["colour"][:n] * (len(COLOURS) - 1)).astype(int), len(COLOURS) - 2)
    colours = colours + (colours >= held)

  # Sizes: the main object (first) is strictly larger than every other object.
  us = u["size"][:n]
  if n == 1:
    sizes = np.minimum((us * len(SIZES)).astype(int), len(SIZES) - 1)
  else:
    main_size = 1 + min(int(us[0] * (len(SIZES) - 1)), len(SIZES) - 2)
    sizes = np.minimum((us * main_size).astype(int), main_size - 1)
    sizes[0] = main_size
  radii = _SIZE_LO[sizes] + u["radius"][:n] * (_SIZE_HI[sizes] - _SIZE_LO[sizes])
  angles = (u["angle"][:n] - 0.5) * 2.0 * _MAX_ANGLE[shapes]
  jitter = (u["jitter"][:n] - 0.5) * 24.0

  # Positions: rejection sampling from a fixed batch of candidates per object. The main object is
  # placed first; if some later object finds no candidate clear of those placed before it, the
  # layout starts again with the main object at its next candidate. After _LAYOUT_TRIES layouts the
  # one with the most clearance is kept: objects may then touch or overlap a little (never a
  # failure; in about 1% of 2-3-object scenes, more in crowded 4-5-object ones).
  margin = 0.015
  extents = radii * _EXTENT_ARRAY[shapes]  # bounding radii
  lo, hi = extents + margin, 1.0 - extents - margin
  cands = lo[:, None, None] + u["position"][:n] * (hi - lo)[:, None, None]  # [n, tries, 2]
  best, best_clearance = None, -np.inf
  for attempt in range(_LAYOUT_TRIES if n > 1 else 1):
    centres = np.zeros((n, 2))
    centres[0] = cands[0, attempt]
    worst = np.inf
    for i in range(1, n):
      d = cands[i][:, None, :] - centres[None, :i]
      clearance = (np.sqrt((d * d).sum(-1)) - (extents[:i] + extents[i] + 0.02)).min(axis=1)
      ok = np.flatnonzero(clearance >= 0)
      j = ok[0] if ok.size else int(np.argmax(clearance))
      centres[i] = cands[i, j]
      worst = min(worst, clearance[j])
    if worst > best_clearance:
      best, best_clearance = centres, worst
    if worst >= 0:
      break
  centres = best

  objects = tuple(
      SceneObject(shape=int(shapes[i]), colour=int(colours[i]), size=int(sizes[i]),
                  radius=float(radii[i]), x=float(centres[i, 0]), y=float(centres[i, 1]),
                  angle=float(angles[i]), rgb_jitter=tuple(float(v) for v in jitter[i]))
      for i in range(n))

  ub = u["background"]
  compatible = np.flatnonzero(_BG_COMPATIBLE[:, colours].all(axis=1))
  bg_colour = int(compatible[min(int(ub[0] * compatible.size), compatible.size - 1)])
  kind = BACKGROUND_KINDS[min(int(ub[1] * len(BACKGROUND_KINDS)), len(BACKGROUND_KINDS) - 1)]
  gradient = 0.0 if kind == "flat" else float((15.0 + 25.0 * ub[2]) * (1 if ub[3] < 0.5 else -1))
  background = Background(colour=bg_colour, kind=kind, gradient=gradient,
                          noise=float(1.5 + 3.5 * ub[4]))
  return Scene(objects=objects, background=background, noise_offset=float(ub[5]))


# ------------------------------------------------------------------------------------------------
# Rendering: signed distances (in pixels, negative inside) on the pixel grid of a patch around each
# object; coverage = clip(0.5 - distance, 0, 1) anti-aliases the edges without supersampling.


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
# Distance from the centre to the farthest point of each shape, in units of the object's radius
# (measured on a fine grid, rounded up): bounds the render patch and keeps objects apart.
_EXTENT = {"circle": 0.89, "square": 1.11, "triangle": 1.16, "star": 1.06, "cross": 1.01,
           "diamond": 1.06, "heart": 1.08, "ring": 0.93}
assert tuple(_EXTENT) == SHAPES
_EXTENT_ARRAY = np.array([_EXTENT[s] for s in SHAPES])


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


def object_coverage(obj: SceneObject, image_size: int) -> np.ndarray:
  """float32 [S, S] in [0, 1]: how much of each pixel the object covers (before occlusion)."""
  out = np.zeros((image_size, image_size), np.float32)
  patch = _object_patch(obj, image_size)
  if patch is not None:
    y0, y1, x0, x1, cov = patch
    out[y0:y1, x0:x1] = cov
  return out


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


# ------------------------------------------------------------------------------------------------
# Captions. Every template describes the scene partially; those that mention one object mention the
# main one. Shape, colour and count words are canonical (see zero_shot_task's prompts).

_IMAGE_PREFIXES = ("", "a photo of ", "a picture of ", "an image showing ", "an image of ")
_COUNT_PREFIXES = ("", "a picture of ", "an image with ")
_NOUNS = ("shape", "object")


def _count_phrase(n: int, noun: str = "shape") -> str:
  return f"{NUMBER_WORDS[n - 1]} {noun}{'' if n == 1 else 's'}"


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
  items = list(items)
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


def _cs(obj: SceneObject) -> str:
  return f"{COLOUR_NAMES[obj.colour]} {SHAPES[obj.shape]}"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _t_colour_shape(scene, rng):
  return f"{_pick(rng, _IMAGE_PREFIXES)}{_article(_cs(scene.main))} {_cs(scene.main)}."


def _t_shape(scene, rng):
  s = SHAPES[scene.main.shape]
  return f"{_pick(rng, _IMAGE_PREFIXES)}{_article(s)} {s}."


def _t_colour(scene, rng):
  c = COLOUR_NAMES[scene.main.colour]
  return _pick(rng, (f"something {c}.", f"{_article(c)} {c} object.", f"{_article(c)} {c} shape."))


def _t_size(scene, rng):
  m = scene.main
  size = _pick(rng, SIZE_WORDS[m.size])
  if rng.random() < 0.3:
    return f"{_article(size)} {size} {SHAPES[m.shape]}."
  return f"{_pick(rng, _IMAGE_PREFIXES)}{_article(size)} {size} {_cs(m)}."


def _t_position(scene, rng):
  m = scene.main
  pos = position_phrase(m)
  c, s = COLOUR_NAMES[m.colour], SHAPES[m.shape]
  return _pick(rng, (f"{_article(c)} {c} {s} {pos}.", f"{_article(s)} {s} {pos}.",
                     f"something {c} {pos}."))


def _t_background(scene, rng):
  m = scene.main
  bg = BACKGROUND_NAMES[scene.background.colour]
  c = COLOUR_NAMES[m.colour]
  what = _pick(rng, (f"{_article(c)} {_cs(m)}", f"something {c}"))
  return f"{what} on {_article(bg)} {bg} background."


def _t_all_objects(scene, rng):
  order = rng.permutation(scene.count)
  parts = []
  for i in order:
    o = scene.objects[i]
    if rng.random() < 0.4:
      size = _pick(rng, SIZE_WORDS[o.size])
      parts.append(f"{_article(size)} {size} {_cs(o)}")
    else:
      parts.append(f"{_article(_cs(o))} {_cs(o)}")
  return f"{_pick(rng, _IMAGE_PREFIXES)}{_join(parts)}."


def _t_all_shapes(scene, rng):
  order = rng.permutation(scene.count)
  names = [SHAPES[scene.objects[i].shape] for i in order]
  return f"{_pick(rng, _IMAGE_PREFIXES)}{_join(f'{_article(s)} {s}' for s in names)}."


def _t_all_colours(scene, rng):
  colours = sorted({o.colour for o in scene.objects})
  names = [COLOUR_NAMES[c] for c in rng.permutation(colours)]
  if len(names) == 1:
    c = names[0]
    if scene.count > 1:
      return f"only {c} {_pick(rng, _NOUNS)}s."
    return _pick(rng, (f"something {c}.", f"{_article(c)} {c} {_pick(rng, _NOUNS)}."))
  return f"{_pick(rng, _NOUNS)}s in {_join(names)}."


def _t_count(scene, rng):
  return f"{_pick(rng, _COUNT_PREFIXES)}{_count_phrase(scene.count, _pick(rng, _NOUNS))}."


def _t_count_main(scene, rng):
  phrase = _count_phrase(scene.count, _pick(rng, _NOUNS))
  m = _cs(scene.main)
  if scene.count == 1:
    return f"{phrase}: {_article(m)} {m}."
  return f"{phrase}, including {_article(m)} {m}."


def _t_full(scene, rng):
  del rng
  return full_caption(scene)


CAPTION_TEMPLATES = {
    "colour_shape": _t_colour_shape,   # "a photo of a red circle."
    "shape": _t_shape,                 # "a picture of a triangle."
    "colour": _t_colour,               # "something green."
    "size": _t_size,                   # "a big orange diamond."
    "position": _t_position,           # "a heart on the left."
    "background": _t_background,       # "something pink on a navy background."
    "all_objects": _t_all_objects,     # "a small blue square and a yellow star."
    "all_shapes": _t_all_shapes,       # "a circle, a cross and a heart."
    "all_colours": _t_all_colours,     # "shapes in red and blue."
    "count": _t_count,                 # "a picture of three objects."
    "count_main": _t_count_main,       # "two shapes, including a purple ring."
    "full": _t_full,                   # full_caption(scene)
}
CAPTION_TEMPLATE_NAMES: tuple[str, ...] = tuple(CAPTION_TEMPLATES)
# Templates that mention exactly one object: always the main one.
MAIN_OBJECT_TEMPLATES: tuple[str, ...] = (
    "colour_shape", "shape", "colour", "size", "position", "background", "count_main")


def make_caption(scene: Scene, template: str, rng: np.random.Generator) -> str:
  if template not in CAPTION_TEMPLATES:
    raise ValueError(f"template={template!r}; choose one of {CAPTION_TEMPLATE_NAMES}.")
  return CAPTION_TEMPLATES[template](scene, rng)


# How often each template is drawn. Colour is visible in a single pixel and is learnt within a few
# hundred steps from any caption that names it; shape needs spatial features, and a caption that
# names both colour and shape can mostly be matched by colour alone. Captions that name shapes
# without colours are therefore drawn more often, so that a small model learns shape in minutes.
TEMPLATE_WEIGHTS: dict[str, float] = {
    "colour_shape": 1.5, "shape": 3.0, "colour": 0.5, "size": 1.0, "position": 1.0,
    "background": 0.5, "all_objects": 1.0, "all_shapes": 2.5, "all_colours": 0.5, "count": 0.75,
    "count_main": 0.75, "full": 1.0,
}


assert tuple(TEMPLATE_WEIGHTS) == CAPTION_TEMPLATE_NAMES


def _template_drawer(weights: dict[str, float]):
  """-> draw(scene, rng): a caption from a template drawn with probabilities prop. to `weights`."""
  names = tuple(weights)
  p = np.array([weights[n] for n in names]) / sum(weights.values())
  return lambda scene, rng: make_caption(scene, names[int(rng.choice(len(names), p=p))], rng)


# Monochrome images get captions that name no colour.
MONOCHROME_TEMPLATE_WEIGHTS: dict[str, float] = {"shape": 3.0, "all_shapes": 2.5, "count": 0.5}
_draw_random = _template_drawer(TEMPLATE_WEIGHTS)
_draw_monochrome = _template_drawer(MONOCHROME_TEMPLATE_WEIGHTS)


def monochrome_caption(scene: Scene, rng: np.random.Generator) -> str:
  """A caption with no colour word, for the grey-level rendering of `scene`."""
  return _draw_monochrome(scene, rng)


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
  """A caption from a template drawn with probabilities TEMPLATE_WEIGHTS."""
  return _draw_random(scene, rng)


def full_caption(scene: Scene) -> str:
  """Every object's colour, shape and rough position: main object first, the others left to right.

  "a red circle on the left, a blue star at the top and a green heart in the bottom right."
  """
  others = sorted(scene.objects[1:], key=lambda o: (o.x, o.y))
  parts = [f"{_article(_cs(o))} {_cs(o)} {position_phrase(o)}" for o in (scene.main, *others)]
  return _join(parts) + "."


# ------------------------------------------------------------------------------------------------
# Zero-shot evaluation: class names and prompt templates worded like the captions.

PROMPTS: dict[str, tuple[str, ...]] = {
    "shape": ("a photo of a {}.", "a picture of a {}.", "an image showing a {}.", "a {}."),
    "colour": ("something {}.", "a {} object.", "a {} shape."),
    # formatted with count_phrases(), e.g. "two shapes"
    "count": ("{}.", "a picture of {}.", "an image with {}."),
    # formatted with combo_names(), e.g. "red circle"
    "combo": ("a {}.", "a photo of a {}.", "a picture of a {}."),
}
ZERO_SHOT_TASKS: tuple[str, ...] = tuple(PROMPTS)


def shape_names() -> list[str]:
  return list(SHAPES)


def colour_names() -> list[str]:
  return list(COLOUR_NAMES)


def _check_object_range(min_objects: int, max_objects: int) -> None:
  if not 1 <= min_objects <= MAX_OBJECTS:
    raise ValueError(f"min_objects={min_objects}; it must be in [1, {MAX_OBJECTS}].")
  if not min_objects <= max_objects <= MAX_OBJECTS:
    raise ValueError(
        f"max_objects={max_objects}; it must be in [min_objects={min_objects}, {MAX_OBJECTS}].")


def count_names(min_objects: int = 1, max_objects: int = 3) -> list[str]:
  """Number words for counts min_objects..max_objects: ['one', 'two', 'three']."""
  _check_object_range(min_objects, max_objects)
  return list(NUMBER_WORDS[min_objects - 1:max_objects])


def count_phrases(min_objects: int = 1, max_objects: int = 3) -> list[str]:
  """['one shape', 'two shapes', 'three shapes']: the class names of the count task."""
  _check_object_range(min_objects, max_objects)
  return [_count_phrase(n) for n in range(min_objects, max_objects + 1)]


def combo_names() -> list[str]:
  """f'{colour} {shape}' for all combos, indexed by combo_index(shape, colour)."""
  return [f"{c} {s}" for s in SHAPES for c in COLOUR_NAMES]


def zero_shot_task(task: str, *, min_objects: int = 1, max_objects: int = 3
                   ) -> tuple[list[str], tuple[str, ...], str, int]:
  """(class names, prompt templates, label key of the example dict, label offset).

  The class of an example is `example[label_key] - label_offset`. Counts start at min_objects.
  """
  if task == "shape":
    return shape_names(), PROMPTS["shape"], "shape", 0
  if task == "colour":
    return colour_names(), PROMPTS["colour"], "colour", 0
  if task == "count":
    return count_phrases(min_objects, max_objects), PROMPTS["count"], "count", min_objects
  if task == "combo":
    return combo_names(), PROMPTS["combo"], "combo", 0
  raise ValueError(f"task={task!r}; choose one of {ZERO_SHOT_TASKS}.")


# ------------------------------------------------------------------------------------------------
# The grain random-access source.


@dataclasses.dataclass(frozen=True)
class SyntheticScenes:
  """grain RandomAccessDataSource of procedurally generated scenes; stateless and picklable.

  source[i] -> {"image": uint8 [S, S, 3], "caption": str, "shape": int32, "colour": int32,
                "combo": int32, "count": int32, "index": int32}
  where shape/colour/combo describe the main (largest) object and combo = shape * 8 + colour.

  monochrome_fraction: the share of examples rendered in grey levels with a colourless caption
  (`monochrome` is True for them). Colour can be read off a single pixel, so a model learns it
  first and can match most captions by colour alone; like the colour-distortion augmentation of
  SimCLR, grey examples take that shortcut away and make the towers learn shape. Use it for
  training; evaluation sets keep 0.
  """

  num_records: int
  seed: int = 0
  split: str = "train"
  image_size: int = 64
  min_objects: int = 1
  max_objects: int = 3
  caption_mode: str = "random"
  monochrome_fraction: float = 0.0

  def __post_init__(self):
    for name in ("num_records", "seed", "image_size", "min_objects", "max_objects"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an integer.")
      object.__setattr__(self, name, int(value))
    if self.num_records < 1:
      raise ValueError(f"num_records={self.num_records}; it must be >= 1.")
    if self.seed < 0:
      raise ValueError(f"seed={self.seed}; it must be >= 0.")
    if self.split not in SPLITS:
      raise ValueError(f"split={self.split!r}; choose one of {SPLITS}.")
    if not 16 <= self.image_size <= 1024:
      raise ValueError(f"image_size={self.image_size}; it must be in [16, 1024].")
    _check_object_range(self.min_objects, self.max_objects)
    if self.caption_mode not in CAPTION_MODES:
      raise ValueError(f"caption_mode={self.caption_mode!r}; choose one of {CAPTION_MODES}.")
    if not 0.0 <= float(self.monochrome_fraction) <= 1.0:
      raise ValueError(f"monochrome_fraction={self.monochrome_fraction}; it must be in [0, 1].")
    object.__setattr__(self, "monochrome_fraction", float(self.monochrome_fraction))

  def __len__(self) -> int:
    return self.num_records

  def _check_index(self, index) -> int:
    i = int(index)
    if not 0 <= i < self.num_records:
      raise IndexError(f"index {index} out of range for {self.num_records} records.")
    return i

  def rng_for(self, index: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, SPLITS.index(self.split), self._check_index(index)])

  def _scene_and_rng(self, index: int) -> tuple[Scene, np.random.Generator]:
    """Example `index`'s scene and its generator, left where the caption's draws begin."""
    rng = self.rng_for(index)
    return sample_scene(rng, split=self.split, min_objects=self.min_objects,
                        max_objects=self.max_objects), rng

  def scene_for(self, index: int) -> Scene:
    """The scene of `source[index]` (drawn by the same call as in __getitem__)."""
    return self._scene_and_rng(index)[0]

  def __getitem__(self, index: int) -> dict:
    scene, rng = self._scene_and_rng(index)
    # The scene is drawn first, so it does not depend on the caption mode. The monochrome draw
    # happens only when asked for, so sources without it keep their exact captions.
    mono = self.monochrome_fraction > 0 and rng.random() < self.monochrome_fraction
    if mono:
      caption = monochrome_caption(scene, rng)
    elif self.caption_mode == "random":
      caption = random_caption(scene, rng)
    else:
      caption = full_caption(scene)
    main = scene.main
    return {
        "image": render_scene(scene, self.image_size, monochrome=mono),
        "monochrome": np.bool_(mono),
        "caption": caption,
        "shape": np.int32(main.shape),
        "colour": np.int32(main.colour),
        "combo": np.int32(main.combo),
        "count": np.int32(scene.count),
        "index": np.int32(int(index)),
    }
