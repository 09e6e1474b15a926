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
import os
import subprocess
import sys
import time
from typing import Callable, Optional

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


def measure(config, steps: int, *, init_state: Optional[Callable] = None,
            step_flops: Optional[Callable] = None, keep: Optional[dict] = None) -> dict:
  """The step of `config` compiled, run twice, then timed over `steps` steps.

  init_state(trainer) -> the state to start from (default trainer.init(): a fresh random state);
  step_flops(trainer) -> the step's model FLOPs or None (default trainer.step_flops()). Callers that
  measure many variants of one model pass cached ones (benchmarks/accelerator_check.py): the
  parameter initialisation and the FLOP count are then computed once per model, not per row.
  keep: a dict to receive the compiled "step", the "state" after the timed steps, the "batch" and
  the "trainer", for a profile of the same step (benchmarks/step_profile.py trace_step)."""
  trainer = train.Trainer(config)
  state = trainer.init() if init_state is None else init_state(trainer)
  rng = np.random.default_rng(0)
  b, s = config.batch_size, config.image_size
  local = {"image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
           "text": rng.integers(1, 49000, size=(b, config.context_length)).astype(np.int32),
           "skipped": np.zeros((b, len(SKIP_KINDS)), np.int32)}
  local["text"][:, -1] = 49407
  batch = trainer.global_batch(local)
  flops = trainer.step_flops() if step_flops is None else step_flops(trainer)
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
  if flops:
    out["tflops"] = flops / seconds / 1e12
    peak = flops_lib.peak_flops_per_device(jax.devices()[0].device_kind, config.model.dtype,
                                           config.peak_tflops)
    if peak:
      out["mfu"] = flops / seconds / (peak * jax.device_count())
  if keep is not None:
    keep.update(step=step, state=state, batch=batch, trainer=trainer)
  return out


# open_clip's training step in PyTorch, run by another Python (one that has torch and open_clip).
# Its argument: a JSON object (see open_clip_rows). It prints a JSON line about torch and the
# device, then one JSON line per model: the step open_clip's training script runs by default
# (model.train(), AdamW without weight decay on gains, biases and the logit scale, ClipLoss, the
# logit scale clamped after each step), eager; then one per model in "compile", the same step
# through torch.compile (open_clip's --torchcompile: the model compiled, the loss and the optimizer
# eager). On a GPU the inputs are on the device and the clock waits for the device
# (torch.cuda.synchronize) at both ends.
_OPEN_CLIP_SCRIPT = r"""
import contextlib, json, math, sys, time
import torch, open_clip
a = json.loads(sys.argv[1])
cuda = a["device"] != "cpu" and torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")
if a["threads"]:
    torch.set_num_threads(a["threads"])
print(json.dumps({"torch": torch.__version__, "open_clip": open_clip.__version__,
                  "device": torch.cuda.get_device_name() if cuda else "cpu",
                  "threads": torch.get_num_threads()}), flush=True)
def sync():
    if cuda:
        torch.cuda.synchronize()
def autocast():
    if a["dtype"] == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
b, s = a["batch"], a["image_size"]
for m, compiled in [(m, False) for m in a["models"]] + [(m, True) for m in a["compile"]]:
    row = {"model": m["name"], "batch": b, "compiled": compiled}
    try:
        torch.manual_seed(0)
        vision = dict(image_size=s, patch_size=m["patch"], width=m["iw"], layers=m["id"],
                      head_width=m["iw"] // m["ih"])
        text = dict(context_length=a["context"], vocab_size=49408, width=m["tw"], heads=m["th"],
                    layers=m["td"])
        model = open_clip.CLIP(embed_dim=m["embed"], vision_cfg=vision, text_cfg=text)
        model = model.to(device).train()
        def no_decay(n, p):
            return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        named = list(model.named_parameters())
        opt = torch.optim.AdamW(
            [{"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
             {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": 0.2}],
            lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
        forward = torch.compile(model, backend=a["compile_backend"]) if compiled else model
        loss_fn = open_clip.ClipLoss(cache_labels=True)
        images = torch.randn(b, 3, s, s, device=device)
        texts = torch.randint(1, 49000, (b, a["context"]), device=device)
        texts[:, -1] = 49407
        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                image_features, text_features, logit_scale = forward(images, texts)[:3]
                loss = loss_fn(image_features, text_features, logit_scale)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            return loss
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(a["warmup"]):
            step()
        sync()
        row["warmup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(a["steps"]):
            loss = step()
        sync()
        seconds = (time.perf_counter() - t0) / a["steps"]
        row.update(ms_per_step=seconds * 1e3, examples_per_s=b / seconds, loss=float(loss))
        if cuda:
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    except Exception as e:  # one model failing (out of memory) leaves the others to run
        row["error"] = (type(e).__name__ + ": " + str(e))[:300]
        row["out_of_memory"] = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e)
    print(json.dumps(row), flush=True)
    model = opt = forward = None
    if cuda:
        torch.cuda.empty_cache()
"""


