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
class names, prompt templates (worded like the captions), label key and label offset; the task
names are those of the registry `ZERO_SHOT_TASKS`.

Vocabulary words are canonical: a shape or colour is always called by its name in `SHAPES` /
`COLOUR_NAMES`, so prompts built from those names match the training captions.

One module per job, each depending only on those before it:
  vocabulary  shapes, colours, sizes, backgrounds, number words, splits, held-out combinations
  scenes      Scene / SceneObject / Background, sample_scene, position_phrase
  render      the signed-distance shapes, render_background, render_scene (and the noise)
  captions    the caption templates, make_caption, random / monochrome / full captions
  captioner   a stand-in captioning model with a share of wrong attributes (ALIP's second caption)
  prompts     the zero-shot tasks: ZERO_SHOT_TASKS, PROMPTS, class names, zero_shot_task
  source      SyntheticScenes, the grain random-access source (uses all of the above)
This package re-exports their public names: `synthetic.sample_scene`, `synthetic.SHAPES`, ...
"""

from rankclip_jax.data.synthetic.captioner import CAPTIONER_ERROR
from rankclip_jax.data.synthetic.captioner import captioner_caption
from rankclip_jax.data.synthetic.captions import CAPTION_MODES
from rankclip_jax.data.synthetic.captions import CAPTION_TEMPLATE_NAMES
from rankclip_jax.data.synthetic.captions import CAPTION_TEMPLATES
from rankclip_jax.data.synthetic.captions import full_caption
from rankclip_jax.data.synthetic.captions import make_caption
from rankclip_jax.data.synthetic.captions import monochrome_caption
from rankclip_jax.data.synthetic.captions import MONOCHROME_TEMPLATE_WEIGHTS
from rankclip_jax.data.synthetic.captions import random_caption
from rankclip_jax.data.synthetic.captions import TEMPLATE_WEIGHTS
from rankclip_jax.data.synthetic.prompts import colour_names
from rankclip_jax.data.synthetic.prompts import combo_names
from rankclip_jax.data.synthetic.prompts import count_phrases
from rankclip_jax.data.synthetic.prompts import PROMPTS
from rankclip_jax.data.synthetic.prompts import shape_names
from rankclip_jax.data.synthetic.prompts import zero_shot_task
from rankclip_jax.data.synthetic.prompts import ZERO_SHOT_TASKS
from rankclip_jax.data.synthetic.prompts import ZeroShotTask
from rankclip_jax.data.synthetic.render import render_background
from rankclip_jax.data.synthetic.render import render_scene
from rankclip_jax.data.synthetic.scenes import Background
from rankclip_jax.data.synthetic.scenes import position_phrase
from rankclip_jax.data.synthetic.scenes import sample_scene
from rankclip_jax.data.synthetic.scenes import Scene
from rankclip_jax.data.synthetic.scenes import SceneObject
from rankclip_jax.data.synthetic.source import SyntheticScenes
from rankclip_jax.data.synthetic.vocabulary import BACKGROUND_KINDS
from rankclip_jax.data.synthetic.vocabulary import BACKGROUND_NAMES
from rankclip_jax.data.synthetic.vocabulary import BACKGROUND_RGB
from rankclip_jax.data.synthetic.vocabulary import BACKGROUNDS
from rankclip_jax.data.synthetic.vocabulary import COLOUR_NAMES
from rankclip_jax.data.synthetic.vocabulary import COLOUR_RGB
from rankclip_jax.data.synthetic.vocabulary import COLOURS
from rankclip_jax.data.synthetic.vocabulary import combo_index
from rankclip_jax.data.synthetic.vocabulary import HELD_OUT_COMBOS
from rankclip_jax.data.synthetic.vocabulary import MAX_OBJECTS
from rankclip_jax.data.synthetic.vocabulary import NUMBER_WORDS
from rankclip_jax.data.synthetic.vocabulary import SHAPES
from rankclip_jax.data.synthetic.vocabulary import SIZE_WORDS
from rankclip_jax.data.synthetic.vocabulary import SIZES
from rankclip_jax.data.synthetic.vocabulary import SPLITS

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_KINDS",
    "BACKGROUND_NAMES",
    "BACKGROUND_RGB",
    "Background",
    "CAPTION_MODES",
    "CAPTION_TEMPLATES",
    "CAPTION_TEMPLATE_NAMES",
    "CAPTIONER_ERROR",
    "COLOURS",
    "COLOUR_NAMES",
    "COLOUR_RGB",
    "HELD_OUT_COMBOS",
    "MAX_OBJECTS",
    "MONOCHROME_TEMPLATE_WEIGHTS",
    "NUMBER_WORDS",
    "PROMPTS",
    "SHAPES",
    "SIZES",
    "SIZE_WORDS",
    "SPLITS",
    "Scene",
    "SceneObject",
    "SyntheticScenes",
    "TEMPLATE_WEIGHTS",
    "ZERO_SHOT_TASKS",
    "ZeroShotTask",
    "colour_names",
    "captioner_caption",
    "combo_index",
    "combo_names",
    "count_phrases",
    "full_caption",
    "make_caption",
    "monochrome_caption",
    "position_phrase",
    "random_caption",
    "render_background",
    "render_scene",
    "sample_scene",
    "shape_names",
    "zero_shot_task",
]
