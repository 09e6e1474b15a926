"""OpenCLIP interop: weights converted from open_clip (PyTorch) give open_clip's embeddings, ours
exported load into open_clip and give ours, and both file formats are read without torch.

PyTorch and open_clip live in their own virtualenv (.venv-torch, from requirements-torch.txt; the
README's test command makes it): the reference side runs there as a subprocess,
tests/open_clip_reference.py. Without it these tests are skipped, saying so, except in CI (.ci/run
sets RANKCLIP_JAX_CI=1), where a missing reference fails them: CI does not fail on skips.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import rankclip_jax
from rankclip_jax import checkpointing, convert, train
from rankclip_jax.config_validation import ConfigError
from rankclip_jax.data import synthetic
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.interop import open_clip as oc
from rankclip_jax.interop import tensor_files
from rankclip_jax.models import SIZES, TwoTowers, build_model
from rankclip_jax.models.transformer import with_layer_layout
from tests.test_train import micro_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PYTHON = os.environ.get("RANKCLIP_TORCH_PYTHON", os.path.join(REPO, ".venv-torch", "bin",
                                                                    "python"))
SETUP = ("python3 -m venv .venv-torch && .venv-torch/bin/pip install -r requirements-torch.txt "
         "(the README's test command does this)")

SMALL = dict(embed_dim=48, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8,
                                           head_width=32),
             text_cfg=dict(context_length=20, vocab_size=49408, width=64, heads=4, layers=2))
B32 = dict(embed_dim=512, vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=32),
           text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12))
# Texts where open_clip's cleaning (ftfy, HTML entities, whitespace, lower case), its regex and
# byte-level BPE matter; our tokenizer must give the same ids for every one. ftfy leaves entities
# alone in text with tags: there open_clip's own two html.unescape calls do it.
TOKENIZER_TEXTS = [
    "café", "naïve", "Zürich", "cafe\u0301 (a combining accent)", "don't", "it's", "O'Neil",
    "I'M SHOUTING, HE'LL GO", "don\u2019t \u201ccurly\u201d \u2013 quotes", "&amp; &quot; &#39;",
    "Tom &amp;amp; Jerry", "<b>bold</b> &amp; <i>more</i>", "<p>&amp;amp; twice</p>",
    "a 🐱 cat 👍🏽", "东京 日本語 한국어", "MiXeD CaSe",
    "  runs\t\tof \n whitespace\u00a0and\u3000more  ", "a" * 200, "123 4567 3.14 -2,000!!! ?? ...",
    "", "   ", "\uff21\uff42\uff43 full-width", "\ufb01 ligature", "mojibake: caf\u00c3\u00a9",
    "x\u0085y", "snake_case/path.txt #tag @user"]
TEXTS = ["a red circle.", "Two BLUE squares,   on a beige background!", "a photo of a heart.",
         "an image with 3 shapes, including a pink star and a cyan ring, in the top left corner of "
         "a dark background with a lot of noise and more words than fit the context"]


def _run_torch(request, out_dir):
  if not os.path.exists(TORCH_PYTHON):
    # CI does not fail on skips: there (.ci/run sets RANKCLIP_JAX_CI=1) a missing reference fails.
    missing = pytest.fail if os.environ.get("RANKCLIP_JAX_CI") else pytest.skip
    missing(f"torch/open_clip not installed at {TORCH_PYTHON}; make it with: {SETUP}")
  request = dict(request, out_dir=str(out_dir))
  path = os.path.join(out_dir, f"request_{len(os.listdir(out_dir))}.json")
  with open(path, "w") as f:
    json.dump(request, f)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
  proc = subprocess.run([TORCH_PYTHON, os.path.join(REPO, "tests", "open_clip_reference.py"), path],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _images(n, size, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, size, size, 3)).astype(np.float32)


ZERO_SHOT_CLASSES = ["circle", "square", "triangle", "star", "heart", "ring"]
ZERO_SHOT_TEMPLATES = ("a photo of a {}.", "a {} on a dark background.", "{}")


def _zero_shot_pngs(out):
  """Scene PNG files for zero-shot: two at the models' 32 px, one larger and not square."""
  paths = []
  for i, (w, h) in enumerate([(32, 32), (32, 32), (48, 40)]):
    scene = synthetic.SyntheticScenes(num_records=3, image_size=48)[i]["image"]
    path = str(out / f"zero_shot_{i}.png")
    if not os.path.exists(path):
      Image.fromarray(scene).resize((w, h), Image.BILINEAR).save(path)
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One torch subprocess: three random open_clip models (and zero-shot with two of them), the
  shapes of B/16 and L/14, and open_clip's token ids of TOKENIZER_TEXTS."""
  out = tmp_path_factory.mktemp("open_clip")
  np.savez(out / "images32.npz", images=_images(3, 32))
  np.savez(out / "images224.npz", images=_images(2, 224, seed=1))
  zero_shot = dict(kind="zero_shot", images=_zero_shot_pngs(out), class_names=ZERO_SHOT_CLASSES,
                   templates=ZERO_SHOT_TEMPLATES)
  jobs = [dict(kind="reference", name="small", cfg=SMALL, seed=1),
          dict(kind="reference", name="small_quick", cfg=dict(SMALL, quick_gelu=True), seed=2),
          dict(kind="reference", name="b32", cfg=B32, seed=3,
               images_npz=str(out / "images224.npz")),
          dict(zero_shot, name="small", cfg=SMALL, weights=str(out / "small.safetensors")),
          dict(zero_shot, name="small_quick", cfg=dict(SMALL, quick_gelu=True),
               weights=str(out / "small_quick.safetensors")),
          dict(kind="shapes", name="b16", model="ViT-B-16"),
          dict(kind="shapes", name="l14", model="ViT-L-14"),
          dict(kind="tokenize", name="ctx77", texts=TOKENIZER_TEXTS, context_length=77),
          dict(kind="tokenize", name="ctx8", texts=TOKENIZER_TEXTS, context_length=8)]
  _run_torch(dict(jobs=jobs, images_npz=str(out / "images32.npz"), texts=TEXTS), out)
  return out


