"""Tests of the embedded synthetic scenes (rankclip_jax.data.synthetic)."""

from __future__ import annotations

import collections
import itertools
import pickle
import re

import numpy as np
import pytest

from rankclip_jax.data import synthetic as S
from rankclip_jax.data.synthetic.render import _SDF
from rankclip_jax.data.synthetic.vocabulary import _BG_COMPATIBLE, _EXTENT
from synthetic_helpers import MAIN_OBJECT_TEMPLATES, NUM_COMBOS, object_coverage, scene_for

N_COLOURS = len(S.COLOURS)
POSITION_RE = re.compile(r"(on the (?:left|right)|at the (?:top|bottom)|in the centre|"
                         r"in the (?:top|bottom) (?:left|right))")
WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)?")
SIZE_OF_WORD = {w: i for i, words in enumerate(S.SIZE_WORDS) for w in words}
COMPLETE_TEMPLATES = ("all_objects", "all_shapes", "all_colours", "full")


def caption_problems(caption: str, scene: S.Scene, template: str | None = None) -> list[str]:
  """What the caption says that is not true of the scene (empty: the caption fits the scene)."""
  problems = []
  objs = scene.objects
  words = WORD_RE.findall(caption)
  colours = {S.COLOUR_NAMES[o.colour] for o in objs}
  shapes = {S.SHAPES[o.shape] for o in objs}
  pairs = {(S.COLOUR_NAMES[o.colour], S.SHAPES[o.shape]) for o in objs}
  said_colours = [w for w in words if w in S.COLOUR_NAMES]
  said_shapes = [w for w in words if w in S.SHAPES]
  if not set(said_colours) <= colours:
    problems.append(f"colours {said_colours} not all in {colours}")
  if not set(said_shapes) <= shapes:
    problems.append(f"shapes {said_shapes} not all in {shapes}")
  if len(said_shapes) > scene.count:
    problems.append(f"{len(said_shapes)} shapes named for {scene.count} objects")
  for w in words:
    if w in S.NUMBER_WORDS and S.NUMBER_WORDS.index(w) + 1 != scene.count:
      problems.append(f"count word {w!r} but {scene.count} objects")
  # An adjacent "<colour> <shape>" must be one object.
  for a, b in zip(words, words[1:]):
    if a in S.COLOUR_NAMES and b in S.SHAPES and (a, b) not in pairs:
      problems.append(f"no {a} {b}")
  # "<size> [<colour>] <shape>" must be one object of that size.
  for k, w in enumerate(words):
    if w in SIZE_OF_WORD:
      rest = [x for x in words[k + 1:k + 3] if x in S.SHAPES]
      if not rest:
        problems.append(f"size word {w!r} without a shape")
      elif not any(S.SHAPES[o.shape] == rest[0] and o.size == SIZE_OF_WORD[w] for o in objs):
        problems.append(f"no {w} {rest[0]}")
  # Positions: "<colour> <shape> <position>" / "<shape> <position>" / "<colour> <position>".
  for m in POSITION_RE.finditer(caption):
    before = WORD_RE.findall(caption[:m.start()])[-2:]
    ok = [o for o in objs if S.position_phrase(o) == m.group(1)]
    if before and before[-1] in S.SHAPES:
      ok = [o for o in ok if S.SHAPES[o.shape] == before[-1]]
    if before and before[-1] in S.COLOUR_NAMES:
      ok = [o for o in ok if S.COLOUR_NAMES[o.colour] == before[-1]]
    if not ok:
      problems.append(f"nothing fits {' '.join(before)} {m.group(1)}")
  bg = re.search(r"on an? ([a-z ]+) background", caption)
  if bg and bg.group(1) != S.BACKGROUND_NAMES[scene.background.colour]:
    problems.append(f"background {bg.group(1)!r} is "
                    f"{S.BACKGROUND_NAMES[scene.background.colour]!r}")
  if "only" in words and len(colours) != 1:
    problems.append(f"'only' one colour but the scene has {colours}")
  if template in MAIN_OBJECT_TEMPLATES:
    main_c, main_s = S.COLOUR_NAMES[scene.main.colour], S.SHAPES[scene.main.shape]
    if set(said_colours) - {main_c} or set(said_shapes) - {main_s}:
      problems.append(f"template {template} does not describe the main object {main_c} {main_s}")
  if template in COMPLETE_TEMPLATES:
    if template == "all_colours":
      if set(said_colours) != colours:
        problems.append(f"template {template} omits colours of {colours}")
    elif set(said_shapes) != shapes:
      problems.append(f"template {template} omits shapes of {shapes}")
  return problems


