"""ALIP (losses/alip.py) and what it needs of the run: the loss against a float64 numpy reference
(value and gradient), its gates branch by branch, the running means as training state (updated,
the same under every loss strategy and GradCache, checkpointed and resumed), and its second caption
from each data source (the embedded scenes' captioner, a CSV column, a webdataset member)."""

import csv
import functools
import io
import os
import re
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from rankclip_jax import losses
from rankclip_jax.data import pipeline, records, synthetic
from rankclip_jax.data.csv_files import CsvSource
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.data.webdataset import WebDatasetSource
from rankclip_jax.errors import ConfigError

N, D = 32, 8
MEANS = ("mean_tc", "mean_it", "mean_ic")


def unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def triplets(seed, n=N, d=D):
  """Images, raw texts and captions that agree to varying degrees (each text a noisy copy of a
  shared direction), so that both branches of every gate are taken."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, d))
  noise = rng.uniform(0.3, 2.0, size=(3, n, 1))
  return tuple(unit(base + noise[k] * rng.normal(size=(n, d))) for k in range(3))


def state(tc, it, ic):
  return {"mean_tc": jnp.float32(tc), "mean_it": jnp.float32(it), "mean_ic": jnp.float32(ic)}


# ------------------------------------------------------------------ float64 reference


def _softmax(z, axis):
  e = np.exp(z - z.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _lse(z, axis):
  m = z.max(axis=axis)
  return m + np.log(np.exp(z - np.expand_dims(m, axis)).sum(axis=axis))


def reference(img, txt, cap, scale, means, momentum=0.99, tau=2.0):
  """(loss, grads w.r.t. (img, txt, cap, scale), new means, weights), float64, written from the
  paper's formulas; the gradient derived by hand with the gates held constant."""
  i, t, c = (np.asarray(x, np.float64) for x in (img, txt, cap))
  n = i.shape[0]
  cos = {"tc": np.sum(t * c, 1), "it": np.sum(i * t, 1), "ic": np.sum(i * c, 1)}
  new = {k: momentum * float(means[f"mean_{k}"]) + (1 - momentum) * v.mean()
         for k, v in cos.items()}
  g = np.exp(tau * (cos["tc"] - new["tc"]))
  w_s = np.minimum(g, 1.0)
  w_raw = np.where(g < 1, np.exp(tau * (cos["it"] - new["it"])), 1.0)
  w_cap = np.where(g < 1, np.exp(tau * (cos["ic"] - new["ic"])), 1.0)

  def path(x, w):
    z = scale * i @ x.T
    l = 0.5 * ((_lse(z, 1) - np.diag(z)) + (_lse(z, 0) - np.diag(z)))
    eye = np.eye(n)
    # d(mean_k w_k l_k)/dz: row k of the image->text CE and column k of the text->image CE.
    gz = 0.5 / n * (w[:, None] * (_softmax(z, 1) - eye) + (_softmax(z, 0) - eye) * w[None, :])
    return np.mean(w * l), scale * gz @ x, scale * gz.T @ i, np.sum(gz * (i @ x.T))

  v1, gi1, gt, gs1 = path(t, w_s * w_raw)
  v2, gi2, gc, gs2 = path(c, w_s * w_cap)
  weights = {"sample": w_s, "raw": w_raw, "caption": w_cap}
  return v1 + v2, (gi1 + gi2, gt, gc, gs1 + gs2), new, weights


def value_and_grads(img, txt, cap, scale, means, **kw):
  """alip_loss's (loss, metrics, new means) and its gradient w.r.t. (img, txt, cap, scale)."""
  def f(i, t, c, s):
    loss, metrics, new = losses.alip_loss(i, t, c, s, means, **kw)
    return loss, (metrics, new)
  (loss, (metrics, new)), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3),
                                                             has_aux=True))(
      img, txt, cap, jnp.float32(scale))
  return loss, metrics, new, grads


