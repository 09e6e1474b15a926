"""Training-step throughput: examples/s, TFLOP/s and MFU of the real jitted, sharded train step.

Input is synthetic and already on the devices (random pixels and tokens), so the figure is the
step's alone. For each model size and batch: the RankCLIP step and the CLIP step (ranking weights 0)
and their ratio. FLOPs come from XLA's cost analysis of the lowered step (rankclip_jax/flops.py);
MFU is against the device's dense peak for the compute dtype (--peak_tflops for devices not in
the table; none on CPU).

  python -m benchmarks.train_bench --sizes tiny B/32 B/16 --batches 256 --dtype bfloat16
  python -m benchmarks.train_bench --sizes tiny --batches 32 --image_size 64 \
      --open_clip_python /path/to/torch-venv/bin/python      # CPU: also open_clip, same model

--open_clip_python names a Python that has torch and open_clip_torch (kept out of this project's
environment: the .venv-torch of requirements-torch.txt, see the README's tests); the same architecture and batch is then trained there with
CLIP's loss and AdamW, and the ratio of examples/s is printed.

On a CPU host it starts itself again with glibc's huge-page tunable, as the training command does
(rankclip_jax/host_memory.py); `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` measures glibc's default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from rankclip_jax import defaults
from rankclip_jax import flops as flops_lib
from rankclip_jax import host_memory
from rankclip_jax import train
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.models.transformer import REMAT_POLICIES
from rankclip_jax.models.two_towers import SIZES


def make_config(size: str, batch: int, image_size: int, context: int, dtype: str, ranking: bool,
                remat: str, peak_tflops: float, scan: bool = False, patch_dropout: float = 0.0):
  """remat: "" (none) or a model.remat_policy name; patch_dropout: FLIP's share of image patches
  dropped in training (model.patch_dropout)."""
  c = defaults.base_config()
  c.model.size = size
  c.model.scan_layers = scan
  c.model.dtype = dtype
  c.model.remat = bool(remat)
  c.model.patch_dropout = patch_dropout
  if remat:
    c.model.remat_policy = remat
  c.batch_size = batch
  c.image_size = image_size
  c.context_length = context
  c.total_steps = 10_000
  c.peak_tflops = peak_tflops
  if not ranking:  # CLIP's own cost: "rankclip" at weight 0 would still compute the ranking terms
    c.loss.name = "clip"
    c.loss.cross_weight = c.loss.inmodal_weight = 0.0
  c.loss.weight_schedule = "constant"
  return c


def measure(config, steps: int) -> dict:
  trainer = train.Trainer(config)
  state = trainer.init()
  rng = np.random.default_rng(0)
  b, s = config.batch_size, config.image_size
  local = {"image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
           "text": rng.integers(1, 49000, size=(b, config.context_length)).astype(np.int32),
           "skipped": np.zeros((b, len(SKIP_KINDS)), np.int32)}
  local["text"][:, -1] = 49407
  batch = trainer.global_batch(local)
  step_flops = trainer.step_flops()
  t0 = time.perf_counter()
  step = trainer.train_step.lower(state, batch).compile()
  for _ in range(2):  # warm-up
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
    if jax.devices()[0].platform == "cpu":
      jax.block_until_ready(metrics)  # many un-awaited CPU collectives abort XLA's CPU runtime
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - t0) / steps
  out = {"ms_per_step": seconds * 1e3, "examples_per_s": b / seconds,
         "compile_s": compile_s, "loss": float(metrics["loss"])}
  # XLA's buffer assignment, per device: the activations kept for the backward pass and the
  # workspace (what rematerialisation trades for compute), on top of the state and the batch.
  memory = step.memory_analysis()
  if memory is not None:
    out["temp_mib"] = memory.temp_size_in_bytes / 2**20
  if step_flops:
    out["tflops"] = step_flops / seconds / 1e12
    peak = flops_lib.peak_flops_per_device(jax.devices()[0].device_kind, config.model.dtype,
                                           config.peak_tflops)
    if peak:
      out["mfu"] = step_flops / seconds / (peak * jax.device_count())
  return out


_OPEN_CLIP_SCRIPT = r"""
import json, sys, time
import torch, open_clip
a = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(a["threads"])
vision = dict(image_size=a["image_size"], patch_size=a["patch"], width=a["iw"], layers=a["id"],
              head_width=a["iw"] // a["ih"])
text = dict(context_length=a["context"], vocab_size=49408, width=a["tw"], heads=a["th"],
            layers=a["td"])
model = open_clip.CLIP(embed_dim=a["embed"], vision_cfg=vision, text_cfg=text)
loss_fn = open_clip.ClipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
b = a["batch"]
images = torch.randn(b, 3, a["image_size"], a["image_size"])
texts = torch.randint(1, 49000, (b, a["context"]))
texts[:, -1] = 49407
def step():
    image_features, text_features, logit_scale = model(images, texts)[:3]
    loss = loss_fn(image_features, text_features, logit_scale)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(2):
    step()
t0 = time.perf_counter()
for _ in range(a["steps"]):
    step()
print(json.dumps({"examples_per_s": b * a["steps"] / (time.perf_counter() - t0)}))
"""


def open_clip_examples_per_s(python: str, size: str, batch: int, image_size: int, context: int,
                             steps: int, threads: int) -> float:
  t = SIZES[size]
  args = dict(image_size=image_size, patch=t.patch_size, iw=t.image_width, id=t.image_depth,
              ih=t.image_heads, tw=t.text_width, td=t.text_depth, th=t.text_heads,
              embed=t.embed_dim, context=context, batch=batch, steps=steps, threads=threads)
  out = subprocess.run([python, "-c", _OPEN_CLIP_SCRIPT, json.dumps(args)], capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["examples_per_s"]


def main():
  host_memory.restart_with_huge_pages()  # as the training command does (rankclip_jax/host_memory.py)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", default=["tiny", "B/32", "B/16"])
  parser.add_argument("--batches", type=int, nargs="+", default=[256])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--context", type=int, default=77)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--remat", nargs="?", const="nothing_saveable", default="",
                      choices=sorted(REMAT_POLICIES),
                      help="rematerialise each block; optionally the model.remat_policy")
  parser.add_argument("--scan", action="store_true", help="model.scan_layers (nn.scan blocks)")
  parser.add_argument("--losses", nargs="+", default=["clip", "rankclip"],
                      choices=["clip", "rankclip"])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--peak_tflops", type=float, default=0.0)
  parser.add_argument("--open_clip_python", default="")
  parser.add_argument("--torch_threads", type=int, default=0, help="0: all cores")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  dev = jax.devices()[0]
  print(f"{jax.device_count()} x {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
        f"{args.dtype}, image {args.image_size}, context {args.context}, "
        f"remat {args.remat or 'off'}, scanned layers {args.scan}\n")
  print("| model | batch | loss | ms/step | examples/s | examples/s/device | TFLOP/s | MFU |"
        " RankCLIP/CLIP step time | compile + 2 steps s | temp MiB/device |\n" + "|---" * 11 + "|")
  for size in args.sizes:
    for batch in args.batches:
      rows = {}
      for name, ranking in (("clip", False), ("rankclip", True)):
        if name not in args.losses:
          continue
        cfg = make_config(size, batch, args.image_size, args.context, args.dtype, ranking,
                          args.remat, args.peak_tflops, args.scan)
        rows[name] = r = measure(cfg, args.steps)
        ratio = (f"{r['ms_per_step'] / rows['clip']['ms_per_step']:.3f}"
                 if name == "rankclip" and "clip" in rows else "")
        tflops = f"{r['tflops']:.3g}" if "tflops" in r else "-"
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        temp = f"{r['temp_mib']:.0f}" if "temp_mib" in r else "-"
        print(f"| {size} | {batch} | {name} | {r['ms_per_step']:.1f} | {r['examples_per_s']:.0f} | "
              f"{r['examples_per_s'] / jax.device_count():.0f} | {tflops} | {mfu} | {ratio} | "
              f"{r['compile_s']:.1f} | {temp} |", flush=True)
      if args.open_clip_python and "clip" in rows:
        import os  # pylint: disable=g-import-not-at-top
        threads = args.torch_threads or os.cpu_count()
        torch_rate = open_clip_examples_per_s(args.open_clip_python, size, batch,
                                              args.image_size, args.context, args.steps, threads)
        ours = rows["clip"]["examples_per_s"]
        print(f"| {size} | {batch} | open_clip CLIP (PyTorch, {threads} threads) | "
              f"{batch / torch_rate * 1e3:.1f} | {torch_rate:.0f} | - | - | - | ours/open_clip "
              f"examples/s: {ours / torch_rate:.2f} | - | - |", flush=True)


if __name__ == "__main__":
  main()