def scenes(split="train", n=300, **kw):
  src = S.SyntheticScenes(num_records=n, split=split, **kw)
  return [scene_for(src, i) for i in range(n)]


# ------------------------------------------------------------------------------------------------


def test_vocabulary():
  assert len(S.SHAPES) >= 8 and len(set(S.SHAPES)) == len(S.SHAPES)
  assert len(S.COLOURS) >= 8 and len(set(S.COLOUR_NAMES)) == len(S.COLOUR_NAMES)
  rgb = S.COLOUR_RGB
  dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
  assert dist.min() > 80, "object colours too similar"
  bg_words = set(" ".join(S.BACKGROUND_NAMES).split())
  assert not bg_words & (set(S.COLOUR_NAMES) | set(S.SHAPES)), "background named like an object"
  assert len(S.SIZES) == 3 and all(a[2] < b[1] for a, b in zip(S.SIZES, S.SIZES[1:]))
  # Held-out combos: one per shape, distinct colours, not the plain diagonal.
  held = sorted(S.HELD_OUT_COMBOS)
  assert len(held) == len(S.SHAPES) == 8
  assert [s for s, _ in held] == list(range(len(S.SHAPES)))
  assert len({c for _, c in held}) == len(held)
  assert any(s != c for s, c in held)


def test_example_keys_shapes_and_dtypes():
  src = S.SyntheticScenes(num_records=20, image_size=48, max_objects=3)
  for i in (0, 7, 19):
    ex = src[i]
    assert set(ex) == {"image", "caption", "shape", "colour", "combo", "count", "index",
                       "monochrome"}
    assert not ex["monochrome"]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (48, 48, 3)
    assert isinstance(ex["caption"], str) and ex["caption"].endswith(".")
    for k in ("shape", "colour", "combo", "count", "index"):
      assert isinstance(ex[k], np.integer), k
    assert ex["combo"] == ex["shape"] * N_COLOURS + ex["colour"]
    assert 0 <= ex["shape"] < len(S.SHAPES) and 0 <= ex["colour"] < N_COLOURS
    assert 1 <= ex["count"] <= 3 and ex["index"] == i
  assert len(src) == 20
  assert src[np.int64(3)]["index"] == 3
  with pytest.raises(IndexError):
    src[20]
  with pytest.raises(IndexError):
    src[-1]


def test_labels_describe_the_main_object_which_is_strictly_largest():
  src = S.SyntheticScenes(num_records=200, min_objects=1, max_objects=3)
  for i in range(0, 200, 5):
    scene, ex = scene_for(src, i), src[i]
    main = scene.main
    assert (ex["shape"], ex["colour"], ex["count"]) == (main.shape, main.colour, scene.count)
    for other in scene.objects[1:]:
      assert other.size < main.size and other.radius < main.radius
    assert len({o.shape for o in scene.objects}) == scene.count  # distinct shapes


