"""Scenes: what a synthetic example shows (objects and a background, in units of the image size,
so a scene renders at any resolution) and how one is drawn from a generator (`sample_scene`).

A scene is a pure function of its generator's state; rendering and captions only read it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rankclip_jax.data.synthetic.vocabulary import (
    BACKGROUND_KINDS, COLOURS, MAX_OBJECTS, SHAPES, SIZES, SPLITS, _BG_COMPATIBLE, _EXTENT,
    _HELD_OUT_COLOUR, _check_object_range, combo_index)


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
_EXTENT_ARRAY = np.array([_EXTENT[s] for s in SHAPES])
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
