"""A stand-in captioning model for the embedded scenes: the synthetic caption ALIP trains on.

ALIP pairs every image with a second caption written by a captioning model (the authors used OFA).
A captioner describes the whole image in its own words, but it is not the ground truth: it names
objects it confuses, miscounts, misses colours. `captioner_caption` plays that part: it describes
every object of the scene (main object first, then the others left to right; the main object's size
and the scene's count or background now and then), and gets each attribute it names wrong with
probability `error`: a colour, a shape, a size, the count (off by one) or the background replaced by
another one drawn uniformly.

Default error: 0.2, one attribute in five. A caption of a 1-3 object scene names 2-8 attributes,
so most captions of multi-object scenes carry at least one mistake (as a captioner's often do),
while each attribute is still right four times in five: the caption is informative, and the
consistency gates of ALIP have imperfect captions to weigh down. At 0 the captioner is a perfect
describer (not a useful stand-in), at 0.875 (7 of 8) its colours and shapes carry no information.

Mistakes never name a shape-colour combination of `HELD_OUT_COMBOS` outside the held-out split, so
the zero-shot held-out evaluation stays unseen by the text tower too. Monochrome images get no colour
words (the captioner sees grey). The caption is drawn from its own generator (SyntheticScenes:
seeded by (seed, split, index) and a stream tag), so asking for it changes nothing else of an
example.
"""

from __future__ import annotations

import numpy as np

from rankclip_jax.data.synthetic.captions import _article, _join  # pylint: disable=protected-access
from rankclip_jax.data.synthetic.scenes import Scene
from rankclip_jax.data.synthetic.vocabulary import (BACKGROUND_NAMES, COLOUR_NAMES,
                                                    HELD_OUT_COMBOS, MAX_OBJECTS, NUMBER_WORDS,
                                                    SHAPES, SIZE_WORDS)

CAPTIONER_ERROR = 0.2  # the share of attributes the captioner gets wrong (see the docstring)

_PREFIXES = ("", "a photo of ", "an image of ", "a picture showing ", "a drawing of ")


def _other(rng: np.random.Generator, true: int, n: int, allowed=lambda v: True) -> int:
  """A value in range(n) other than `true`, uniformly among those `allowed`."""
  options = [v for v in range(n) if v != true and allowed(v)]
  return options[int(rng.integers(len(options)))]


def _maybe_wrong(rng, true: int, n: int, error: float, allowed=lambda v: True) -> int:
  return _other(rng, true, n, allowed) if rng.random() < error else true


def captioner_caption(scene: Scene, rng: np.random.Generator, *, error: float = CAPTIONER_ERROR,
                      monochrome: bool = False, split: str = "train") -> str:
  """The captioner's description of `scene`, each attribute wrong with probability `error`.

  "a photo of a large red circle, a blue star and a green heart on a white background."
  """
  if not 0.0 <= error <= 1.0:
    raise ValueError(f"captioner error={error}; it must be in [0, 1].")
  check_combos = split != "held_out"
  others = sorted(scene.objects[1:], key=lambda o: (o.x, o.y))
  parts = []
  for k, obj in enumerate((scene.main, *others)):
    # The shape first, never one that the (true) colour would make a held-out combination of,
    # then the colour, never one that makes the described shape a held-out combination.
    shape = _maybe_wrong(rng, obj.shape, len(SHAPES), error, lambda s: not (
        check_combos and (s, obj.colour) in HELD_OUT_COMBOS))
    words = [SHAPES[shape]]
    if not monochrome:
      colour = _maybe_wrong(rng, obj.colour, len(COLOUR_NAMES), error, lambda c: not (
          check_combos and (shape, c) in HELD_OUT_COMBOS))
      words.insert(0, COLOUR_NAMES[colour])
    if k == 0 and rng.random() < 0.5:
      size = _maybe_wrong(rng, obj.size, len(SIZE_WORDS), error)
      words.insert(0, SIZE_WORDS[size][int(rng.integers(len(SIZE_WORDS[size])))])
    phrase = " ".join(words)
    parts.append(f"{_article(phrase)} {phrase}")
  text = _pick_prefix(rng) + _join(parts)
  if scene.count > 1 and rng.random() < 0.3:
    count = _maybe_wrong(rng, scene.count - 1, MAX_OBJECTS, error,
                         lambda c: abs(c - (scene.count - 1)) == 1)
    text = f"{NUMBER_WORDS[count]} shape{'s' if count else ''}: " + _join(parts)
  if rng.random() < 0.3:
    bg = _maybe_wrong(rng, scene.background.colour, len(BACKGROUND_NAMES), error)
    text += f" on {_article(BACKGROUND_NAMES[bg])} {BACKGROUND_NAMES[bg]} background"
  return text + "."


def _pick_prefix(rng: np.random.Generator) -> str:
  return _PREFIXES[int(rng.integers(len(_PREFIXES)))]