def _heads(name):
  """A state dict does not store head counts; SMALL's are not width / 64."""
  return dict(image_heads=2, text_heads=4) if name.startswith("small") else {}


def _ours(state, act, images, tokens, **heads):
  spec = oc.infer_spec(state, act=act, **heads)
  params = oc.to_flax(state, spec)
  model = TwoTowers(spec["sizes"], context_length=spec["context_length"], act=act,
                    ln_eps=spec["ln_eps"])
  img, txt, scale = model.apply({"params": params}, images, tokens)
  return spec, np.asarray(img), np.asarray(txt), float(np.exp(scale))


@pytest.mark.parametrize("name,act", [("small", "gelu"), ("small_quick", "quick_gelu"),
                                      ("b32", "gelu")])
def test_open_clip_weights_give_open_clip_embeddings(reference, name, act):
  state = tensor_files.read_state_dict(str(reference / f"{name}.safetensors"))
  # torch.save's zip format, read without torch, holds the same arrays.
  state_pt = tensor_files.read_state_dict(str(reference / f"{name}.pt"))
  assert state_pt.keys() == state.keys()
  for k in state:
    np.testing.assert_array_equal(state_pt[k], state[k])
  want = np.load(reference / f"{name}.npz")
  size = 224 if name == "b32" else 32
  images = np.load(reference / f"images{size}.npz")["images"]
  spec, img, txt, scale = _ours(state, act, images, want["tokens"], **_heads(name))
  assert spec["size"] == ("B/32" if name == "b32" else "custom")
  np.testing.assert_allclose(img, want["image"], atol=1e-4)
  np.testing.assert_allclose(txt, want["text"], atol=1e-4)
  # Measured differences are ~5e-6 at logit scale 30 (B/32 included): 1e-4 has room, no more.
  np.testing.assert_allclose(scale * img @ txt.T, want["logits"], atol=1e-4)
  # Our tokenizer gives open_clip's ids (same BPE, lower-casing, truncation keeping <end>).
  np.testing.assert_array_equal(ClipTokenizer(want["tokens"].shape[1])(TEXTS), want["tokens"])


