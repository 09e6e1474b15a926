"""The words and numbers every other part of the synthetic scenes is built from: shapes, colours,
sizes, backgrounds, number words, splits and the held-out shape-colour combinations.

Vocabulary words are canonical: a shape or colour is always called by its name in `SHAPES` /
`COLOUR_NAMES`, so prompts built from those names match the training captions.
"""

from __future__ import annotations

import numpy as np

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "diamond", "heart", "ring")

# Distance from the centre to the farthest point of each shape, in units of the object's radius
# (measured on a fine grid of render's distance fields, rounded up): bounds the render patch and
# keeps objects apart.
_EXTENT = {"circle": 0.89, "square": 1.11, "triangle": 1.16, "star": 1.06, "cross": 1.01,
           "diamond": 1.06, "heart": 1.08, "ring": 0.93}
assert tuple(_EXTENT) == SHAPES

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

NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five")
MAX_OBJECTS = len(NUMBER_WORDS)


def _check_object_range(min_objects: int, max_objects: int) -> None:
  if not 1 <= min_objects <= MAX_OBJECTS:
    raise ValueError(f"min_objects={min_objects}; it must be in [1, {MAX_OBJECTS}].")
  if not min_objects <= max_objects <= MAX_OBJECTS:
    raise ValueError(
        f"max_objects={max_objects}; it must be in [min_objects={min_objects}, {MAX_OBJECTS}].")


SPLITS: tuple[str, ...] = ("train", "test", "held_out")

# One held-out colour per shape, all colours distinct (a permuted diagonal): shape i is never shown
# in colour _HELD_OUT_COLOUR[i] during training, but every shape and every colour still appears in
# training with its 7 other partners.
_HELD_OUT_COLOUR: tuple[int, ...] = (3, 6, 0, 5, 7, 1, 4, 2)
HELD_OUT_COMBOS: frozenset[tuple[int, int]] = frozenset(
    (s, c) for s, c in enumerate(_HELD_OUT_COLOUR))


def combo_index(shape: int, colour: int) -> int:
  return int(shape) * len(COLOURS) + int(colour)
