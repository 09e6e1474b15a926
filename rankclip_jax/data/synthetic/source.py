"""The grain random-access source of the synthetic scenes. Example `i` of split `s` with seed `k`
draws, from the generator `np.random.default_rng([k, split_id, i])`, first its scene and then its
caption; the scene is rendered at the source's image size. Its synthetic caption (ALIP's, when asked
for) comes from a generator of its own, `np.random.default_rng([k, split_id, i, CAPTIONER_STREAM])`,
so that asking for it leaves every other field bit-identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rankclip_jax.data.synthetic.captioner import CAPTIONER_ERROR, captioner_caption
from rankclip_jax.data.synthetic.captions import (CAPTION_MODES, full_caption, monochrome_caption,
                                                  random_caption)
from rankclip_jax.data.synthetic.render import render_scene
from rankclip_jax.data.synthetic.scenes import Scene, sample_scene
from rankclip_jax.data.synthetic.vocabulary import SPLITS, _check_object_range

CAPTIONER_STREAM = 0xA11B  # tags the captioner's generator apart from the example's own


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

  synthetic_captions: also give "synthetic_caption", the description of a stand-in captioning model
  (captioner.py) with a share `captioner_error` of its attributes wrong: ALIP's second caption.
  """

  num_records: int
  seed: int = 0
  split: str = "train"
  image_size: int = 64
  min_objects: int = 1
  max_objects: int = 3
  caption_mode: str = "random"
  monochrome_fraction: float = 0.0
  synthetic_captions: bool = False
  captioner_error: float = CAPTIONER_ERROR

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
    if not 0.0 <= float(self.captioner_error) <= 1.0:
      raise ValueError(f"captioner_error={self.captioner_error}; it must be in [0, 1].")
    object.__setattr__(self, "captioner_error", float(self.captioner_error))

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
    extra = {}
    if self.synthetic_captions:
      captioner = np.random.default_rng(
          [self.seed, SPLITS.index(self.split), int(index), CAPTIONER_STREAM])
      extra["synthetic_caption"] = captioner_caption(
          scene, captioner, error=self.captioner_error, monochrome=bool(mono), split=self.split)
    return {
        "image": render_scene(scene, self.image_size, monochrome=mono),
        "monochrome": np.bool_(mono),
        "caption": caption,
        "shape": np.int32(main.shape),
        "colour": np.int32(main.colour),
        "combo": np.int32(main.combo),
        "count": np.int32(scene.count),
        "index": np.int32(int(index)),
        **extra,
    }