@pytest.mark.parametrize("name,act", [("small", "gelu"), ("small_quick", "quick_gelu")])
def test_zero_shot_classify_of_a_converted_model_gives_open_clip_logits(reference, tmp_path, name,
                                                                       act):
  """rankclip_jax.load(converted).classify on PNG files == open_clip's zero-shot classification
  (its eval transform, prompt-ensemble classifier and logit scale) of the same files."""
  convert.import_state_dict(str(reference / f"{name}.safetensors"), str(tmp_path / name), act=act,
                            **_heads(name))
  m = rankclip_jax.load(str(tmp_path / name))
  want = np.load(reference / f"{name}_zero_shot.npz")
  images = [Image.open(p) for p in _zero_shot_pngs(reference)]
  probs = m.classify(images, ZERO_SHOT_CLASSES, templates=ZERO_SHOT_TEMPLATES)
  # classify returns softmax(logits): its log is the logits less each row's logsumexp, compared
  # with open_clip's log-softmax (measured: ~4e-6 apart).
  np.testing.assert_allclose(np.log(probs), want["log_probs"], atol=1e-4)
  # The logits themselves, from the pieces classify multiplies: the run's logit scale (open_clip's
  # exp(logit_scale), 30 here, not zero-shot's customary 100) and the prompt-ensemble cosines.
  assert m.logit_scale == pytest.approx(30.0, rel=1e-6)
  cosine = m.encode_images(images) @ m.class_embeddings(ZERO_SHOT_CLASSES, ZERO_SHOT_TEMPLATES).T
  np.testing.assert_allclose(m.logit_scale * cosine, want["logits"], atol=1e-4)
  np.testing.assert_allclose(cosine, want["cosine"], atol=1e-5)
  assert np.ptp(want["logits"], axis=1).min() > 1.0  # the classes are told apart: not a flat row


def test_tokenizer_gives_open_clip_ids(reference):
  """Accents, apostrophes, HTML entities, emoji, CJK, case, whitespace runs, a 200-letter word,
  numbers and punctuation, the empty string; in a full and in a truncating context."""
  for name, context_length in [("ctx77", 77), ("ctx8", 8)]:
    want = np.load(reference / f"{name}_tokens.npy")
    got = ClipTokenizer(context_length)(TOKENIZER_TEXTS)
    bad = [t for t, g, w in zip(TOKENIZER_TEXTS, got, want) if not np.array_equal(g, w)]
    assert not bad, f"context {context_length}: other ids than open_clip's for {bad}"


def test_the_wrong_activation_is_visible(reference):
  """quick_gelu weights run with gelu give different embeddings: the reason --act is required."""
  state = tensor_files.read_state_dict(str(reference / "small_quick.safetensors"))
  want = np.load(reference / "small_quick.npz")
  _, img, _, _ = _ours(state, "gelu", np.load(reference / "images32.npz")["images"],
                       want["tokens"], **_heads("small"))
  assert np.abs(img - want["image"]).max() > 1e-3


