"""Forward+backward time and memory of CLIP vs RankCLIP (and each execution strategy), and of
google/rax's ListMLE on the same four ranking matrices, on whatever devices are present.

  python -m benchmarks.loss_bench                       # CI-sized: N = 256 .. 1024 on CPU
  python -m benchmarks.loss_bench --sizes 1024 4096 8192 16384 32768 --chunk 512   # an accelerator
  python -m benchmarks.loss_bench --sizes 8192 --model_step B/32   # + one ViT-B/32 training step
  python -m benchmarks.loss_bench --sizes 32768 --chunk 512 --compile_only   # memory, no run

Each row: a loss at batch N with D-dim random unit embeddings, timed as the median of --repeats
calls of a jitted value_and_grad w.r.t. both embeddings and the scale (after a compile call), and
XLA's compiled scratch memory for it (`memory_analysis().temp_size_in_bytes`: what the loss needs
beyond its inputs and outputs). "sharded" runs inside shard_map over all local devices (each its
N/P rows); "chunked" processes --chunk rows at a time, rematerialised. A configuration that does
not fit prints OOM and the sweep goes on. The last column is time relative to CLIP at the same N.
--compile_only compiles each configuration for abstract inputs and prints its scratch memory
without running it: what a batch would need, on a machine too slow or too small to run it.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, PartitionSpec as P

from rankclip_jax import losses

SCALE = 1 / 0.07


def unit_rows(key, n, d):
  x = jax.random.normal(key, (n, d), jnp.float32)
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def rax_rankclip(image_emb, text_emb, scale):
  """The four ranking terms through rax.listmle_loss (an outside reference implementation)."""
  import rax  # pylint: disable=g-import-not-at-top
  n = image_emb.shape[0]
  big_l = scale * image_emb @ text_emb.T
  big_lt = scale * text_emb @ image_emb.T
  s_i = scale * image_emb @ image_emb.T
  s_t = scale * text_emb @ text_emb.T
  pl = lambda x, k: rax.listmle_loss(x, jax.lax.stop_gradient(k), reduce_fn=jnp.mean)
  return (0.5 * (pl(big_l, big_lt) + pl(big_lt, big_l)) / n +
          0.5 * (pl(s_i, s_t) + pl(s_t, s_i)) / n)


def make_loss(kind: str, *, chunk: int | None, mesh=None):
  """kind: clip | rankclip | rankclip_terms (ranking terms only) | rax_terms."""
  def fn(i, t, s, axis_name=None):
    if kind == "clip":
      return losses.clip_loss(i, t, s, axis_name=axis_name, chunk_size=chunk)
    if kind == "rankclip":
      return losses.rankclip_loss(i, t, s, cross_weight=1.0, inmodal_weight=1.0,
                                  axis_name=axis_name, chunk_size=chunk)[0]
    if kind == "rax_terms":
      return rax_rankclip(i, t, s)
    raise ValueError(kind)

  if mesh is None:
    return fn
  axes = mesh.axis_names[0]
  return jax.shard_map(functools.partial(fn, axis_name=axes), mesh=mesh,
                       in_specs=(P(axes), P(axes), P()), out_specs=P())


def compile_step(loss_fn, n, d):
  """jitted value_and_grad of loss_fn w.r.t. (image, text, scale), compiled for batch n (abstract
  inputs, nothing run), and XLA's scratch bytes for it (None if the backend does not say)."""
  emb = jax.ShapeDtypeStruct((n, d), jnp.float32)
  step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))
  compiled = step.lower(emb, emb, jax.ShapeDtypeStruct((), jnp.float32)).compile()
  mem = compiled.memory_analysis()
  return compiled, None if mem is None else mem.temp_size_in_bytes


def measure(loss_fn, n, d, repeats):
  """(median seconds, scratch bytes) of jitted value_and_grad, or (None, None) if it does not fit."""
  key_i, key_t = jax.random.split(jax.random.key(0))
  img, txt = unit_rows(key_i, n, d), unit_rows(key_t, n, d)
  scale = jnp.float32(SCALE)
  try:
    compiled, scratch = compile_step(loss_fn, n, d)
    jax.block_until_ready(compiled(img, txt, scale))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(img, txt, scale))
      times.append(time.perf_counter() - start)
  except Exception as e:  # pylint: disable=broad-except
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      return None, None
    raise
  return statistics.median(times), scratch


