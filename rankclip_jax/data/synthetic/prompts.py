"""Zero-shot evaluation tasks: class names and prompt templates worded like the captions.

`ZERO_SHOT_TASKS` is the one registry of the task names (config.evals.<name>.task): shape (8
classes), colour (8), object count, and shape-colour combination (64 classes, for the `held_out`
split). `zero_shot_task(task)` gives a task's class names, prompt templates, label key and label
offset.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from rankclip_jax.data.synthetic.captions import _count_phrase
from rankclip_jax.data.synthetic.vocabulary import COLOUR_NAMES, SHAPES, _check_object_range
from rankclip_jax.registry import Registry


def shape_names() -> list[str]:
  return list(SHAPES)


def colour_names() -> list[str]:
  return list(COLOUR_NAMES)


def count_phrases(min_objects: int = 1, max_objects: int = 3) -> list[str]:
  """['one shape', 'two shapes', 'three shapes']: the class names of the count task."""
  _check_object_range(min_objects, max_objects)
  return [_count_phrase(n) for n in range(min_objects, max_objects + 1)]


def combo_names() -> list[str]:
  """f'{colour} {shape}' for all combos, indexed by combo_index(shape, colour)."""
  return [f"{c} {s}" for s in SHAPES for c in COLOUR_NAMES]


@dataclasses.dataclass(frozen=True)
class ZeroShotTask:
  """A config.evals.<name>.task: its prompt templates (each formatted with a class name) and how
  its classes and labels are found. The class of an example is `example[label_key] - offset`."""

  prompts: tuple[str, ...]
  class_names: Callable[[int, int], list[str]]  # (min_objects, max_objects) -> class names
  label_key: str
  offset_is_min_objects: bool = False  # labels start at min_objects (else at 0)


ZERO_SHOT_TASKS: Registry[ZeroShotTask] = Registry("config.evals.<name>.task")
ZERO_SHOT_TASKS.add("shape", ZeroShotTask(
    ("a photo of a {}.", "a picture of a {}.", "an image showing a {}.", "a {}."),
    lambda lo, hi: shape_names(), "shape"))
ZERO_SHOT_TASKS.add("colour", ZeroShotTask(
    ("something {}.", "a {} object.", "a {} shape."),
    lambda lo, hi: colour_names(), "colour"))
# Formatted with count_phrases(), e.g. "two shapes".
ZERO_SHOT_TASKS.add("count", ZeroShotTask(
    ("{}.", "a picture of {}.", "an image with {}."),
    count_phrases, "count", offset_is_min_objects=True))
# Formatted with combo_names(), e.g. "red circle".
ZERO_SHOT_TASKS.add("combo", ZeroShotTask(
    ("a {}.", "a photo of a {}.", "a picture of a {}."),
    lambda lo, hi: combo_names(), "combo"))

# Each task's prompt templates, read from the registry.
PROMPTS: dict[str, tuple[str, ...]] = {name: t.prompts for name, t in ZERO_SHOT_TASKS.items()}


def zero_shot_task(task: str, *, min_objects: int = 1, max_objects: int = 3
                   ) -> tuple[list[str], tuple[str, ...], str, int]:
  """(class names, prompt templates, label key of the example dict, label offset).

  The class of an example is `example[label_key] - label_offset`. Counts start at min_objects.
  An unknown task is a ConfigError (a ValueError) naming the choices.
  """
  t = ZERO_SHOT_TASKS.get(task)
  offset = min_objects if t.offset_is_min_objects else 0
  return t.class_names(min_objects, max_objects), t.prompts, t.label_key, offset