def test_determinism():
  a = S.SyntheticScenes(num_records=100, seed=3)
  b = S.SyntheticScenes(num_records=100, seed=3)
  for i in (42, 5, 42, 0, 99):  # any order, repeated
    ea, eb = a[i], b[i]
    assert np.array_equal(ea["image"], eb["image"]) and ea["caption"] == eb["caption"]
    assert np.array_equal(a[i]["image"], ea["image"])
  differ = lambda x, y: not np.array_equal(x[7]["image"], y[7]["image"])
  assert differ(a, S.SyntheticScenes(num_records=100, seed=4))
  assert differ(a, S.SyntheticScenes(num_records=100, seed=3, split="test"))
  assert differ(a, S.SyntheticScenes(num_records=100, seed=3, split="held_out"))
  assert not np.array_equal(a[7]["image"], a[8]["image"])
  # The scene depends on neither the image size nor the caption mode; 'full' is full_caption.
  full = S.SyntheticScenes(num_records=100, seed=3, image_size=32, caption_mode="full")
  assert scene_for(full, 7) == scene_for(a, 7)
  assert full[7]["caption"] == S.full_caption(scene_for(a, 7))
  assert full[7]["image"].shape == (32, 32, 3)
  np.testing.assert_array_equal(S.render_scene(scene_for(a, 7), 32), full[7]["image"])
  # scene_for(i) is the scene that source[i] shows (one sampling path): its rendering is the image.
  for i in (0, 7, 42):
    np.testing.assert_array_equal(S.render_scene(scene_for(a, i), a.image_size), a[i]["image"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), "split"),
    (dict(caption_mode="short"), "caption_mode"),
    (dict(image_size=8), "image_size"),
    (dict(image_size=64.0), "image_size"),
    (dict(min_objects=0), "min_objects"),
    (dict(min_objects=3, max_objects=2), "max_objects"),
    (dict(max_objects=S.MAX_OBJECTS + 1), "max_objects"),
    (dict(num_records=0), "num_records"),
    (dict(seed=-1), "seed"),
])
def test_constructor_validation(kwargs, match):
  args = dict(num_records=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    S.SyntheticScenes(**args)


def test_zero_shot_task_validation():
  with pytest.raises(ValueError, match=r"task='size'; choose one of \('shape', 'colour', "
                                       r"'count', 'combo'\)"):
    S.zero_shot_task("size")
  with pytest.raises(ValueError, match="max_objects"):
    S.count_phrases(1, S.MAX_OBJECTS + 1)
  with pytest.raises(ValueError, match="max_objects"):
    S.zero_shot_task("count", max_objects=S.MAX_OBJECTS + 1)


@pytest.mark.parametrize("split", ["train", "test", "held_out"])
def test_random_captions_are_true(split):
  src = S.SyntheticScenes(num_records=400, split=split)
  for i in range(400):
    caption, scene = src[i]["caption"], scene_for(src, i)
    assert not caption_problems(caption, scene), (caption, scene, caption_problems(caption, scene))


def test_every_template_is_true_and_main_templates_describe_the_main_object():
  rng = np.random.default_rng(0)
  for scene in scenes(n=60, max_objects=4):
    for name in S.CAPTION_TEMPLATE_NAMES:
      caption = S.make_caption(scene, name, rng)
      problems = caption_problems(caption, scene, template=name)
      assert not problems, (name, caption, problems)
  with pytest.raises(ValueError, match="template"):
    S.make_caption(scene, "nope", rng)


def test_full_caption_names_every_object_with_its_position():
  for scene in scenes(n=100, min_objects=1, max_objects=3):
    caption = S.full_caption(scene)
    assert caption == S.full_caption(scene)
    for o in scene.objects:
      assert f"{S.COLOUR_NAMES[o.colour]} {S.SHAPES[o.shape]} {S.position_phrase(o)}" in caption
    assert caption.startswith(f"{'an' if S.COLOUR_NAMES[scene.main.colour][0] in 'aeiou' else 'a'} "
                              f"{S.COLOUR_NAMES[scene.main.colour]} {S.SHAPES[scene.main.shape]}")


def test_splits_respect_held_out_combos():
  held_indices = {S.combo_index(s, c) for s, c in S.HELD_OUT_COMBOS}
  seen_shapes, seen_colours, seen_combos = set(), set(), set()
  for split in ("train", "test"):
    src = S.SyntheticScenes(num_records=400, split=split, max_objects=3)
    for i in range(400):
      scene = scene_for(src, i)
      for o in scene.objects:
        assert (o.shape, o.colour) not in S.HELD_OUT_COMBOS, (split, i, o)
        seen_shapes.add(o.shape)
        seen_colours.add(o.colour)
        seen_combos.add(o.combo)
    assert not any(src[i]["combo"] in held_indices for i in range(20))
  # Every shape and colour is still trained on; the non-held-out combos all appear.
  assert seen_shapes == set(range(len(S.SHAPES))) and seen_colours == set(range(N_COLOURS))
  assert seen_combos == set(range(NUM_COMBOS)) - held_indices
  src = S.SyntheticScenes(num_records=300, split="held_out", max_objects=3)
  held_seen = set()
  for i in range(300):
    scene = scene_for(src, i)
    assert all((o.shape, o.colour) in S.HELD_OUT_COMBOS for o in scene.objects), (i, scene)
    held_seen.add(scene.main.combo)
  assert held_seen == held_indices
  assert all(src[i]["combo"] in held_indices for i in range(20))


def test_object_colour_at_its_centre():
  size = 64
  checked = 0
  for scene in scenes(n=120, max_objects=3):
    img = S.render_scene(scene, size).astype(np.float32)
    cover = [object_coverage(o, size) for o in scene.objects]
    for k, o in enumerate(scene.objects):
      # Inside every shape: the centre, except for the ring (a point on its band).
      dx = 0.71 * o.radius if S.SHAPES[o.shape] == "ring" else 0.0
      px = min(size - 1, int((o.x + dx) * size))
      py = min(size - 1, int(o.y * size))
      assert cover[k][py, px] > 0.9, (S.SHAPES[o.shape], cover[k][py, px])
      if any(cover[j][py, px] > 0 for j in range(len(cover)) if j != k):
        continue  # occluded
      pixel = img[py, px]
      nearest = np.argmin(np.linalg.norm(S.COLOUR_RGB - pixel, axis=-1))
      assert nearest == o.colour, (pixel, S.COLOUR_NAMES[o.colour])
      assert np.abs(pixel - S.COLOUR_RGB[o.colour]).max() < 40
      checked += 1
  assert checked > 150


@pytest.mark.parametrize("x, y, phrase", [
    (0.15, 0.5, "on the left"), (0.85, 0.45, "on the right"), (0.5, 0.12, "at the top"),
    (0.55, 0.9, "at the bottom"), (0.5, 0.5, "in the centre"), (0.1, 0.1, "in the top left"),
    (0.9, 0.2, "in the top right"), (0.2, 0.8, "in the bottom left"),
    (0.8, 0.85, "in the bottom right"),
])
def test_position_phrase(x, y, phrase):
  obj = S.SceneObject(shape=0, colour=0, size=0, radius=0.1, x=x, y=y)
  assert S.position_phrase(obj) == phrase
  # ... and the rendered object really is there (centroid of its pixels, x to the right, y down).
  cov = object_coverage(obj, 64)
  ys, xs = np.nonzero(cov > 0.5)
  assert abs(xs.mean() + 0.5 - x * 64) < 1.5 and abs(ys.mean() + 0.5 - y * 64) < 1.5


def test_shape_orientation_and_extent():
  def mask(shape, x=0.5, y=0.5, radius=0.2):
    obj = S.SceneObject(shape=S.SHAPES.index(shape), colour=0, size=2, radius=radius, x=x, y=y)
    return object_coverage(obj, 64) > 0.5
  rows = lambda m: m.sum(axis=1)[m.any(axis=1)]
  assert rows(mask("triangle"))[0] < rows(mask("triangle"))[-1] / 3  # points up
  assert rows(mask("heart"))[0] > rows(mask("heart"))[-1] * 2  # point down
  # Every shape lies within its extent (which bounds the render patch and the placement).
  grid = np.linspace(-1.5, 1.5, 601, dtype=np.float32)
  u, v = np.meshgrid(grid, grid)
  for shape in S.SHAPES:
    inside = _SDF[shape](u, v, 1.0) <= 0
    assert np.hypot(u[inside], v[inside]).max() <= _EXTENT[shape], shape
    assert np.hypot(u[inside], v[inside]).max() > _EXTENT[shape] - 0.05, shape  # and is tight
    # The render patch cuts nothing off: coverage equals the distance field on the whole image.
    obj = S.SceneObject(shape=S.SHAPES.index(shape), colour=0, size=2, radius=0.22, x=0.4, y=0.55,
                        angle=0.2)
    size = 256
    dx = np.arange(size, dtype=np.float32)[None, :] + 0.5 - obj.x * size
    dy = np.arange(size, dtype=np.float32)[:, None] + 0.5 - obj.y * size
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    full = np.clip(0.5 - _SDF[shape](c * dx + s * dy, -s * dx + c * dy, obj.radius * size), 0, 1)
    np.testing.assert_allclose(object_coverage(obj, size), full, atol=1e-3, err_msg=shape)


def test_objects_visible_inside_the_image_and_almost_never_overlapping():
  phrases, backgrounds = set(), set()
  overlapping = 0
  for scene in scenes(n=300, min_objects=2, max_objects=3):
    masks = [object_coverage(o, 64) > 0.5 for o in scene.objects]
    backgrounds.add((scene.background.colour, scene.background.kind))
    for o, m in zip(scene.objects, masks):
      assert _BG_COMPATIBLE[scene.background.colour, o.colour]  # contrasts with the background
      assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())  # not clipped
      assert m.sum() > 30
      phrases.add(S.position_phrase(o))
    for a, b in itertools.combinations(masks, 2):
      if (a & b).any():  # rare, and then only a sliver of the smaller object
        overlapping += 1
        assert (a & b).sum() < 0.15 * min(a.sum(), b.sum())
  assert overlapping <= 6  # of 300 crowded scenes
  assert len(phrases) == 9
  assert len(backgrounds) == len(S.BACKGROUNDS) * len(S.BACKGROUND_KINDS)


