"""Captions: templates that each describe a scene *partially* and in different words ("a red
circle.", "something green on a beige background.", "three shapes, including a purple ring.", ...),
and the draws that pick one (`random_caption`, `monochrome_caption`), or the one caption that names
everything (`full_caption`).

Every template describes the scene partially; those that mention one object mention the main one.
Shape, colour and count words are canonical (see the zero-shot prompts in prompts.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rankclip_jax.data.synthetic.scenes import Scene, SceneObject, position_phrase
from rankclip_jax.data.synthetic.vocabulary import (BACKGROUND_NAMES, COLOUR_NAMES, NUMBER_WORDS,
                                                    SHAPES, SIZE_WORDS)

# How SyntheticScenes captions an example: a random template, or full_caption.
CAPTION_MODES: tuple[str, ...] = ("random", "full")

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