@pytest.mark.parametrize("name,size", [("b16", "B/16"), ("l14", "L/14")])
def test_b16_and_l14_state_dicts_map_onto_our_towers(reference, name, size):
  """Key names and shapes of open_clip's ViT-B/16 and ViT-L/14 (no weights needed)."""
  with open(reference / f"{name}_shapes.json") as f:
    shapes = json.load(f)
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  spec = oc.infer_spec(state, act="gelu")
  assert spec["size"] == size and spec["image_size"] == 224 and spec["context_length"] == 77
  converted = oc.to_flax(state, spec)
  want = jax.eval_shape(lambda: TwoTowers(SIZES[size], context_length=77).init(
      jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32), np.zeros((1, 77), np.int32)))
  assert (jax.tree.structure(converted) == jax.tree.structure(want["params"]) and
          jax.tree.leaves(jax.tree.map(np.shape, converted)) ==
          jax.tree.leaves(jax.tree.map(lambda x: x.shape, want["params"])))
  # ... and back, to the very same keys and shapes; from a scan_layers run's layout too (the same
  # code at every size: at B/16 only, L/14's stacked blocks would be 1.2 GB of copies).
  back = oc.from_flax(converted)
  if name == "b16":
    scanned_back = oc.from_flax(with_layer_layout(converted, scanned=True))
    assert all(np.array_equal(scanned_back[k], back[k]) for k in back)
  assert {k: list(v.shape) for k, v in back.items()} == {
      k: v for k, v in shapes.items() if k != "attn_mask"}


def test_export_loads_into_open_clip_and_round_trips(micro_run, reference, tmp_path):
  weights, model_json = convert.export_run(micro_run, str(tmp_path / "micro.safetensors"))
  with open(model_json) as f:
    cfg = json.load(f)
  assert cfg["quick_gelu"] and cfg["text_cfg"]["context_length"] == 16
  ours = rankclip_jax.load(micro_run)
  images = _images(3, 32, seed=5)
  np.savez(tmp_path / "images.npz", images=images)
  _run_torch(dict(jobs=[dict(kind="load", name="exported", weights=weights, cfg_json=model_json)],
                  images_npz=str(tmp_path / "images.npz"), texts=TEXTS[:3]), tmp_path)
  got = np.load(tmp_path / "exported.npz")
  # Our LayerNorm epsilon (1e-6) travels in the config's norm_kwargs.
  assert cfg["text_cfg"]["norm_kwargs"] == {"eps": 1e-6}
  np.testing.assert_allclose(got["image"], np.asarray(ours._image(ours.params, images)), atol=1e-4)
  np.testing.assert_allclose(got["text"], np.asarray(ours._text(ours.params, got["tokens"])),
                             atol=1e-4)

  # Import back: the very same parameters, and a model directory that loads in one call.
  converted = str(tmp_path / "reimported")
  convert.import_state_dict(weights, converted, open_clip_config=model_json)
  again = rankclip_jax.load(converted)
  assert again.config.model.act == "quick_gelu" and again.config.model.ln_eps == 1e-6
  assert again.config.image_size == 32 and again.config.context_length == 16
  assert again.config.model.size == "micro"
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               again.params, ours.params)
  with open(os.path.join(converted, "converted_from.json")) as f:
    assert json.load(f)["act"] == "quick_gelu"


def test_init_from_open_clip_weights_and_from_a_run(micro_run, reference, tmp_path):
  """config.model.init_from: an OpenCLIP state dict or a run; mismatches name the fix."""
  state = tensor_files.read_state_dict(str(reference / "small.safetensors"))
  spec = oc.infer_spec(state, act="gelu", **_heads("small"))
  config = micro_config(evals={}, **{"model.stem": "patch", "model.pool": "cls"})
  config.model.size = "custom"
  config.model.custom.update(vars(spec["sizes"]))
  config.model.ln_eps = 1e-5
  config.context_length = 16  # shorter than the source's 20: its first positions are used
  config.model.init_from = str(reference / "small.safetensors")
  trainer = train.Trainer(config)
  state0 = trainer.init()
  want = oc.to_flax(state, spec)
  np.testing.assert_array_equal(np.asarray(state0.params["image"]["encoder"]["block_1"]["attn"]
                                           ["query"]["kernel"]),
                                want["image"]["encoder"]["block_1"]["attn"]["query"]["kernel"])
  np.testing.assert_array_equal(np.asarray(state0.params["text"]["pos_embedding"]),
                                want["text"]["pos_embedding"][:16])
  assert int(state0.step) == 0
  # Into scanned layers: the same weights, stacked per tower.
  config.model.scan_layers = True
  scanned = train.Trainer(config).init().params
  jax.tree.map(np.testing.assert_array_equal,
               with_layer_layout(jax.tree.map(np.asarray, scanned), scanned=False),
               jax.tree.map(np.asarray, state0.params))
  config.model.scan_layers = False

  config.model.size = "micro"
  config.context_length = 32  # longer than the source's 20
  with pytest.raises(ConfigError, match="--config.model.size=custom.*image_width=64.*"
                     "--config.context_length=20"):
    train.Trainer(config).init()

  from_run = micro_config(evals={}, **{"model.stem": "patch", "model.pool": "cls"})
  from_run.model.init_from = micro_run
  with pytest.raises(ConfigError, match="--config.model.act=quick_gelu"):
    train.Trainer(from_run).init()
  from_run.model.act = "quick_gelu"
  got = train.Trainer(from_run).init().params
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               got, rankclip_jax.load(micro_run).params)