def test_shapes_have_distinct_masks_and_render_matches_coverage():
  size = 64
  masks = []
  for s in range(len(S.SHAPES)):
    obj = S.SceneObject(shape=s, colour=0, size=2, radius=0.2, x=0.5, y=0.5)
    cov = object_coverage(obj, size)
    mask = cov > 0.5
    area = mask.sum() / (0.2 * size) ** 2  # in units of radius^2
    assert 1.0 < area < 3.2, (S.SHAPES[s], area)
    masks.append(mask)
    # The rendered image (flat background, no noise) differs from the background exactly there.
    scene = S.Scene(objects=(obj,), background=S.Background(colour=1))
    img = S.render_scene(scene, size).astype(np.int32)
    changed = np.abs(img - S.BACKGROUND_RGB[1].astype(np.int32)).max(-1) > 100
    assert (changed == mask).mean() > 0.99
  for a, b in itertools.combinations(range(len(S.SHAPES)), 2):
    iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
    assert iou < 0.9, (S.SHAPES[a], S.SHAPES[b], iou)


def test_source_pickles_to_an_equal_source():
  src = S.SyntheticScenes(num_records=50, seed=2, split="test", image_size=32, max_objects=4)
  copy = pickle.loads(pickle.dumps(src))
  assert copy == src and copy is not src
  assert np.array_equal(copy[9]["image"], src[9]["image"])
  assert copy[9]["caption"] == src[9]["caption"]
  assert "split='test'" in repr(src) and "num_records=50" in repr(src)
  assert src != S.SyntheticScenes(num_records=50, seed=3, split="test", image_size=32,
                                  max_objects=4)


