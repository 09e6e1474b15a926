"""What the synthetic-scene tests need of rankclip_jax.data.synthetic beyond its library API, built
here from its public pieces (and, for coverage, the render module's object patch)."""

from __future__ import annotations

import numpy as np

from rankclip_jax.data import synthetic as S
from rankclip_jax.data.synthetic.render import _object_patch

NUM_COMBOS = len(S.SHAPES) * len(S.COLOURS)
# Caption templates that mention exactly one object: always the main one.
MAIN_OBJECT_TEMPLATES: tuple[str, ...] = (
    "colour_shape", "shape", "colour", "size", "position", "background", "count_main")


def scene_for(source: S.SyntheticScenes, index: int) -> S.Scene:
  """The scene of `source[index]`: drawn first from the example's generator, as __getitem__ does
  (tests check that its rendering is the source's image)."""
  return S.sample_scene(source.rng_for(index), split=source.split,
                        min_objects=source.min_objects, max_objects=source.max_objects)


def object_coverage(obj: S.SceneObject, image_size: int) -> np.ndarray:
  """float32 [S, S] in [0, 1]: how much of each pixel the object covers (before occlusion)."""
  out = np.zeros((image_size, image_size), np.float32)
  patch = _object_patch(obj, image_size)
  if patch is not None:
    y0, y1, x0, x1, cov = patch
    out[y0:y1, x0:x1] = cov
  return out