def model_step_seconds(size: str, n: int, repeats: int, dtype: str,
                       image_size: int = 224) -> float:
  """Median time of one forward+backward+AdamW step of the CLIP loss with towers `size` at batch N
  on one device (image_size px, context 77): the denominator of 'ranking terms / training step'."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from rankclip_jax.models import build_model  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(size=size, act="gelu", pool="cls", stem="patch",
                                       remat=False, dtype=dtype, init_scale=SCALE, init_bias=0.0))
  model = build_model(cfg, context_length=77)
  images = jnp.zeros((n, image_size, image_size, 3), jnp.float32)
  tokens = jnp.ones((n, 77), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1], tokens[:1])["params"]
  tx = optax.adamw(1e-4)
  opt = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt):
    def loss(p):
      i, t, ls = model.apply({"params": p}, images, tokens)
      return losses.clip_loss(i, t, jnp.exp(ls))
    g = jax.grad(loss)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt

  params, opt = step(params, opt)
  jax.block_until_ready(params)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    params, opt = step(params, opt)
    jax.block_until_ready(params)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--chunk", type=int, default=128, help="rows per block for 'chunked'")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no_rax", action="store_true", help="skip rax.listmle_loss")
  parser.add_argument("--model_step", default="", help="also time a training step of this model "
                      "size (e.g. B/32) at each N, and report ranking terms / step")
  parser.add_argument("--model_dtype", default="bfloat16")
  parser.add_argument("--model_image_size", type=int, default=224,
                      help="the model step's image resolution (224: what the towers train at)")
  parser.add_argument("--compile_only", action="store_true",
                      help="print each configuration's scratch memory without running it")
  args = parser.parse_args()

  devices = jax.devices()
  print(f"devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
        f"D={args.dim}, chunk={args.chunk}, median of {args.repeats}")
  mesh = None
  if len(devices) > 1:
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,))
  variants = [("clip", "clip", None, None), ("rankclip plain", "rankclip", None, None),
              ("rankclip chunked", "rankclip", args.chunk, None)]
  if mesh is not None:
    variants += [("clip sharded", "clip", None, mesh), ("rankclip sharded", "rankclip", None, mesh),
                 ("rankclip sharded+chunked", "rankclip", args.chunk, mesh)]
  if not args.no_rax:
    variants.append(("rax listmle (4 terms)", "rax_terms", None, None))

  print(f"| N | loss | fwd+bwd ms | scratch MiB | x CLIP |")
  print("|---|---|---|---|---|")
  for n in args.sizes:
    clip_time = None
    for name, kind, chunk, m in variants:
      if chunk is not None and (n // (len(devices) if m is not None else 1)) % chunk:
        continue
      if args.compile_only:
        _, scratch = compile_step(make_loss(kind, chunk=chunk, mesh=m), n, args.dim)
        mib = f"{scratch / 2**20:.1f}" if scratch is not None else "n/a"
        print(f"| {n} | {name} | not run | {mib} | |", flush=True)
        continue
      seconds, scratch = measure(make_loss(kind, chunk=chunk, mesh=m), n, args.dim, args.repeats)
      if seconds is None:
        print(f"| {n} | {name} | OOM | | |")
        continue
      if kind == "clip" and m is None:
        clip_time = seconds
      ratio = f"{seconds / clip_time:.2f}" if clip_time else ""
      mib = f"{scratch / 2**20:.1f}" if scratch is not None else "n/a"
      print(f"| {n} | {name} | {seconds * 1e3:.2f} | {mib} | {ratio} |", flush=True)
    if args.model_step and not args.compile_only:
      step = model_step_seconds(args.model_step, n, args.repeats, args.model_dtype,
                                args.model_image_size)
      terms, _ = measure(make_loss("rankclip", chunk=None, mesh=None), n, args.dim, args.repeats)
      clip_only, _ = measure(make_loss("clip", chunk=None, mesh=None), n, args.dim, args.repeats)
      if terms is not None:
        extra = terms - clip_only
        print(f"| {n} | {args.model_step} training step ({args.model_dtype}) | {step * 1e3:.1f} | | "
              f"ranking terms = {100 * extra / step:.2f}% of the step |", flush=True)


if __name__ == "__main__":
  main()
