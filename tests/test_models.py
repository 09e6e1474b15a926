"""Model shapes, the CLIP layout's invariants, and the named sizes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankclip_jax.data.tokenizer import EOT_ID, SOT_ID
from rankclip_jax.models import SIZES, TwoTowers
from rankclip_jax.models.two_towers import LOGIT_SCALE_MAX, clamp_logit_scale


@pytest.fixture(scope="module")
def micro():
  model = TwoTowers(SIZES["micro"], context_length=8)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                               jnp.zeros((1, 8), jnp.int32))["params"]
  return model, params


def tokens(rows):
  out = np.zeros((len(rows), 8), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return jnp.asarray(out)


def test_output_shapes_and_normalisation(micro):
  model, params = micro
  images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  txt = tokens([[SOT_ID, 320, EOT_ID], [SOT_ID, 736, 7117, EOT_ID], [SOT_ID, EOT_ID]])
  i, t, s = model.apply({"params": params}, images, txt)
  assert i.shape == (3, 32) and t.shape == (3, 32)
  np.testing.assert_allclose(jnp.linalg.norm(i, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(t, axis=-1), 1.0, rtol=1e-5)
  assert float(s) == pytest.approx(math.log(1 / 0.07), rel=1e-6)


def test_text_pools_at_eot_and_is_causal(micro):
  model, params = micro
  # Tokens after the end-of-text token must not change the embedding (causal mask + EOT pooling).
  a = tokens([[SOT_ID, 320, 736, EOT_ID, 0, 0]])
  b = tokens([[SOT_ID, 320, 736, EOT_ID, 999, 5]])
  c = tokens([[SOT_ID, 320, 737, EOT_ID, 0, 0]])
  ea = model.apply({"params": params}, a, method="encode_text")
  eb = model.apply({"params": params}, b, method="encode_text")
  ec = model.apply({"params": params}, c, method="encode_text")
  np.testing.assert_allclose(ea, eb, atol=1e-6)
  assert float(jnp.abs(ea - ec).max()) > 1e-4


def test_image_tower_uses_every_patch(micro):
  model, params = micro
  x = jax.random.normal(jax.random.key(2), (1, 32, 32, 3))
  y = x.at[:, 28:, 28:, :].add(1.0)  # only the last patch changes
  ex = model.apply({"params": params}, x, method="encode_image")
  ey = model.apply({"params": params}, y, method="encode_image")
  assert float(jnp.abs(ex - ey).max()) > 1e-5


def test_bad_image_size_is_a_clear_error(micro):
  model, params = micro
  with pytest.raises(ValueError, match="not divisible by patch_size"):
    model.apply({"params": params}, jnp.zeros((1, 30, 30, 3)), method="encode_image")


def test_logit_scale_clamp_keeps_gradient_at_the_maximum():
  assert float(clamp_logit_scale(jnp.float32(10.0))) == pytest.approx(LOGIT_SCALE_MAX)
  g = jax.grad(clamp_logit_scale)(jnp.float32(LOGIT_SCALE_MAX))
  assert float(g) == 1.0


@pytest.mark.parametrize("size,image_size,expected_millions", [
    ("B/32", 224, 151.3),  # OpenAI CLIP ViT-B/32: 151.28M parameters
    ("B/16", 224, 149.6),  # OpenAI CLIP ViT-B/16: 149.62M
])
def test_clip_sizes_match_published_parameter_counts(size, image_size, expected_millions):
  model = TwoTowers(SIZES[size], context_length=77)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                          jnp.zeros((1, 77), jnp.int32))
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert n / 1e6 == pytest.approx(expected_millions, abs=0.5)


def _np_conv(x, kernel, bias, stride, pad):
  """A plain numpy convolution: x [B, H, W, C], kernel [kh, kw, C, O], pad ((lo, hi), (lo, hi))."""
  x = np.pad(x, ((0, 0), *pad, (0, 0)))
  kh, kw = kernel.shape[:2]
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = sum(np.einsum("bhwc,co->bhwo", x[:, i:i + stride * oh:stride, j:j + stride * ow:stride],
                      kernel[i, j]) for i in range(kh) for j in range(kw))
  return out + (0 if bias is None else bias)


def _np_layer_norm(x, p, eps=1e-6):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_stems_give_a_hand_written_reference_token_grid(stem):
  """The stem's tokens and the sequence entering the encoder, against numpy written from the
  description: patch = one stride-P P x P convolution; conv = log2(P) x [3x3 stride-2 convolution
  with 'SAME' padding, LayerNorm, GELU] then a 1x1 projection; then the class token first, the grid
  row by row, plus the position embedding, ln_pre."""
  from rankclip_jax.models.vit import VisionTransformer
  vit = VisionTransformer(patch_size=8, width=64, depth=1, num_heads=2, embed_dim=16, stem=stem)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  # Random values for every parameter (biases and LayerNorm ones too, not their 0 / 1 init, so that
  # each one counts), drawn in numpy: no init to compile, one jitted apply.
  shapes = jax.eval_shape(vit.init, jax.random.key(0), x)["params"]
  p = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)
  out, state = jax.jit(lambda p, x: vit.apply({"params": p}, x, capture_intermediates=True,
                                              mutable=["intermediates"]))(p, x)
  assert out.shape == (2, 16) and ("stem_conv_0" in p) == (stem == "conv")
  if stem == "patch":
    y = _np_conv(x, p["patch_embed"]["kernel"], None, 8, ((0, 0), (0, 0)))
  else:
    y = x
    for i, channels in enumerate([32, 32, 64]):  # width / 4, / 2, / 1, at least 32
      assert p[f"stem_conv_{i}"]["kernel"].shape == (3, 3, y.shape[-1], channels)
      # 'SAME' at stride 2 on an even size pads one pixel, after the end (XLA's rule; torch's
      # padding=1 would pad both sides and shift every output by a pixel).
      y = _np_conv(y, p[f"stem_conv_{i}"]["kernel"], p[f"stem_conv_{i}"]["bias"], 2,
                   ((0, 1), (0, 1)))
      y = _np_layer_norm(y, p[f"stem_ln_{i}"])
      y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))  # nn.gelu: tanh
    y = _np_conv(y, p["patch_embed"]["kernel"], p["patch_embed"]["bias"], 1, ((0, 0), (0, 0)))
  assert y.shape == (2, 4, 4, 64)  # (32 / 8)^2 tokens, whatever the stem
  got = state["intermediates"]
  np.testing.assert_allclose(got["patch_embed"]["__call__"][0], y, rtol=1e-4, atol=1e-4)
  tokens = np.concatenate([np.broadcast_to(p["cls"], (2, 1, 64)), y.reshape(2, 16, 64)], axis=1)
  np.testing.assert_allclose(got["ln_pre"]["__call__"][0],
                             _np_layer_norm(tokens + p["pos_embedding"], p["ln_pre"]),
                             rtol=1e-4, atol=1e-4)


def test_conv_stem_needs_a_power_of_two_patch():
  from rankclip_jax.models.vit import VisionTransformer
  bad = VisionTransformer(patch_size=6, width=32, depth=1, num_heads=2, embed_dim=16, stem="conv")
  with pytest.raises(ValueError, match="power-of-two"):
    bad.init(jax.random.key(0), jnp.zeros((1, 36, 36, 3)))


def _pair_loss(model, params):
  """A scalar that depends on every output of both towers, unevenly."""
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  txt = tokens([[SOT_ID, 320, EOT_ID], [SOT_ID, 736, 7117, EOT_ID]])
  i, t, s = model.apply({"params": params}, images, txt)
  return jnp.sum(jnp.exp(s) * i @ t.T * jnp.arange(4.0).reshape(2, 2))


# Jitted: op-by-op (eager) differentiation of the towers takes 3x longer on first use.
_pair_grads = jax.jit(jax.value_and_grad(_pair_loss, argnums=1), static_argnums=0)


def _remat_policies(jaxpr):
  """The policies of every rematerialised (jax.checkpoint) region in a jaxpr, nested ones too."""
  found = []
  for eqn in jaxpr.eqns:
    if "policy" in eqn.params:
      found.append(eqn.params["policy"])
    for value in eqn.params.values():
      sub = getattr(value, "jaxpr", value)
      if hasattr(sub, "eqns"):
        found += _remat_policies(sub)
  return found


@pytest.fixture(scope="module")
def micro_pair_grads(micro):
  """_pair_loss of the micro model and its gradients (the reference of the remat and scan tests)."""
  model, params = micro
  return _pair_grads(model, params)


def _assert_same_pair_grads(model, params, reference):
  """`model`'s _pair_loss and gradients equal `reference` (a micro_pair_grads) up to float round-off
  (XLA fuses and orders the ops of another formulation differently; gradients here are O(1)-O(10))."""
  want, want_g = reference
  got, got_g = _pair_grads(model, params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), got_g, want_g)


def test_remat_policies_are_applied_and_keep_the_numbers(micro, micro_pair_grads):
  """model.remat_policy: every block is rematerialised with the named jax.checkpoint_policies
  policy, per layer and inside the scan; the value and gradients are those without remat (scanned,
  with the default policy: test_scanned_layers_compute_what_the_per_layer_stack_computes)."""
  from rankclip_jax.models.transformer import REMAT_POLICIES, with_layer_layout
  model, params = micro
  stacked = with_layer_layout(params, scanned=True)
  # Without model.remat, only each block's elementwise recomputation (model.recompute_elementwise,
  # on by default: both LayerNorms and the MLP's activation, no policy) is rematerialised.
  plain = _remat_policies(jax.make_jaxpr(lambda p: _pair_loss(model, p))(params).jaxpr)
  assert len(plain) == 3 * 4 and all(u is None for u in plain), plain
  off = TwoTowers(SIZES["micro"], context_length=8, recompute_elementwise=False)
  assert not _remat_policies(jax.make_jaxpr(lambda p: _pair_loss(off, p))(params).jaxpr)
  for name, policy in REMAT_POLICIES.items():
    for scan, p in ((False, params), (True, stacked)):
      remat = TwoTowers(SIZES["micro"], context_length=8, scan=scan, remat=True, remat_policy=name)
      used = [u for u in _remat_policies(jax.make_jaxpr(lambda q, m=remat: _pair_loss(m, q))(p).jaxpr)
              if u is not None]
      # One region per block (2 + 2 layers), or one per tower's scan body.
      assert len(used) == (2 if scan else 4) and all(u is policy for u in used), (name, used)
  # The numbers, for the policy between the extremes (JAX's remat is exact whatever it keeps).
  remat = TwoTowers(SIZES["micro"], context_length=8, remat=True,
                    remat_policy="dots_with_no_batch_dims_saveable")
  _assert_same_pair_grads(remat, params, micro_pair_grads)
  with pytest.raises(ValueError, match="rematerialisation policy 'dots'"):
    TwoTowers(SIZES["micro"], context_length=8, remat=True, remat_policy="dots").init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32))


def test_scanned_layers_compute_what_the_per_layer_stack_computes(micro, micro_pair_grads,
                                                                   remat=True):
  """model.scan_layers (here with remat inside the scan; scan alone trains in
  test_train.py::test_fsdp_and_data_parallel_give_the_same_loss): the same parameters stacked on a
  [depth] axis give the same outputs and gradients; the layouts convert into each other exactly."""
  from rankclip_jax.models.transformer import is_scanned, with_layer_layout
  model, params = micro
  scanned_model = TwoTowers(SIZES["micro"], context_length=8, scan=True, remat=remat)
  stacked = with_layer_layout(params, scanned=True)
  assert is_scanned(stacked) and not is_scanned(params)
  shapes = jax.tree.map(lambda x: x.shape, scanned_model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32))["params"])
  assert jax.tree.map(np.shape, stacked) == jax.tree.map(tuple, shapes,
                                                         is_leaf=lambda x: isinstance(x, tuple))
  assert stacked["text"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].shape[0] == 2
  jax.tree.map(np.testing.assert_array_equal, with_layer_layout(stacked, scanned=False),
               jax.tree.map(np.asarray, params))

  want, want_g = micro_pair_grads
  got, got_g = _pair_grads(scanned_model, stacked)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Float reassociation only (gradients here are O(1)-O(10)).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
               with_layer_layout(jax.tree.map(np.asarray, got_g), scanned=False),
               jax.tree.map(np.asarray, want_g))


def test_exact_gelu_matches_its_definition():
  """models.transformer.gelu (erf form, fused by XLA) is x * Phi(x): against scipy in float64 and
  jax.nn.gelu's erfc form, over the range activations take and far into the tails."""
  from scipy.special import erf
  from rankclip_jax.models.transformer import ACTIVATIONS, gelu
  assert ACTIVATIONS["gelu"] is gelu
  x = np.linspace(-12, 12, 20001).astype(np.float32)
  want = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
  got = np.asarray(jax.jit(gelu)(x), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, np.asarray(jax.nn.gelu(x, approximate=False)), atol=2e-6)
  g = np.asarray(jax.vmap(jax.grad(gelu))(x), np.float64)  # Phi(x) + x phi(x)
  dwant = 0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-x.astype(np.float64) ** 2 / 2) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(g, dwant, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_is_flax_multi_head_attention_with_a_fused_projection(causal):
  """Same parameter tree and initial values as flax's MultiHeadDotProductAttention (checkpoints
  and the OpenCLIP converter depend on it), the same outputs and gradients."""
  import flax.linen as nn
  from rankclip_jax.models.transformer import SelfAttention
  x = jax.random.normal(jax.random.key(3), (2, 7, 32)) * 2.0 + 0.5
  mask = nn.make_causal_mask(jnp.ones((2, 7))) if causal else None
  ours, flax_mha = SelfAttention(num_heads=4, causal=causal), nn.MultiHeadDotProductAttention(num_heads=4)
  params = ours.init(jax.random.key(0), x)
  want = flax_mha.init(jax.random.key(0), x, x, mask=mask)
  assert jax.tree.structure(params) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, params, want)
  params = _perturbed(params)
  np.testing.assert_allclose(ours.apply(params, x), flax_mha.apply(params, x, x, mask=mask),
                             rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))  # pylint: disable=unnecessary-lambda-assignment
  g_ours = jax.grad(loss(lambda p: ours.apply(p, x)))(params)
  g_want = jax.grad(loss(lambda p: flax_mha.apply(p, x, x, mask=mask)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5), g_ours, g_want)