@pytest.mark.parametrize("scale,means", [(1 / 0.07, (1.0, 1.0, 1.0)), (30.0, (0.45, 0.3, 0.3))])
def test_alip_matches_the_float64_reference_value_and_gradient(scale, means):
  img, txt, cap = triplets(0)
  m = state(*means)
  want, want_grads, want_new, weights = reference(img, txt, cap, scale, m)
  if means[0] < 1:  # both branches of the gates are exercised
    assert 0 < np.sum(weights["sample"] < 1) < N and np.any(weights["raw"] > 1)
  loss, metrics, new, grads = value_and_grads(img, txt, cap, scale, m)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  for got, ref, name in zip(grads, want_grads, ("image", "text", "caption", "scale")):
    # A gradient through the gates (no stop_gradient) would be off by far more than this.
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max(), err_msg=name)
  for k in ("tc", "it", "ic"):
    np.testing.assert_allclose(new[f"mean_{k}"], want_new[k], rtol=1e-6)
    assert new[f"mean_{k}"].dtype == jnp.float32
    assert metrics[f"alip_mean_{k}"] == new[f"mean_{k}"]
  np.testing.assert_allclose(metrics["alip_weight_sample"], weights["sample"].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["raw_loss"] + metrics["caption_loss"], want, rtol=1e-5)


def test_gates_take_each_branch_on_hand_set_cosines():
  """Image e1, texts at angles a (raw) and b (caption) from it: cos(I, T) = cos a,
  cos(I, C) = cos b, cos(T, C) = cos(a - b)."""
  a = np.array([0.3, 0.2, 1.3, 1.2])
  b = np.array([0.3, 1.4, 0.5, 0.2])
  img = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (4, 1))
  txt = np.stack([np.cos(a), np.sin(a), 0 * a], 1).astype(np.float32)
  cap = np.stack([np.cos(b), np.sin(b), 0 * b], 1).astype(np.float32)
  weights, new, batch = losses.alip_gates(img, txt, cap, state(0.8, 0.5, 0.5), momentum=0.99,
                                          temperature=2.0)
  s_tc, s_it, s_ic = np.cos(a - b), np.cos(a), np.cos(b)
  m_tc = 0.99 * 0.8 + 0.01 * s_tc.mean()
  m_it = 0.99 * 0.5 + 0.01 * s_it.mean()
  m_ic = 0.99 * 0.5 + 0.01 * s_ic.mean()
  np.testing.assert_allclose([new["mean_tc"], new["mean_it"], new["mean_ic"]], [m_tc, m_it, m_ic],
                             rtol=1e-6)
  np.testing.assert_allclose(batch["tc"], s_tc.mean(), rtol=1e-6)
  w_s, w_raw, w_cap = (np.asarray(weights[k]) for k in ("sample", "raw", "caption"))
  # Pair 0: raw text = caption (cos 1 > m_tc): g >= 1, every weight exactly 1.
  assert w_s[0] == 1.0 and w_raw[0] == 1.0 and w_cap[0] == 1.0
  # Pairs 1-3: cos(T, C) = 0.36, 0.70, 0.54 < m_tc = 0.80: g < 1, so w_s = g < 1 and the
  # description gates are exp(2 (cos - m)), uncapped.
  g = np.exp(2 * (s_tc - m_tc))
  assert np.all(g[1:] < 1)
  np.testing.assert_allclose(w_s[1:], g[1:], rtol=1e-5)
  np.testing.assert_allclose(w_raw[1:], np.exp(2 * (s_it[1:] - m_it)), rtol=1e-5)
  np.testing.assert_allclose(w_cap[1:], np.exp(2 * (s_ic[1:] - m_ic)), rtol=1e-5)
  assert w_raw[1] > 1 and w_cap[1] < 1  # cos(I, T) = 0.98 above its mean: not capped at 1
  assert w_raw[2] < 1 and w_cap[2] > 1 and w_cap[3] > 1