def test_grain_source_protocol():
  import grain  # pylint: disable=g-import-not-at-top
  src = S.SyntheticScenes(num_records=8)
  assert isinstance(src, grain.sources.RandomAccessDataSource)
  items = list(grain.MapDataset.source(src).shuffle(seed=1).map(lambda e: e["index"]))
  assert sorted(int(i) for i in items) == list(range(8))


def test_caption_diversity_and_many_to_many():
  rng = np.random.default_rng(1)
  three = next(s for s in scenes(n=50, min_objects=3, max_objects=3))
  # One scene: many different captions.
  assert len({S.random_caption(three, rng) for _ in range(100)}) >= 30
  assert len({S.make_caption(three, t, rng) for t in S.CAPTION_TEMPLATE_NAMES}) >= 10

  src = S.SyntheticScenes(num_records=500)
  captions = [src[i]["caption"] for i in range(500)]
  all_scenes = [scene_for(src, i) for i in range(500)]
  counts = collections.Counter(captions)
  assert len(counts) >= 200, len(counts)
  shared = sum(v for v in counts.values() if v > 1)
  assert shared >= 100, shared  # exact caption strings shared by several images
  # Many captions fit many images: how many of the 500 scenes does each caption fit?
  fits = np.array([[not caption_problems(c, sc) for sc in all_scenes] for c in captions[:80]])
  assert fits[np.arange(80), np.arange(80)].all()
  per_caption = fits.sum(axis=1)
  assert np.median(per_caption) >= 10, np.median(per_caption)
  assert (fits.sum(axis=0) >= 3).mean() > 0.8  # images fitting several captions