def _perturbed(params, seed=4):
  """Every parameter moved by N(0, 0.1^2), so that zero biases cannot hide a misplaced one."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [p + 0.1 * jax.random.normal(k, p.shape)
                                      for p, k in zip(leaves, keys)])


# model.attention's implementations against the hand-written one ("einsum"). float32: round-off of
# another order of operations. bfloat16: q, k, v, the weights and the output are rounded to 8 bits
# of mantissa (a relative step of 2^-8; outputs here are O(1)-O(10)), so outputs agree within about
# two such steps; the gradients' sums over tokens add up many such roundings, so they are held to
# the float32 gradient in norm (both implementations measure 1.5-3.5% here).
_ATTENTION_TOLERANCE = {jnp.float32: dict(rtol=1e-5, atol=1e-5),
                        jnp.bfloat16: dict(rtol=2e-2, atol=5e-2)}
_BF16_GRAD_RELATIVE_ERROR = 0.06


def _flat(tree):
  return np.concatenate([np.asarray(leaf, np.float32).ravel() for leaf in jax.tree.leaves(tree)])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_every_attention_implementation_computes_the_hand_written_one(dtype):
  """model.attention="xla" (jax.nn.dot_product_attention; "cudnn" is the same call with cuDNN's
  kernel, GPU only: benchmarks/accelerator_check.py compares it there) has the same parameters
  and, bidirectional and causal, over every token and for one pooled query per row (the last
  block's, at different positions), the outputs and gradients of "einsum" (the hand-written one)."""
  from rankclip_jax.models.transformer import SelfAttention
  x = jax.random.normal(jax.random.key(3), (3, 9, 32)) * 2.0 + 0.5
  index = jnp.asarray([0, 4, 8])
  f32 = lambda a: np.asarray(a, np.float32)  # pylint: disable=unnecessary-lambda-assignment
  for causal in (False, True):
    ours, xla, exact = (SelfAttention(num_heads=4, causal=causal, attention=a, dtype=d)
                        for a, d in (("einsum", dtype), ("xla", dtype), ("einsum", jnp.float32)))
    params = ours.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, params, xla.init(jax.random.key(0), x))
    params = _perturbed(params)
    for query in (None, index):
      out = [m.apply(params, x, query) for m in (ours, xla)]
      assert out[0].dtype == out[1].dtype == dtype
      assert out[0].shape == (3, 9 if query is None else 1, 32)
      np.testing.assert_allclose(f32(out[1]), f32(out[0]), **_ATTENTION_TOLERANCE[dtype],
                                 err_msg=f"{causal=} {query=}")
      grads = [jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x, query).astype(jnp.float32))))(
          params) for m in (ours, xla, exact)]
      if dtype == jnp.float32:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=5e-5),
                     grads[0], grads[1])
      else:
        want = _flat(grads[2])
        for got in grads[:2]:
          error = np.linalg.norm(_flat(got) - want) / np.linalg.norm(want)
          assert error < _BF16_GRAD_RELATIVE_ERROR, (causal, query, error)
  # The pooled query is what the full computation gives at its position.
  full = xla.apply(params, x)
  pooled = xla.apply(params, x, index)
  np.testing.assert_allclose(f32(pooled[:, 0]), f32(full[jnp.arange(3), index]),
                             **_ATTENTION_TOLERANCE[dtype])