def test_running_means_start_at_one_and_move_by_the_momentum():
  assert {k: float(v) for k, v in losses.alip_initial_state().items()} == dict.fromkeys(MEANS, 1.0)
  means = losses.alip_initial_state()
  want = {k: 1.0 for k in ("tc", "it", "ic")}
  for seed in (1, 2, 3):
    img, txt, cap = triplets(seed)
    _, metrics, means = losses.alip_loss(img, txt, cap, 10.0, means)
    i, t, c = (x.astype(np.float64) for x in (img, txt, cap))
    batch = {"tc": np.sum(t * c, 1).mean(), "it": np.sum(i * t, 1).mean(),
             "ic": np.sum(i * c, 1).mean()}
    want = {k: 0.99 * want[k] + 0.01 * batch[k] for k in want}
    for k in want:
      np.testing.assert_allclose(means[f"mean_{k}"], want[k], rtol=1e-6)
      np.testing.assert_allclose(metrics[f"alip_batch_{k}"], batch[k], rtol=1e-5, atol=1e-7)
  # Another momentum and temperature are used as given: momentum 0 is this batch's mean.
  _, _, means = losses.alip_loss(img, txt, cap, 10.0, means, momentum=0.0, temperature=5.0)
  np.testing.assert_allclose(means["mean_tc"], batch["tc"], rtol=1e-5)


# ------------------------------------------------------------------ strategies


def _run(img, txt, cap, scale, means, *, mesh=None, chunk_size=None):
  if mesh is None:
    return value_and_grads(img, txt, cap, scale, means, chunk_size=chunk_size)

  def f(i, t, c, s, m):
    return losses.alip_loss(i, t, c, s, m, axis_name="data", chunk_size=chunk_size)

  sharded = jax.shard_map(f, mesh=mesh, in_specs=(P("data"),) * 3 + (P(), P()),
                          out_specs=(P(), P(), P()))

  def g(i, t, c, s):
    loss, metrics, new = sharded(i, t, c, s, means)
    return loss, (metrics, new)
  (loss, (metrics, new)), grads = jax.jit(jax.value_and_grad(g, argnums=(0, 1, 2, 3),
                                                             has_aux=True))(
      img, txt, cap, jnp.float32(scale))
  return loss, metrics, new, grads


def test_plain_sharded_and_chunked_give_the_same_value_gradient_and_means():
  img, txt, cap = triplets(4)
  means = state(0.45, 0.3, 0.3)
  plain = _run(img, txt, cap, 20.0, means)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  for name, kw in {"chunked": dict(chunk_size=8), "sharded": dict(mesh=mesh),
                   "sharded_chunked": dict(mesh=mesh, chunk_size=2)}.items():
    loss, metrics, new, grads = _run(img, txt, cap, 20.0, means, **kw)
    np.testing.assert_allclose(loss, plain[0], rtol=2e-5, err_msg=name)
    assert set(metrics) == set(plain[1])
    for k in metrics:
      np.testing.assert_allclose(metrics[k], plain[1][k], rtol=2e-5, atol=1e-6, err_msg=k)
    for k in MEANS:
      np.testing.assert_allclose(new[k], plain[2][k], rtol=1e-6, err_msg=k)
    for got, want in zip(grads, plain[3]):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5 * np.abs(want).max(),
                                 err_msg=name)
  assert np.abs(plain[3][2]).max() > 0 and np.abs(plain[3][3]) > 0  # the caption and scale learn


# ------------------------------------------------------------------ config


def alip_config(**overrides):
  from tests.test_train import micro_config  # pylint: disable=g-import-not-at-top
  over = {"loss.name": "alip", "loss.cross_weight": 0.0, "loss.inmodal_weight": 0.0,
          "loss.weight_schedule": "constant"}
  over.update(overrides)
  return micro_config(**over)


