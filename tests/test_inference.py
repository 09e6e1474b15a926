"""rankclip_jax.load: a run written by a sharded 8-device job opens on one device, in one call, and
its helpers agree with the training-time evaluation path."""

import numpy as np
import pytest
from PIL import Image

import jax
import rankclip_jax
from rankclip_jax import train
from rankclip_jax.data import synthetic
from rankclip_jax.evaluation.embed import Embedder
from tests.test_train import micro_config
from tests.tracing import counting_traces


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = micro_config(total_steps=4, **{
      "mesh.data": 2, "mesh.fsdp": 4, "sharding.rules": ((".*", "fsdp"),),
      "sharding.fsdp_min_size": 1, "loss.name": "siglip", "loss.cross_weight": 0.0,
      "loss.inmodal_weight": 0.0, "evals": {}})
  train.train_and_evaluate(config, workdir)
  trainer = train.Trainer(config)
  from rankclip_jax import checkpointing  # pylint: disable=g-import-not-at-top
  ck = checkpointing.Checkpointer(workdir + "/checkpoints", every_steps=1, keep=10)
  _, state = ck.restore(trainer.abstract_state_with_shardings())
  ck.close()
  kernel = state.params["image"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert "fsdp" in str(kernel.sharding.spec)  # the checkpoint really was written sharded
  return workdir, trainer, state


def test_load_restores_a_sharded_run_on_one_device(fsdp_run):
  workdir, trainer, state = fsdp_run
  m = rankclip_jax.load(workdir)
  assert m.step == 4 and m.config.loss.name == "siglip" and "logit_bias" in m.params
  for leaf in jax.tree.leaves(m.params):
    assert len(leaf.sharding.device_set) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               m.params, state.params)
  # The same checkpoint by its step folder, and an explicit step.
  assert rankclip_jax.load(workdir + "/checkpoints/4").step == 4
  assert rankclip_jax.load(workdir, step=3).step == 3  # the run keeps steps 3 and 4
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 2"):
    rankclip_jax.load(workdir, step=2)
  with pytest.raises(FileNotFoundError, match="not a run"):
    rankclip_jax.load(workdir + "/nothing_here")


def test_batches_of_different_sizes_share_a_compiled_encoder(fsdp_run):
  """Batches are padded to a power of two (then a multiple of the device count), so that inputs in
  many counts need few compilations: 5, 6, 7 and 8 captions are one compilation of the text tower
  in a notebook, 9 a second; in the training-time evaluation on 8 devices 12 and 16 token rows are
  one, 18 a second. Each row's embedding is the same whatever batch it came in."""
  workdir, trainer, state = fsdp_run
  m = rankclip_jax.load(workdir)
  captions = [f"{n} red circles." for n in range(9)]
  with counting_traces() as traced:
    small = [m.encode_texts(captions[:k]) for k in (5, 6, 7)]
    eight = m.encode_texts(captions[:8])
    assert len(traced) == 1
    nine = m.encode_texts(captions)
    assert len(traced) == 2
  for e in small + [nine[:8]]:
    np.testing.assert_allclose(e, eight[:len(e)], atol=1e-6)

  embedder = Embedder(trainer.model, trainer.mesh)
  tokens = np.asarray(m.tokenizer(captions * 2))
  with counting_traces() as traced:
    twelve = embedder.texts(state.params, tokens[:12])
    sixteen = embedder.texts(state.params, tokens[:16])
    assert len(traced) == 1
    eighteen = embedder.texts(state.params, tokens)
    assert len(traced) == 2
  assert twelve.shape == (12, eight.shape[1]) and eighteen.shape == (18, eight.shape[1])
  np.testing.assert_allclose(twelve, sixteen[:12], atol=1e-6)
  np.testing.assert_allclose(eighteen[:16], sixteen, atol=1e-6)
  np.testing.assert_allclose(sixteen[:8], eight, atol=1e-5)  # 8 devices, FSDP: another program


def test_helpers_match_the_evaluation_path_on_plain_inputs(fsdp_run):
  workdir, trainer, state = fsdp_run
  m = rankclip_jax.load(workdir)
  size = m.config.image_size
  source = synthetic.SyntheticScenes(num_records=6, split="test", image_size=size)
  arrays = [source[i]["image"] for i in range(6)]
  captions = [source[i]["caption"] for i in range(6)]
  pil = [Image.fromarray(a) for a in arrays]

  emb = m.encode_images(pil)
  assert emb.shape == (6, m.model.sizes.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(m.encode_images(arrays), emb, atol=1e-6)  # numpy == PIL input
  # A larger PIL image is resized to the run's resolution.
  big = [im.resize((size * 2, size * 2), Image.NEAREST) for im in pil]
  assert m.encode_images(big).shape == emb.shape

  embedder = Embedder(trainer.model, trainer.mesh)
  batch = {"image": np.stack([m.preprocess(a) for a in arrays]), "mask": np.ones(6, bool)}
  want_img, _ = embedder.images(state.params, [batch])
  np.testing.assert_allclose(emb, want_img, atol=1e-5)
  want_txt = embedder.texts(state.params, np.asarray(m.tokenizer(captions)))
  np.testing.assert_allclose(m.encode_texts(captions), want_txt, atol=1e-5)

  probs = m.classify(pil, ["circle", "square", "star"], templates=("a {}.", "a photo of a {}."))
  assert probs.shape == (6, 3)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  # classify is the softmax of scale * image . ensembled class embedding.
  cls = m.class_embeddings(["circle", "square", "star"], ("a {}.", "a photo of a {}."))
  logits = m.logit_scale * emb @ cls.T
  want = np.exp(logits - logits.max(1, keepdims=True))
  np.testing.assert_allclose(probs, want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
  # The ensemble, computed independently: class c's embedding is the renormalised mean of its prompts'.
  a, b = m.encode_texts(["a circle.", "a square.", "a star."]), m.encode_texts(
      ["a photo of a circle.", "a photo of a square.", "a photo of a star."])
  mean = a + b
  np.testing.assert_allclose(cls, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
  with pytest.raises(TypeError, match="list of strings"):
    m.encode_texts("a circle.")