@pytest.mark.parametrize("scan", [False, True], ids=["per_layer", "scanned"])
def test_both_towers_with_xla_attention_load_the_same_parameters_and_compute_the_same(
    micro, micro_pair_grads, scan):
  """The whole model with model.attention="xla": the same parameter tree as with "einsum" (a
  checkpoint loads either way), and the pair loss and its gradients (both towers, the text tower
  causal, the last block pooled-only) of the hand-written attention, per layer and scanned."""
  from rankclip_jax.models.transformer import with_layer_layout
  model, params = micro
  xla = TwoTowers(SIZES["micro"], context_length=8, attention="xla", scan=scan)
  init = jax.eval_shape(xla.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                        jnp.zeros((1, 8), jnp.int32))["params"]
  p = with_layer_layout(params, scanned=scan)
  assert jax.tree.structure(init) == jax.tree.structure(p)
  assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, p)
  if scan:
    want, want_g = micro_pair_grads
    got, got_g = _pair_grads(xla, p)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got_g = with_layer_layout(got_g, scanned=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), got_g, want_g)
  else:
    _assert_same_pair_grads(xla, p, micro_pair_grads)


def test_recomputed_norms_and_activations_keep_the_numbers_in_less_memory(micro, micro_pair_grads):
  """model.recompute_elementwise (on by default): the value and gradients of the pair loss are those
  computed with every LayerNorm output and MLP activation kept (up to round-off), and the compiled gradient needs
  less working memory, per layer and inside the scan."""
  from rankclip_jax.models.transformer import with_layer_layout
  _, params = micro
  # XLA fuses the recomputed ops into other kernels (as for model.remat).
  kept = TwoTowers(SIZES["micro"], context_length=8, recompute_elementwise=False)
  _assert_same_pair_grads(kept, params, micro_pair_grads)
  for scan, p in ((False, params), (True, with_layer_layout(params, scanned=True))):
    temp = {}
    for recompute in (True, False):
      m = TwoTowers(SIZES["micro"], context_length=8, scan=scan, recompute_elementwise=recompute)
      grad = jax.jit(jax.value_and_grad(lambda q, m=m: _pair_loss(m, q)))
      temp[recompute] = grad.lower(p).compile().memory_analysis().temp_size_in_bytes
    assert temp[True] < temp[False], (scan, temp)