@pytest.mark.parametrize("overrides,match", [
    ({"loss.cross_weight": 0.1}, "'alip' has no ranking or cyclic terms.*cross_weight=0"),
    ({"data.train.kind": "synthetic_pairs"},
     "'alip' trains on a synthetic caption.*'synthetic_pairs' has none: use one of synthetic, "
     "webdataset, webdataset_stream, csv"),
    ({"data.train.kind": "csv", "data.train.path": "/data/train.csv"},
     "synthetic_caption_key is empty.*--config.data.train.synthetic_caption_key=<column>"),
    ({"loss.alip_momentum": 1.0}, r"alip_momentum=1.0 must be in \[0, 1\)"),
    ({"loss.alip_temperature": 0.0}, "alip_temperature=0.0 must be > 0"),
])
def test_alip_config_mistakes_are_config_errors_naming_the_field(overrides, match):
  from rankclip_jax.config_validation import validate_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=match):
    validate_config(alip_config(**overrides))


def test_the_demo_config_is_valid_and_other_losses_ignore_the_synthetic_caption_key():
  from configs import alip_synthetic, rankclip_synthetic  # pylint: disable=g-import-not-at-top
  from rankclip_jax.config_validation import validate_config  # pylint: disable=g-import-not-at-top
  c = alip_synthetic.get_config()
  validate_config(c)
  base = rankclip_synthetic.get_config()
  assert c.loss.name == "alip" and (c.loss.alip_momentum, c.loss.alip_temperature) == (0.99, 2.0)
  c.loss.name, c.loss.cross_weight, c.loss.inmodal_weight = "rankclip", 1 / 16, 1 / 16
  c.data.train.captioner_error = base.data.train.captioner_error
  assert c == base  # the same run but for the loss
  base.data.train.kind, base.data.train.path = "csv", "/data/train.csv"
  validate_config(base)  # no synthetic_caption_key needed


# ------------------------------------------------------------------ training state


def _trainer_grads(config, loss_state):
  from rankclip_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  from rankclip_jax import train  # pylint: disable=g-import-not-at-top
  trainer = train.Trainer(config)
  state = trainer.init()
  batch = trainer.global_batch(next(trainer.train_iterator()))
  assert set(batch) == {"image", "text", "synthetic_text", "skipped"}
  f = jax.jit(functools.partial(step_lib.loss_and_grads, model=trainer.model,
                                objective=trainer.objective,
                                microbatches=trainer.config.microbatches))
  (loss, metrics, new), grads = f(state.params, batch, jnp.int32(3), jax.random.key(0),
                                  loss_state)
  return float(loss), jax.device_get(metrics), jax.device_get(new), jax.device_get(grads)


def test_gradcache_gives_the_full_batch_loss_gradient_and_means():
  """GradCache (2 micro-batches, loss rows in blocks of 1) against the full batch on the 8-device
  mesh, from running means that open some gates and not others."""
  means = state(0.3, 0.05, 0.05)
  full = _trainer_grads(alip_config(), means)
  cached = _trainer_grads(alip_config(microbatches=2, **{"loss.chunk_size": 1}), means)
  np.testing.assert_allclose(cached[0], full[0], rtol=1e-5)
  for k in MEANS:
    np.testing.assert_allclose(cached[2][k], full[2][k], rtol=1e-6)
    assert full[2][k] != means[k]
  for k in ("caption_loss", "alip_weight_sample", "alip_weight_raw"):
    np.testing.assert_allclose(cached[1][k], full[1][k], rtol=1e-5, err_msg=k)
  assert 0 < full[1]["alip_weight_sample"] < 1
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(full[3]),
                               jax.tree.leaves(cached[3])):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path))
  assert np.abs(full[3]["text"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]).max() > 0