def open_clip_rows(python: str, sizes, batch: int, image_size: int, context: int, steps: int, *,
                   warmup: int = 3, dtype: str = "float32", threads: int = 0,
                   compile_sizes=(), compile_backend: str = "inductor",
                   device: str = "auto", timeout: Optional[float] = None) -> dict:
  """open_clip's training step for each of `sizes` (our SIZES' towers, built as open_clip.CLIP),
  then for each of `compile_sizes` the same step through torch.compile(backend=compile_backend),
  in one subprocess of `python`: {"environment": torch's line, "rows": one dict per step ("compiled"
  says which; "warmup_s": the first steps, a compile included), "error": why the subprocess ended
  early, if it did}. A model that fails (out of memory) gives a row with "error"; a timeout keeps
  the rows printed before it. dtype "bfloat16": the forward pass under torch.autocast(bfloat16), as
  open_clip's --precision amp_bf16. threads: torch's CPU threads (0: torch's default). Another
  interpreter than this one runs without this process's PYTHONPATH and virtualenv (it has its own
  site-packages); this one keeps them (e.g. wheels unpacked into a PYTHONPATH folder)."""
  def towers(size):
    t = SIZES[size]
    return dict(name=size, patch=t.patch_size, iw=t.image_width, id=t.image_depth,
                ih=t.image_heads, tw=t.text_width, td=t.text_depth, th=t.text_heads,
                embed=t.embed_dim)
  args = dict(models=[towers(s) for s in sizes], compile=[towers(s) for s in compile_sizes],
              image_size=image_size, context=context, batch=batch, steps=steps, warmup=warmup,
              dtype=dtype, threads=threads, compile_backend=compile_backend, device=device)
  env = dict(os.environ)
  if os.path.realpath(python) != os.path.realpath(sys.executable):
    env = {k: v for k, v in env.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
  out = {"rows": []}
  try:
    proc = subprocess.run([python, "-c", _OPEN_CLIP_SCRIPT, json.dumps(args)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    stdout, failed = proc.stdout, (f"exit status {proc.returncode}: {proc.stderr[-1500:]}"
                                   if proc.returncode else "")
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    failed = f"timed out after {timeout:g} s"
  lines = [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]
  if lines:
    out["environment"] = lines[0]
    out["rows"] = lines[1:]
  if failed:
    out["error"] = failed
  return out


def open_clip_examples_per_s(python: str, size: str, batch: int, image_size: int, context: int,
                             steps: int, threads: int, dtype: str = "float32") -> float:
  result = open_clip_rows(python, [size], batch, image_size, context, steps, warmup=2,
                          dtype=dtype, threads=threads)
  rows = [r for r in result["rows"] if "examples_per_s" in r]
  if not rows:
    raise RuntimeError(f"open_clip's step did not run: {result.get('error')} "
                       f"{[r.get('error') for r in result['rows']]}")
  return rows[0]["examples_per_s"]


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
        threads = args.torch_threads or os.cpu_count()
        torch_rate = open_clip_examples_per_s(args.open_clip_python, size, batch,
                                              args.image_size, args.context, args.steps, threads,
                                              args.dtype)
        ours = rows["clip"]["examples_per_s"]
        print(f"| {size} | {batch} | open_clip CLIP (PyTorch, {threads} threads) | "
              f"{batch / torch_rate * 1e3:.1f} | {torch_rate:.0f} | - | - | - | ours/open_clip "
              f"examples/s: {ours / torch_rate:.2f} | - | - |", flush=True)


if __name__ == "__main__":
  main()