def test_preprocessing_matches_open_clip(micro_run, tmp_path):
  """rankclip_jax.load(...).preprocess == open_clip's eval transform (bicubic shorter-side resize,
  centre crop, CLIP mean/std) on real PNG files of other sizes and aspect ratios."""
  paths = []
  for i, (w, h) in enumerate([(97, 64), (48, 80), (32, 32)]):
    scene = synthetic.SyntheticScenes(num_records=3, image_size=96)[i]["image"]
    path = str(tmp_path / f"im{i}.png")
    Image.fromarray(scene).resize((w, h), Image.BILINEAR).save(path)
    paths.append(path)
  _run_torch(dict(jobs=[dict(kind="preprocess", name="pp", image_size=32, images=paths)],
                  images_npz="", texts=[]), tmp_path)
  want = np.load(tmp_path / "pp_preprocess.npy")
  m = rankclip_jax.load(micro_run)
  got = np.stack([m.preprocess(Image.open(p)) for p in paths])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_weight_files_without_torch(tmp_path):
  """safetensors round trip (bf16 included) and clear errors for what cannot be read."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": np.array([1.5, -2], ml_dtypes.bfloat16), "c": np.array(3, np.int64)}
  path = str(tmp_path / "t.safetensors")
  tensor_files.write_safetensors(path, tensors, metadata={"k": "v"})
  got, meta = tensor_files.read_safetensors(path)
  assert meta == {"k": "v"}
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype
    np.testing.assert_array_equal(got[k], v)
  with open(path, "r+b") as f:  # truncated download
    f.truncate(os.path.getsize(path) - 4)
  with pytest.raises(tensor_files.WeightFileError, match="truncated"):
    tensor_files.read_safetensors(path)
  junk = tmp_path / "junk.pt"
  junk.write_bytes(b"not a zip")
  # Never handed to torch (whose loaders run code from a file), installed or not.
  with pytest.raises(tensor_files.WeightFileError, match="junk.pt: not a zip archive"):
    tensor_files.read_state_dict(str(junk))
  with pytest.raises(oc.ConversionError, match="unsupported keys.*visual.attn_pool"):
    oc.infer_spec({"visual.attn_pool.weight": np.zeros(2)}, act="gelu")


def test_convert_command_line(tmp_path, reference):
  out = str(tmp_path / "converted")
  cmd = [sys.executable, "-m", "rankclip_jax.convert",
         f"--input={reference / 'small.safetensors'}", f"--output={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert proc.returncode != 0 and "--act is required" in proc.stderr
  proc = subprocess.run(cmd + ["--act=gelu"], capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "rankclip_jax.load" in proc.stdout
  assert checkpointing.Checkpointer(out + "/checkpoints", every_steps=1, keep=1).all_steps() == [0]
  config = rankclip_jax.load(out).config
  model = build_model(config.model, context_length=config.context_length)
  assert model.sizes.image_width == 64 and config.model.size == "custom"