def test_running_means_are_checkpointed_replicated_and_resumed_exactly(tmp_path):
  """Training on the embedded scenes, saved at step 2 in a real Orbax checkpoint (with the input
  position), restored into the trainer's state and trained on to step 4: the same running means,
  bit for bit, and the same parameters as 4 uninterrupted steps (patch dropout on, so that its
  draws are shown to resume exactly as well). A skipped step keeps them."""
  from rankclip_jax import checkpointing, train  # pylint: disable=g-import-not-at-top
  # With patch dropout: its draws, a function of (seed, step, row), must resume exactly too.
  trainer = train.Trainer(alip_config(**{"model.patch_dropout": 0.25}))
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), every_steps=2, keep=2,
                                  async_save=False)
  try:
    state, it = trainer.init(), trainer.train_iterator()
    means = {0: jax.device_get(state.loss_state)}
    for step in range(1, 5):
      state, metrics = trainer.step(state, next(it))
      means[step] = jax.device_get(state.loss_state)
      assert float(metrics["alip_mean_tc"]) == float(means[step]["mean_tc"])  # logged
      if step == 2:
        ck.save(2, state, it, force=True)
        ck.wait()
    assert np.isfinite(float(metrics["loss"])) and float(metrics["caption_loss"]) > 0
    assert means[4]["mean_tc"] != means[2]["mean_tc"] != means[0]["mean_tc"] == 1.0
    final = jax.device_get(state.params)

    it = trainer.train_iterator()
    step, state = ck.restore(trainer.abstract_state_with_shardings(), it)
    assert step == 2 and set(state.loss_state) == set(MEANS)
    for k in MEANS:
      x = state.loss_state[k]
      assert x.dtype == jnp.float32 and x.sharding.is_fully_replicated
      assert len({float(s.data) for s in x.addressable_shards}) == 1  # the same on every device
      assert np.asarray(x).tobytes() == np.asarray(means[2][k]).tobytes(), k
    for _ in range(2):
      state, _ = trainer.step(state, next(it))
  finally:
    ck.close()
  for k in MEANS:
    assert np.asarray(state.loss_state[k]).tobytes() == np.asarray(means[4][k]).tobytes(), k
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(state.params)),
                          jax.tree.leaves(final)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  # A non-finite step (NaN pixels) is skipped, and leaves the running means as they were.
  bad = dict(next(it), image=np.full_like(next(it)["image"], np.nan))
  state, metrics = trainer.step(state, bad)
  assert int(metrics["skipped_nonfinite_steps"]) == 1 and int(state.step) == 5
  for k in MEANS:
    assert np.asarray(state.loss_state[k]).tobytes() == np.asarray(means[4][k]).tobytes(), k


# ------------------------------------------------------------------ data


def test_the_captioner_changes_no_field_of_any_example():
  """Asking for synthetic captions leaves every other field of the scenes bit-identical (the demo
  configs' monochrome share included), and the captions are deterministic per index."""
  plain = synthetic.SyntheticScenes(num_records=300, seed=3, image_size=32,
                                    monochrome_fraction=0.7)
  with_captions = synthetic.SyntheticScenes(num_records=300, seed=3, image_size=32,
                                            monochrome_fraction=0.7, synthetic_captions=True)
  captions = []
  for i in range(300):
    a, b = plain[i], with_captions[i]
    assert set(b) == set(a) | {"synthetic_caption"}
    for k in a:
      assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), (i, k)
    captions.append(b["synthetic_caption"])
  assert [with_captions[i]["synthetic_caption"] for i in (7, 3)] == [captions[7], captions[3]]
  assert len(set(captions)) > 250


_COLOUR_SHAPE = re.compile(rf"\b({'|'.join(synthetic.COLOUR_NAMES)}) "
                           rf"({'|'.join(synthetic.SHAPES)})\b")