def test_the_last_block_computes_only_the_pooled_token(micro, micro_pair_grads):
  """model.last_block_pooled_only (on by default): each tower's last block computes only the token
  the tower pools (the text tower's end-of-text token wherever it stands, the image tower's class
  token with pool="cls"), with the value and gradients of the full computation up to round-off and
  fewer FLOPs; with pool="gap" the image tower computes every token as before."""
  from rankclip_jax.flops import step_flops
  model, params = micro
  full = TwoTowers(SIZES["micro"], context_length=8, last_block_pooled_only=False)
  _assert_same_pair_grads(full, params, micro_pair_grads)
  # The end-of-text token at the start, in the middle, last, and missing (the last position).
  txt = tokens([[SOT_ID, EOT_ID, 5, 6], [SOT_ID, 320, 736, EOT_ID], [SOT_ID] + [320] * 6 + [EOT_ID],
                [SOT_ID] + [736] * 7])
  images = jax.random.normal(jax.random.key(5), (4, 32, 32, 3))
  gap = [TwoTowers(SIZES["micro"], context_length=8, pool="gap", last_block_pooled_only=flag)
         for flag in (True, False)]
  # The micro parameters without the class token and its position.
  gap_params = dict(params, image={k: v for k, v in params["image"].items() if k != "cls"})
  gap_params["image"]["pos_embedding"] = params["image"]["pos_embedding"][1:]
  ratio = {}
  for name, pair, p, method, x in (("text", (model, full), params, "encode_text", txt),
                                   ("image, cls", (model, full), params, "encode_image", images),
                                   ("image, gap", gap, gap_params, "encode_image", images)):
    outputs = [m.apply({"params": p}, x, method=method) for m in pair]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    # XLA's cost analysis of the lowered (not compiled) gradient.
    flops = [step_flops(jax.jit(jax.grad(lambda q, m=m: jnp.sum(jnp.sin(
        m.apply({"params": q}, x, method=method))))), p) for m in pair]
    ratio[name] = flops[0] / flops[1]
  # Two layers a tower: the last block is about half of each encoder's work.
  assert ratio["text"] < 0.75 and ratio["image, cls"] < 0.75, ratio
  assert ratio["image, gap"] == 1.0, ratio