def test_zero_shot_names_and_prompts_match_captions():
  assert S.shape_names() == list(S.SHAPES) and S.colour_names() == list(S.COLOUR_NAMES)
  assert S.count_phrases() == ["one shape", "two shapes", "three shapes"]
  assert S.count_phrases(2, 4) == ["two shapes", "three shapes", "four shapes"]
  combos = S.combo_names()
  assert len(combos) == NUM_COMBOS == 64
  assert combos[S.combo_index(3, 5)] == f"{S.COLOUR_NAMES[5]} {S.SHAPES[3]}"
  # Every task's prompt template, filled with a class name, is a caption the generator writes.
  rng = np.random.default_rng(0)
  generated = set()
  for split in ("train", "held_out"):
    for scene in scenes(split=split, n=300, max_objects=3):
      for _ in range(4):
        generated.add(S.random_caption(scene, rng))
  src = S.SyntheticScenes(num_records=4)
  assert S.ZERO_SHOT_TASKS.names() == ("shape", "colour", "count", "combo")
  for task in S.ZERO_SHOT_TASKS:
    classnames, templates, key, offset = S.zero_shot_task(task)
    assert key in src[0] and len(templates) >= 2 and templates == S.PROMPTS[task]
    assert len(classnames) == {"shape": 8, "colour": 8, "count": 3, "combo": 64}[task]
    for t in templates:
      assert "{}" in t
      assert any(t.format(c) in generated for c in classnames), (task, t)
    if task == "count":
      assert offset == 1 and classnames[0] == "one shape"


def test_monochrome_examples_are_grey_with_colourless_captions():
  src = S.SyntheticScenes(num_records=200, seed=3, monochrome_fraction=0.5)
  plain = S.SyntheticScenes(num_records=200, seed=3)
  n_mono = 0
  for i in range(200):
    ex = src[i]
    if not ex["monochrome"]:
      continue
    n_mono += 1
    img = ex["image"].astype(int)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    words = set(ex["caption"].rstrip(".").replace(",", "").split())
    assert not words & set(S.COLOUR_NAMES), ex["caption"]
    # Same scene as without monochrome: the labels still describe it.
    assert ex["shape"] == plain[i]["shape"] and ex["count"] == plain[i]["count"]
    # The main object stays visible: its pixels differ clearly from the rest of the image.
    cov = object_coverage(scene_for(src, i).main, src.image_size)
    inside, outside = img[..., 0][cov > 0.99], img[..., 0][cov == 0]
    assert abs(inside.mean() - np.median(outside)) > 60
  assert 70 <= n_mono <= 130
  assert not any(bool(plain[i]["monochrome"]) for i in range(50))
  with pytest.raises(ValueError, match="monochrome_fraction"):
    S.SyntheticScenes(num_records=1, monochrome_fraction=1.5)