def test_the_captioner_gets_its_share_of_attributes_wrong_and_never_names_a_held_out_combo():
  def main_object_named(error, n=400):
    src = synthetic.SyntheticScenes(num_records=n, seed=1, synthetic_captions=True,
                                    captioner_error=error)
    right = 0
    for i in range(n):
      ex = src[i]
      first = _COLOUR_SHAPE.search(ex["synthetic_caption"])
      right += (first.group(1), first.group(2)) == (
          synthetic.COLOUR_NAMES[ex["colour"]], synthetic.SHAPES[ex["shape"]])
      for colour, shape in _COLOUR_SHAPE.findall(ex["synthetic_caption"]):
        combo = (synthetic.SHAPES.index(shape), synthetic.COLOUR_NAMES.index(colour))
        assert combo not in synthetic.HELD_OUT_COMBOS, ex["synthetic_caption"]
    return right / n

  assert main_object_named(0.0) == 1.0  # a perfect captioner names the main object right
  # Shape and colour each wrong with probability 0.2: both right 0.64 of the time.
  assert 0.56 < main_object_named(0.2) < 0.72
  assert main_object_named(1.0) == 0.0


def _write_png_csv(directory, n=19):
  """A CSV of n real PNG scenes with a caption and a synthetic caption column; row 5's synthetic
  caption is empty, row 9's only white space. -> (path, kinds by row)."""
  from tests.data_fixtures import encode, scenes  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(directory, "images"))
  captioner = synthetic.SyntheticScenes(num_records=n, seed=0, synthetic_captions=True)
  kinds = {}
  path = os.path.join(directory, "train.csv")
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image", "caption", "ofa_caption"])
    for i, (image, caption) in enumerate(scenes(n, image_size=40)):
      rel = f"images/{i:03d}.png"
      with open(os.path.join(directory, rel), "wb") as g:
        g.write(encode(image, "PNG"))
      synthetic_caption = {5: "", 9: "  "}.get(i, captioner[i]["synthetic_caption"])
      writer.writerow([rel, caption, synthetic_caption])
      kinds[i] = "empty_caption" if i in (5, 9) else None
  return path, kinds


def test_training_from_a_csv_with_synthetic_captions_skips_and_counts_empty_ones(tmp_path):
  from rankclip_jax import train  # pylint: disable=g-import-not-at-top
  from tests.test_data_sources import _expected_skips  # pylint: disable=g-import-not-at-top
  path, kinds = _write_png_csv(str(tmp_path))
  # Other losses never read the column.
  source = CsvSource(path, synthetic_caption_key="")
  assert "synthetic_caption" not in source[5]
  config = alip_config(**{"data.train.kind": "csv", "data.train.path": path,
                          "data.train.synthetic_caption_key": "ofa_caption",
                          "model.patch_dropout": 0.25})  # the resume test's step, compiled once
  trainer = train.Trainer(config)
  state, it = trainer.init(), trainer.train_iterator()
  for _ in range(3):
    batch = next(it)
    assert not np.array_equal(batch["text"], batch["synthetic_text"])
    state, metrics = trainer.step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["caption_loss"]) > 0
  assert records.skip_counts(state.data_skipped) == _expected_skips(
      kinds, len(kinds), seed=config.seed, good_wanted=3 * 16)
  assert records.skip_counts(state.data_skipped)["empty_caption"] >= 2
  assert int(state.step) == 3 and float(state.loss_state["mean_tc"]) < 1.0


def _tar_member(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_webdataset_reads_the_synthetic_caption_member_only_when_asked(tmp_path):
  from tests.data_fixtures import encode, scenes  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "00000.tar")
  data = scenes(4, image_size=40)
  with tarfile.open(path, "w") as tar:
    for i, (image, caption) in enumerate(data):
      _tar_member(tar, f"{i:05d}.png", encode(image, "PNG"))
      _tar_member(tar, f"{i:05d}.txt", caption.encode())
      if i != 2:  # key 2 has no synthetic caption; key 3's is empty
        _tar_member(tar, f"{i:05d}.syn.txt", b"" if i == 3 else f"synthetic {i}".encode())
  plain = WebDatasetSource(path)
  assert [plain[i]["caption"] for i in range(4)] == [c for _, c in data]
  assert all("synthetic_caption" not in plain[i] for i in range(4))
  source = WebDatasetSource(path, synthetic_caption_exts=("syn.txt",))
  assert source[0]["synthetic_caption"] == "synthetic 0"
  assert source[1]["caption"] == data[1][1] and source[1]["synthetic_caption"] == "synthetic 1"
  assert records.skip_kind(source[2]) == records.skip_kind(source[3]) == "empty_caption"
  it = pipeline.train_iterator(source, per_process_batch_size=2, seed=0,
                               tokenizer=ClipTokenizer(16), image_size=32)
  batch = next(it)
  assert batch["synthetic_text"].shape == batch["text"].shape == (2, 16)
  assert batch["skipped"].sum() == batch["skipped"][:, records.SKIP_INDEX["empty_caption"]].sum()


def test_checkpoints_written_before_the_loss_state_existed_still_restore(tmp_path):
  """A TrainState saved without `loss_state` (every run before ALIP) restores into today's state
  with the empty loss state of a loss without one; a loss that has a state (ALIP) cannot take it."""
  import flax  # pylint: disable=g-import-not-at-top
  from rankclip_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from rankclip_jax.step import TrainState  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class Before:  # TrainState's fields before the loss state
    step: jax.Array
    params: dict
    opt_state: dict
    data_skipped: jax.Array

  old = Before(step=jnp.int32(2), params={"w": jnp.arange(6.0).reshape(2, 3)},
               opt_state={"mu": jnp.ones((2, 3))}, data_skipped=jnp.arange(5, dtype=jnp.int32))
  ck = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=2, async_save=False)
  try:
    ck.save(2, old, force=True)
    ck.wait()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract(loss_state):
      new = TrainState(step=old.step, params=old.params, opt_state=old.opt_state,
                       data_skipped=old.data_skipped, loss_state=loss_state)
      return checkpointing.abstract_with_shardings(new, jax.tree.map(lambda _: device, new))

    step, state = ck.restore(abstract({}))
    assert step == 2 and state.loss_state == {}
    np.testing.assert_array_equal(state.params["w"], old.params["w"])
    np.testing.assert_array_equal(state.data_skipped, old.data_skipped)
    with pytest.raises(checkpointing.CheckpointError, match="loss_state"):
      ck.restore(abstract(losses.alip_initial_state()), step=2)
  finally:
    ck.close()


def test_both_captions_go_through_the_text_tower_each_in_its_own_field():
  """One interleaved text-tower pass for the two captions: each field gets its own tokens'
  embeddings, row for row (a swap or a misaligned split would mix pairs up)."""
  from rankclip_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  from tests.test_optim import StandInModel  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = {"image": {"w": np.ones(3, np.float32)}, "text": {"w": np.full(3, 2.0, np.float32)},
            "logit_scale": np.float32(2.0)}
  batch = {"image": rng.normal(size=(6, 8, 8, 3)).astype(np.float32),
           "text": rng.integers(1, 100, size=(6, 8)).astype(np.int32),
           "synthetic_text": rng.integers(100, 200, size=(6, 8)).astype(np.int32)}
  model = StandInModel()
  emb, scale = step_lib.embed_image_text(model, params, batch, jax.random.key(0))
  image, text, _ = model.apply({"params": params}, batch["image"], batch["text"])
  _, synthetic_text, _ = model.apply({"params": params}, batch["image"], batch["synthetic_text"])
  assert set(emb) == {"image", "text", "synthetic_text"} and float(scale) == 2.0
  np.testing.assert_array_equal(emb["image"], image)
  np.testing.assert_array_equal(emb["text"], text)
  np.testing.assert_array_equal(emb["synthetic_text"], synthetic_text)
