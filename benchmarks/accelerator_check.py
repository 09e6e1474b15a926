"""One command for a fresh accelerator machine: is the project correct there, how fast is it
against open_clip on the same device, where does its step's time go, and which defaults to keep?

  python -m benchmarks.accelerator_check        # runs/accelerator_check.md and .json (runs/: not in git)
  python -m benchmarks.accelerator_check --tiny --out=/tmp/tiny       # CPU, small sizes (tests)

Every part is guarded: an error or an out-of-memory in one is written into the report and the
others still run. The report (OUT.json, OUT.md) is written after every part and every step row,
so a run stopped from outside still says what it measured. No part or row starts when its
estimated time no longer fits before --budget_s (390 s by default, so that the whole command,
start-up and the last row included, takes under 8 minutes). The parts, most important first,
with the time each took or is estimated to take on one H200 (compile 10-16 s per step row):

  1. open_clip (~40 s: torch's import, then two models): open_clip_torch's training step for our
     ViT-B/16 and ViT-B/32 towers (open_clip.CLIP built from models.SIZES, as
     train_bench._OPEN_CLIP_SCRIPT does), batch 256, 224 px, context 77, bfloat16 autocast, AdamW,
     ClipLoss, eager (open_clip's default training; --open_clip_compile adds a torch.compile row
     per model, labelled so, ~1 min more each), in a subprocess of --open_clip_python (default:
     this Python where it can import torch and open_clip; otherwise the part says why it was
     skipped). It runs first because JAX's GPU client takes 95% of the device's memory when it
     starts (XLA_PYTHON_CLIENT_MEM_FRACTION below): nothing in this process touches a JAX device
     before the subprocess has ended (the report says whether that held).
  2. correctness (~20 s): the attention implementations agree on the device (SelfAttention with
     einsum, xla and, on a GPU, cudnn: value and gradients w.r.t. the input and every parameter,
     float32 and bfloat16, causal and not, every query and a single pooled query, against the
     einsum attention in float32 at the highest matmul precision; tolerances in ATTENTION_TOL);
     the RankCLIP loss and its gradient computed plain, chunked, sharded (shard_map over all
     local devices) and sharded+chunked agree at N=4096 (float32, highest matmul precision).
  3. ours against open_clip (~100 s, four rows): our step with the config defaults (what main.py
     runs: per-layer blocks, the platform's defaults of models/platform_defaults.py) for the same
     two models and batch, bfloat16, CLIP and RankCLIP losses, and ours/open_clip examples/s for
     each (the real jitted, sharded Trainer step on synthetic device batches,
     benchmarks/train_bench.py; FLOPs from rankclip_jax/flops.py for TFLOP/s and MFU). The
     ViT-B/16 RankCLIP row is the baseline of parts 4 and 5.
  4. where the step's time goes (~10 s): a jax.profiler trace of that baseline step (the same
     compiled step, no second compile), summed by tower, part and pass, and by kind of op (matrix
     products, attention, norms and elementwise, optimizer, loss, copies), as
     benchmarks/step_profile.py does; on a GPU, the share of the step the device was busy.
  5. the switches, A/B in this process (~20 s a row, about 11 rows): the baseline step with one
     thing changed per row: each attention implementation, recompute_elementwise and
     last_block_pooled_only flipped, scanned layers, remat with each policy, batch 512 and 1024
     (per example; a batch the defaults cannot hold runs with the fastest remat policy measured):
     step time, examples/s, MFU, XLA temp memory, each against the baseline's (its compiled step
     timed again just before these rows); then a verdict per switch (VERDICT_RULE) against
     models/platform_defaults.py's choice for this platform.
  6. as the budget allows: 30 steps of the demo through the real trainer (it passed on the H200
     of docs/performance.md; ~70 s there, most of it compiling, so it comes after the new rows),
     the baseline with FLIP patch dropout 0.25 and 0.5 and ViT-B/32 at batch 1024, and the loss at
     scale (CLIP and RankCLIP forward+backward time and XLA memory, plain and chunked, N = 4096 ..
     32768 doubled while it fits, and the speedup over rax's ranking terms where rax is installed).
Parts 1-5 are estimated at about 390 s on one H200, the default budget, so part 6 gets what is
left (often nothing); `--parts demo more_rows loss_at_scale` runs it on its own (about 4 minutes).
The exit status is 0 when no part failed (a part skipped for want of time or of torch is no
failure) and the correctness checks passed.

A machine that has only JAX, flax, optax and orbax-checkpoint (with their own dependencies,
tensorboard, pillow and scipy) and torch with torchvision, timm, regex, safetensors and
huggingface-hub (as the GPU image lent to the project, torch 2.11) gets the project's other
dependencies and open_clip's as wheels for Python 3.12, manylinux x86-64 where a package has
compiled parts (10.1 MiB together): grain 0.2.18, array-record 0.8.6, cloudpickle 3.1.3,
portpicker 1.6.0, psutil 7.2.2, ml-collections 1.1.0, ftfy 6.3.1, wcwidth 0.9.4,
instant-clip-tokenizer 0.1.1, for the comparisons rax 0.4.0 and open-clip-torch 3.3.0 (whose
import also needs ftfy, wcwidth, regex, timm, huggingface-hub, safetensors and tqdm: tqdm comes
with huggingface-hub, and travels too in case the image lacks it). Download them on a machine
with PyPI (into .whl/, which git ignores):

  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0 psutil==7.2.2 ml-collections==1.1.0 ftfy==6.3.1 wcwidth==0.9.4 instant-clip-tokenizer==0.1.1 rax==0.4.0 open-clip-torch==3.3.0 tqdm==4.70.1

adding flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 (pure Python, 2.3 MiB; 12.3 MiB in all)
to run the versions requirements.txt pins rather than the image's (as on the H200 of
docs/performance.md, whose image had JAX 0.11.2);

and on the accelerator machine, from the repository root:

  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python3 -m benchmarks.accelerator_check

Neither TensorFlow nor clu is needed: without them the run's metrics are written by
rankclip_jax/tensorboard_writer.py (the report says which writer was used).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback

# JAX's GPU client takes 75% of the memory by default; "the largest N that fits" should be the
# device's. (Only when nothing set it and jax is not imported yet, i.e. run as a command.)
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import AxisType

from benchmarks import accelerator_report, loss_bench, step_profile, train_bench
from rankclip_jax import metric_writer
from rankclip_jax import train
from rankclip_jax.models import platform_defaults


@dataclasses.dataclass(frozen=True)
class Settings:
  dtype: str = "bfloat16"  # of the step rows (compute; parameters stay float32)
  image_size: int = 224
  context: int = 77
  bench_steps: int = 10  # timed steps of a step row, after the compile and 2 more
  # Part 1: open_clip's step for these models (our SIZES) at the side-by-side batch.
  models: tuple = ("B/16", "B/32")
  batch: int = 256
  open_clip_warmup: int = 3
  open_clip_timeout_s: float = 240.0
  open_clip_compile: bool = False  # also through torch.compile (--open_clip_compile)
  compile_backend: str = "inductor"  # torch.compile's
  # Part 2: the attention check: batch, width, heads (head_dim 64, as ViT-B's), tokens without and
  # with the causal mask (ViT-B/32's 50 image tokens, the text's 77).
  attn_shape: tuple = (4, 128, 2)
  attn_tokens: tuple = (50, 77)
  check_n: int = 4096
  dim: int = 512
  chunk: int = 512
  # Part 4: traced steps of the baseline.
  profile_steps: int = 3
  # Part 5: the switches' remat policies (models/transformer.py REMAT_POLICIES) and batches (the
  # baseline's is `batch`).
  remat_policies: tuple = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")
  switch_batches: tuple = (512, 1024)
  # Part 6.
  train_steps: int = 30
  demo_s: float = 75.0  # the demo is not started with less time left
  patch_dropouts: tuple = (0.25, 0.5)
  extra_rows: tuple = (("B/32", 1024, "rankclip"),)  # (model, batch, loss), the defaults
  loss_sizes: tuple = (4096, 8192, 16384, 32768)
  largest_n_cap: int = 1 << 20
  rax_max_n: int = 16384  # rax scans over the list: one step per element
  repeats: int = 5
  loss_min_s: float = 20.0  # the loss at scale is not started with less time left
  tiny_model: bool = False
  min_row_s: float = 25.0  # a step row is not started with less time left


FULL = Settings()
# CPU test sizes: one micro model, float32 (XLA's CPU compiler takes twice as long for bf16), every
# kind of row (one remat policy: the rows differ in the policy's name only); torch.compile with its
# "eager" backend (TorchDynamo's capture without a code generator: the row's plumbing, not
# inductor's C++ compile).
TINY = Settings(dtype="float32", image_size=32, context=16, bench_steps=2, models=("micro",),
                batch=8, open_clip_warmup=2, open_clip_timeout_s=300.0, open_clip_compile=True,
                compile_backend="eager",
                attn_shape=(2, 32, 2), attn_tokens=(9, 12), check_n=64, dim=16, chunk=16,
                profile_steps=2, remat_policies=("dots_with_no_batch_dims_saveable",),
                switch_batches=(16, 32), demo_s=0.0, patch_dropouts=(0.5,),
                extra_rows=(), loss_sizes=(64,), largest_n_cap=128, rax_max_n=64, repeats=1,
                loss_min_s=0.0, tiny_model=True, min_row_s=0.0)

# Attention agreement (part 2), relative to the largest magnitude of the float32 reference: in
# float32 at the highest matmul precision the implementations must agree to round-off; in
# bfloat16 each may differ from the reference by twice what the einsum attention in bfloat16 does
# in the same case (the dtype's own error; bfloat16 keeps 8 bits, a relative step of 2^-8 = 0.4%),
# but at least `floor` and never more than `ceiling`.
ATTENTION_TOL = {"float32": {"value": 1e-5, "grad": 1e-4},
                 "bfloat16": {"factor": 2.0, "floor": 1e-2, "ceiling": 0.05}}
VERDICT_RULE = ("change a default only to a value whose step is at least 3% shorter (per example, "
                "for a batch) than the default's in this run, and that fits in memory")
FASTER = 0.97


def is_oom(e: BaseException) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


class Clock:
  """Seconds since start, and whether `need` more seconds fit before `deadline`."""

  def __init__(self):
    self.start = time.perf_counter()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def fits(self, deadline: float, need: float) -> bool:
    return self.elapsed() + need <= deadline


def guarded(report: dict, name: str, part, *args):
  """Runs part(section, *args) into report[name]; an exception is recorded (out of memory named as
  such) and the next part runs."""
  section = report.setdefault(name, {"status": "running"})
  t0, cpu0 = time.perf_counter(), time.process_time()
  try:
    part(section, *args)
    section["status"] = section.get("status_if_ran", "ok")
  except Exception as e:  # pylint: disable=broad-except
    section["status"] = "out of memory" if is_oom(e) else "error"
    section["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()[-2000:]
    section["traceback"] = traceback.format_exc()[-4000:]
  section.pop("status_if_ran", None)
  section["seconds"] = round(time.perf_counter() - t0, 1)
  section["cpu_s"] = round(time.process_time() - cpu0, 1)  # this process's, all threads
  gc.collect()  # what a failed part held on the devices
  print(f"[{name}] {section['status']} in {section['seconds']} s (CPU {section['cpu_s']} s)",
        flush=True)


def skipped(section: dict, because: str):
  section.update(status_if_ran="skipped", skipped_because=because)


def jax_backend_started():
  """Whether this process has started a JAX backend (and so, on a GPU, taken its memory); None
  where this JAX does not say (a private function of jax._src)."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return None


# --- 1. open_clip on this device --------------------------------------------------------------

def default_open_clip_python() -> tuple[str, str]:
  """(this Python, "") where it can import torch and open_clip (found, not imported: the import
  costs seconds and torch's CUDA would start here), else ("", why not)."""
  missing = [m for m in ("torch", "open_clip") if importlib.util.find_spec(m) is None]
  if missing:
    return "", (f"{' and '.join(missing)} not importable by {sys.executable} (give "
                "--open_clip_python; the docstring's wheels bring open_clip_torch)")
  return sys.executable, ""


def open_clip_part(section: dict, s: Settings, python: str, why_not: str, compile_rows: bool,
                   clock: Clock, deadline: float):
  section.update(python=python, models=list(s.models), batch=s.batch, dtype=s.dtype,
                 image_size=s.image_size, context=s.context, steps_timed=s.bench_steps,
                 warmup_steps=s.open_clip_warmup, rows=[])
  section["jax_backend_started_before"] = jax_backend_started()
  if not python:
    return skipped(section, why_not)
  if not os.path.exists(python):
    return skipped(section, f"--open_clip_python {python} does not exist")
  timeout = max(30.0, min(s.open_clip_timeout_s, deadline - clock.elapsed()))
  result = train_bench.open_clip_rows(
      python, s.models, s.batch, s.image_size, s.context, s.bench_steps,
      warmup=s.open_clip_warmup, dtype=s.dtype, threads=0,
      compile_sizes=s.models if compile_rows else (), compile_backend=s.compile_backend,
      timeout=timeout)
  section["environment"] = result.get("environment", {})
  for row in result["rows"]:
    row["framework"] = ("open_clip torch.compile" + (f" ({s.compile_backend} backend)"
                                                     if s.compile_backend != "inductor" else "")
                        if row["compiled"] else "open_clip eager")
    section["rows"].append(row)
  if "error" in result:
    section["error"] = result["error"]
    section["status_if_ran"] = "error" if not result["rows"] else "partial"
  for row in section["rows"]:
    print(f"  {row['framework']} {row['model']} batch {row['batch']}: "
          f"{row.get('examples_per_s', row.get('error'))}", flush=True)


# --- 2. Correctness ---------------------------------------------------------------------------

def data_mesh():
  return jax.make_mesh((jax.local_device_count(),), ("data",), axis_types=(AxisType.Auto,))


def _rel(a, b, floor: float = 1e-30) -> float:
  """max |a - b| over the largest magnitude of the reference b (at least `floor`)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), floor))


def _grad_rel(grads, reference) -> float:
  """The largest relative difference over gradient arrays, each relative to its own largest
  magnitude; an array whose reference is (nearly) zero everywhere, below 1e-4 of the largest
  gradient, relative to that largest one instead: the key projection's bias has a gradient of
  exactly 0 in exact arithmetic (the softmax does not see a shift shared by every key), whose
  round-off alone is no disagreement."""
  leaves, refs = jax.tree.leaves(grads), jax.tree.leaves(reference)
  scale = max(float(np.max(np.abs(np.asarray(r, np.float64)))) for r in refs)
  out = 0.0
  for g, r in zip(leaves, refs):
    own = float(np.max(np.abs(np.asarray(r, np.float64))))
    out = max(out, _rel(g, r, own if own >= 1e-4 * scale else scale))
  return out


def attention_agrees(section: dict, s: Settings):
  """SelfAttention's value and gradients (w.r.t. its input and every parameter) with each
  implementation and dtype, causal and not, every token a query and one pooled query per row,
  against the einsum implementation in float32 (the parameters are the same for all: the
  implementations compute with them differently, never make other ones)."""
  from rankclip_jax.models.transformer import SelfAttention  # pylint: disable=g-import-not-at-top
  batch, width, heads = s.attn_shape
  platform = platform_defaults.platform_name()
  rng = np.random.default_rng(0)
  cases = [(causal, pooled) for causal in (False, True) for pooled in (False, True)]
  xs = {c: jnp.asarray(rng.normal(size=(batch, s.attn_tokens[c], width)), jnp.float32)
        for c in (False, True)}
  query = {c: jnp.asarray(rng.integers(0, s.attn_tokens[c], size=batch), jnp.int32)
           for c in (False, True)}
  cotangent = {(c, p): jnp.asarray(rng.normal(size=(batch, 1 if p else s.attn_tokens[c], width)),
                                   jnp.float32) for c, p in cases}
  params = SelfAttention(num_heads=heads).init(jax.random.key(0), xs[False])["params"]

  def results(attention: str, dtype):
    def all_cases(params, xs):
      out = {}
      for causal, pooled in cases:
        module = SelfAttention(num_heads=heads, causal=causal, attention=attention, dtype=dtype)

        def loss(p, x, causal=causal, pooled=pooled, module=module):
          y = module.apply({"params": p}, x, query[causal] if pooled else None)
          y = y.astype(jnp.float32)
          return jnp.sum(y * cotangent[(causal, pooled)]), y
        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs[causal])
        out[f"{causal}/{pooled}"] = (y, grads)
      return out
    return jax.device_get(jax.jit(all_cases)(params, xs))

  rows = []
  with jax.default_matmul_precision("highest"):  # the implementations, not TF32 round-off
    reference = results("einsum", jnp.float32)
    own_error = {}  # the einsum attention's own bfloat16 error, per case: value, grad
    for dtype in ("float32", "bfloat16"):
      for attention in ("einsum", "xla", "cudnn"):
        try:
          platform_defaults.resolve({"attention": attention, "dtype": dtype}, platform)
        except ValueError as e:
          rows.append({"attention": attention, "dtype": dtype, "not_run": str(e).split(";")[0]})
          continue
        got = (reference if (attention, dtype) == ("einsum", "float32")
               else results(attention, jnp.dtype(dtype)))
        for causal, pooled in cases:
          key = f"{causal}/{pooled}"
          (y, g), (y_ref, g_ref) = got[key], reference[key]
          value = _rel(y, y_ref)
          grad = _grad_rel(g, g_ref)
          if dtype == "float32":
            tol = ATTENTION_TOL["float32"]
            tol_value, tol_grad = tol["value"], tol["grad"]
          else:
            if attention == "einsum":
              own_error[key] = (value, grad)
            tol = ATTENTION_TOL["bfloat16"]
            tol_value, tol_grad = (min(tol["ceiling"], max(tol["factor"] * own, tol["floor"]))
                                   for own in own_error[key])
          rows.append({"attention": attention, "dtype": dtype, "causal": causal,
                       "query": "one pooled" if pooled else "every token",
                       "value_rel_diff": value, "grad_rel_diff": grad, "value_tol": tol_value,
                       "grad_tol": tol_grad, "ok": value <= tol_value and grad <= tol_grad})
  section.update(platform=platform, batch=batch, width=width, heads=heads,
                 tokens=list(s.attn_tokens), rows=rows,
                 tolerances=ATTENTION_TOL)
  if not all(r["ok"] for r in rows if "ok" in r):
    section["status_if_ran"] = "failed"


def loss_strategies_agree(section: dict, s: Settings):
  """RankCLIP value and gradient (w.r.t. both embeddings and the scale) of every strategy against
  the plain computation."""
  n, d, mesh = s.check_n, s.dim, data_mesh()
  key_i, key_t = jax.random.split(jax.random.key(1))
  args = (loss_bench.unit_rows(key_i, n, d), loss_bench.unit_rows(key_t, n, d),
          jnp.float32(loss_bench.SCALE))
  variants = [("plain", None, None), ("chunked", s.chunk, None), ("sharded", None, mesh),
              ("sharded+chunked", s.chunk, mesh)]
  rows, reference = [], None
  with jax.default_matmul_precision("highest"):  # the strategies, not TF32 round-off, compared
    for name, chunk, m in variants:
      compiled, _ = loss_bench.compile_step(loss_bench.make_loss("rankclip", chunk=chunk, mesh=m),
                                            n, d)
      value, grads = jax.device_get(compiled(*args))
      if reference is None:
        reference = value, grads
      value_err = abs(float(value) - float(reference[0])) / abs(float(reference[0]))
      grad_err = max(float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-30))
                     for g, r in zip(grads, reference[1]))
      rows.append({"strategy": name, "loss": float(value), "loss_rel_diff": value_err,
                   "grad_rel_diff": grad_err, "ok": value_err < 1e-5 and grad_err < 1e-4})
  section.update(n=n, dim=d, chunk=s.chunk, devices=jax.local_device_count(), rows=rows)
  if not all(r["ok"] for r in rows):
    section["status_if_ran"] = "failed"


# --- Step rows (parts 3, 5 and 6) ---------------------------------------------------------------

class StepRows:
  """Measures training-step rows: the real jitted Trainer step (train_bench.measure), with what
  rows of one model share computed once: its random initial state (kept on the host, put on the
  devices again for each row, whose step donates it) and its model FLOPs."""

  def __init__(self, s: Settings):
    self.s = s
    self.platform = platform_defaults.platform_name()
    self.states, self.flops = {}, {}
    stats = jax.local_devices()[0].memory_stats() or {}
    self.device_bytes = stats.get("bytes_limit")

  def config(self, size: str, batch: int, objective: str = "rankclip", **model):
    """train_bench.make_config's step (per-layer blocks, no remat: the config defaults) with
    `model` fields set; remat=<policy> turns remat on with that policy."""
    c = train_bench.make_config(size, batch, self.s.image_size, self.s.context, self.s.dtype,
                                objective == "rankclip", "", 0.0)
    policy = model.pop("remat", "")
    if policy:
      c.model.remat, c.model.remat_policy = True, policy
    for field, value in model.items():
      c.model[field] = value
    return c

  def resolved(self, config) -> dict:
    return platform_defaults.resolve(config.model, self.platform)

  def _init_state(self, trainer):
    abstract = trainer.abstract_state
    key = (jax.tree.structure(abstract),
           tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(abstract)), trainer.config.seed)
    if key in self.states:
      return jax.device_put(self.states[key], trainer.state_shardings)
    state = trainer.init()
    self.states[key] = jax.device_get(state)
    return state

  def _flops(self, trainer):
    """The step's model FLOPs (Trainer.step_flops: the plain step, no remat, per layer), once per
    model, batch, loss, patch dropout and pooled-only last block (the switches that change the
    work; recompute_elementwise changes what the backward pass recomputes, not the model's
    multiply-adds, so its rows take the defaults' count); computed with the einsum attention
    where the step uses cuDNN's, whose fused kernel is a custom call XLA's cost analysis counts
    no FLOPs in (the same products either way)."""
    c, chosen = trainer.config, self.resolved(trainer.config)
    key = (c.model.size, c.batch_size, c.loss.name, float(c.model.patch_dropout),
           chosen["last_block_pooled_only"] and not c.model.scan_layers)
    if key not in self.flops:
      if chosen["attention"] == "cudnn":
        plain = c.copy_and_resolve_references()
        plain.model.attention = "einsum"
        self.flops[key] = train.Trainer(plain).step_flops()
      else:
        self.flops[key] = trainer.step_flops()
    return self.flops[key]

  def measure(self, config, keep=None) -> dict:
    """One row: what the step ran with, and its measurements or its error."""
    chosen = self.resolved(config)
    m = config.model
    row = {"model": m.size, "batch": config.batch_size, "objective": config.loss.name,
           "layers": "scanned" if m.scan_layers else "per layer",
           "remat": m.remat_policy if m.remat else "off", "attention": chosen["attention"],
           "recompute_elementwise": chosen["recompute_elementwise"],
           "last_block_pooled_only": chosen["last_block_pooled_only"],
           "patch_dropout": float(m.patch_dropout)}
    try:
      row.update(train_bench.measure(config, self.s.bench_steps, init_state=self._init_state,
                                     step_flops=self._flops, keep=keep))
      row["ms_per_example"] = row["ms_per_step"] / config.batch_size
      if not np.isfinite(row["loss"]):
        row["error"] = f"the loss is {row['loss']}"
    except Exception as e:  # pylint: disable=broad-except  (one row fails, the others run)
      row["error"] = "out of memory" if is_oom(e) else f"{type(e).__name__}: {e}"[:300]
      row["out_of_memory"] = is_oom(e)
    gc.collect()
    print(f"  step {row['model']} batch {row['batch']} {row['objective']} {row['layers']} remat "
          f"{row['remat']} attention {row['attention']}: "
          f"{row.get('examples_per_s', row.get('error'))}", flush=True)
    return row


def relative(row: dict, base: dict):
  """The row's step time (per example) and XLA temp memory over the baseline's."""
  if "ms_per_example" in row and "ms_per_example" in base:
    row["time_over_baseline"] = row["ms_per_example"] / base["ms_per_example"]
  if row.get("temp_mib") and base.get("temp_mib"):
    row["temp_over_baseline"] = row["temp_mib"] / base["temp_mib"]


# --- 3. Ours against open_clip ------------------------------------------------------------------

def ours_part(section: dict, s: Settings, bench: StepRows, shared: dict, clock: Clock,
              deadline: float, progress):
  """Our step for the same models and batch as open_clip's (RankCLIP and CLIP, the config
  defaults), ViT-B/16 RankCLIP first: the baseline of the later parts, its compiled step kept for
  the profile."""
  rows, skipped_rows = [], []
  section.update(dtype=s.dtype, batch=s.batch, image_size=s.image_size, context=s.context,
                 steps_timed=s.bench_steps, rows=rows, skipped=skipped_rows)
  theirs = {(r["model"], r["compiled"]): r for r in shared.get("open_clip_rows", [])
            if "examples_per_s" in r}
  for size in s.models:
    for objective in ("rankclip", "clip"):
      if not clock.fits(deadline, s.min_row_s):
        skipped_rows.append(f"{size} {objective}: time budget")
        continue
      first = size == s.models[0] and objective == "rankclip"
      keep = {} if first else None
      row = bench.measure(bench.config(size, s.batch, objective), keep=keep)
      row["framework"] = "ours"
      for compiled, name in ((False, "over_open_clip"), (True, "over_open_clip_compiled")):
        if (size, compiled) in theirs and "examples_per_s" in row:
          row[name] = row["examples_per_s"] / theirs[(size, compiled)]["examples_per_s"]
      rows.append(row)
      if first:
        shared["baseline"] = row
        if keep:
          shared["baseline_run"] = keep
      progress()
  if any("error" in r and not r.get("out_of_memory") for r in rows):
    section["status_if_ran"] = "error"


# --- 4. Where the step's time goes --------------------------------------------------------------

def baseline(s: Settings, bench: StepRows, shared: dict, keep_run: bool) -> dict:
  """Part 3's first row (the baseline of parts 4 and 5), measured here where part 3 did not
  run it; with keep_run, its compiled step too (shared["baseline_run"])."""
  if "baseline" not in shared or (keep_run and "baseline_run" not in shared):
    keep = {}
    shared["baseline"] = bench.measure(bench.config(s.models[0], s.batch), keep=keep)
    if keep:
      shared["baseline_run"] = keep
  base = shared["baseline"]
  if "ms_per_step" not in base:
    raise RuntimeError(f"the baseline step did not run: {base.get('error')}")
  return base


def profile_part(section: dict, s: Settings, bench: StepRows, shared: dict):
  base = baseline(s, bench, shared, keep_run=True)
  run = shared["baseline_run"]
  wall_ms, per_op, where, state = step_profile.trace_step(run["step"], run["state"], run["batch"],
                                                          s.profile_steps)
  summary = step_profile.summarise(per_op, run["step"].as_text(), wall_ms)
  section.update(model=base["model"], batch=base["batch"], objective=base["objective"],
                 attention=base["attention"], steps_traced=s.profile_steps, ops_from=where,
                 platform=bench.platform, **summary)
  section["busy_share"] = summary["summed_ms"] / wall_ms if wall_ms else None
  if bench.platform != "cpu" and where.startswith("host"):
    section["warning"] = ("the trace holds no device events (is CUPTI, the profiler's CUDA "
                          "library, missing?): the ops counted are the host's")
    section["status_if_ran"] = "partial"
  run["state"] = state


# --- 5. The switches --------------------------------------------------------------------------

SWITCHES = ("attention", "recompute_elementwise", "last_block_pooled_only", "layers", "remat",
            "batch")


def switch_plan(s: Settings, base: dict) -> list[tuple[str, object, dict]]:
  """(switch, value, what make the row's config) for every row of part 5, in order."""
  plan = [("attention", a, {"attention": a}) for a in ("einsum", "xla", "cudnn")
          if a != base["attention"]]
  for field in ("recompute_elementwise", "last_block_pooled_only"):
    plan.append((field, not base[field], {field: not base[field]}))
  plan.append(("layers", "scanned", {"scan_layers": True}))
  plan += [("remat", p, {"remat": p}) for p in s.remat_policies]
  plan += [("batch", b, {"batch": b}) for b in s.switch_batches]
  return plan


def retimed(base: dict, run: dict, steps: int) -> dict:
  """The baseline row with its step timed again (the compiled step part 3 kept, no compile):
  the switch rows are measured minutes after part 3, and each right after its own compile, so the
  baseline they are compared with is timed the same way, just before them (the first time kept
  as "ms_per_step_first")."""
  step, state, batch = run["step"], run["state"], run["batch"]
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
    if jax.devices()[0].platform == "cpu":
      jax.block_until_ready(metrics)  # as train_bench.measure times it
  jax.block_until_ready(metrics)
  run["state"] = state
  ms = (time.perf_counter() - t0) / steps * 1e3
  out = dict(base, ms_per_step=ms, ms_per_step_first=base["ms_per_step"],
             examples_per_s=base["batch"] / ms * 1e3, ms_per_example=ms / base["batch"])
  for key in ("tflops", "mfu"):
    if key in base:
      out[key] = base[key] * base["ms_per_step"] / ms
  return out


def switches_part(section: dict, s: Settings, bench: StepRows, shared: dict, clock: Clock,
                  deadline: float, progress):
  base = baseline(s, bench, shared, keep_run=False)
  run = shared.pop("baseline_run", None)
  if run:
    base = retimed(base, run, s.bench_steps)
    run.clear()  # the step, its state and batch: freed for the switch rows
  rows, skipped_rows = [], []
  section.update(baseline={k: base.get(k) for k in (
      "model", "batch", "objective", "layers", "remat", "attention", "recompute_elementwise",
      "last_block_pooled_only", "ms_per_step", "ms_per_step_first", "examples_per_s", "mfu",
      "temp_mib")},
                 rows=rows, skipped=skipped_rows, rule=VERDICT_RULE, platform=bench.platform)
  for switch, value, change in switch_plan(s, base):
    label = f"{switch} {value}"
    if switch == "attention" and value == "cudnn":
      try:
        platform_defaults.resolve({"attention": "cudnn", "dtype": s.dtype}, bench.platform)
      except ValueError as e:
        rows.append({"switch": switch, "value": value, "not_run": str(e).split(";")[0]})
        continue
    if not clock.fits(deadline, s.min_row_s):
      skipped_rows.append(f"{label}: time budget")
      continue
    change = dict(change)
    batch = change.pop("batch", base["batch"])
    remat_instead = ""
    if switch == "batch":
      remat_instead = _remat_for(batch, base, rows, bench.device_bytes)
    config = bench.config(base["model"], batch, base["objective"],
                          **(dict(change, remat=remat_instead) if remat_instead else change))
    row = dict(bench.measure(config), switch=switch, value=value)
    if switch == "batch" and row.get("out_of_memory") and not remat_instead:
      remat_instead = _fastest_remat(rows)
      if remat_instead and clock.fits(deadline, s.min_row_s):
        rows.append(dict(row, note="the defaults do not fit"))
        config = bench.config(base["model"], batch, base["objective"], remat=remat_instead)
        row = dict(bench.measure(config), switch=switch, value=value)
    if remat_instead:
      row["note"] = f"with remat {remat_instead}: the defaults do not fit"
    relative(row, base)
    rows.append(row)
    section["verdicts"] = verdicts(rows, base, bench, s)
    progress()
  section["verdicts"] = verdicts(rows, base, bench, s)


def _fastest_remat(rows: list[dict]) -> str:
  timed = [r for r in rows if r.get("switch") == "remat" and "ms_per_step" in r]
  return min(timed, key=lambda r: r["ms_per_step"])["value"] if timed else ""


def _remat_for(batch: int, base: dict, rows: list[dict], device_bytes) -> str:
  """The fastest remat policy measured, where the defaults' temp memory at the largest batch
  measured, scaled to `batch`, would not fit on the device (no compile spent finding out)."""
  if not device_bytes:
    return ""
  measured = [r for r in [base] + rows if r.get("temp_mib") and r.get("remat") == "off"
              and r.get("layers") == "per layer" and r.get("switch", "batch") == "batch"]
  if not measured:
    return ""
  largest = max(measured, key=lambda r: r["batch"])
  needed = largest["temp_mib"] * 2**20 / largest["batch"] * batch
  return _fastest_remat(rows) if needed > 0.9 * device_bytes else ""


def verdicts(rows: list[dict], base: dict, bench: StepRows, s: Settings) -> list[dict]:
  """One verdict per switch: the default's value (the platform's, from
  models/platform_defaults.py, or the config's), the fastest value measured, and whether
  VERDICT_RULE says to change."""
  model = bench.config(base["model"], base["batch"], base["objective"]).model
  chosen = platform_defaults.resolve(model, bench.platform)
  out = []
  for switch in SWITCHES:
    if switch in chosen:
      default, source = chosen[switch], f"platform default ({bench.platform})"
      measured_before = platform_defaults.MEASURED.get(switch, {}).get(bench.platform, "")
    else:
      default = {"layers": "per layer", "remat": "off", "batch": base["batch"]}[switch]
      source, measured_before = "config default", ""
    timed = [r for r in rows if r.get("switch") == switch and "ms_per_example" in r]
    not_run = [f"{r['value']}: {r['not_run']}" for r in rows
               if r.get("switch") == switch and "not_run" in r]
    failed = [f"{r['value']}: {r['error']}" for r in rows
              if r.get("switch") == switch and "error" in r]
    v = {"switch": switch, "default": default, "default_from": source,
         "measured_before": measured_before or "not measured on this platform before"}
    if not timed:
      v.update(verdict="not measured", line=f"{switch}: not measured in this run"
               + (f" ({'; '.join(not_run + failed)})" if not_run or failed else "")
               + f"; {default} stays")
      out.append(v)
      continue
    best = min(timed, key=lambda r: r["ms_per_example"])
    ratio = best["ms_per_example"] / base["ms_per_example"]
    v.update(best=best["value"], best_over_default=ratio,
             best_temp_over_default=best.get("temp_over_baseline"))
    what = "per example " if switch == "batch" else ""
    if ratio <= FASTER:
      v["verdict"] = "change"
      v["line"] = (f"{switch}: change {default} -> {best['value']} on {bench.platform}: its step "
                   f"{what}takes {ratio:.3f}x the default's ({1 - ratio:.1%} shorter)")
    else:
      v["verdict"] = "keep"
      v["line"] = (f"{switch}: keep {default} on {bench.platform}: the fastest other value, "
                   f"{best['value']}, takes {ratio:.3f}x the default's step {what}(not >= 3% "
                   "shorter)")
    if switch == "remat" and best.get("temp_over_baseline"):
      v["line"] += (f"; for a batch that does not fit without it, {best['value']} (XLA temp "
                    f"memory {best['temp_over_baseline']:.2f}x the baseline's)")
    if switch == "batch":
      v["line"] += " (a recipe's choice, not a model default: the verdict is on throughput only)"
    if best.get("note"):
      v["line"] += f"; {best['value']} ran {best['note']}"
    if not_run:
      v["line"] += f"; not run: {'; '.join(not_run)}"
    out.append(v)
  return out


# --- 6. As the budget allows ------------------------------------------------------------------

def demo_config(s: Settings):
  from configs import rankclip_synthetic  # pylint: disable=g-import-not-at-top
  c = rankclip_synthetic.get_config()
  c.total_steps = s.train_steps
  c.optim.warmup_steps = 5  # the demo's 50 would not fit in 30 steps
  # The demo ramps the ranking weights up with the step, so its loss may rise while every term
  # falls: constant weights make "the loss falls" the check.
  c.loss.weight_schedule = "constant"
  c.log_every_steps = 1
  c.eval_every_steps = 10 * s.train_steps  # one evaluation, at the end
  c.checkpoint.every_steps = s.train_steps
  c.checkpoint.async_save = False
  if s.tiny_model:  # the unit tests' micro model
    c.model.size, c.image_size, c.context_length, c.batch_size = "micro", 32, 16, 16
    c.eval_batch_size = 16
    # One evaluation set (what the tests read): each further evaluator is only more compiling.
    c.evals = {"zs_shape": dict(c.evals.zs_shape, num_examples=16)}
  return c


def logged_scalars(workdir: str, tag: str) -> dict[int, float]:
  """{step: value} of a scalar read back from the run's event files by TensorBoard's reader."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
  acc.Reload()
  return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def demo_trains(section: dict, s: Settings, out_dir: str, clock: Clock, deadline: float):
  if not clock.fits(deadline, s.demo_s):
    return skipped(section, "time budget")
  workdir = os.path.abspath(os.path.join(out_dir, "demo_run"))
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resumed one
  config = demo_config(s)
  writer, why = metric_writer.backend()
  section.update(workdir=workdir, steps=s.train_steps, model=config.model.size,
                 batch_size=config.batch_size, metric_writer=writer,
                 **({"metric_writer_because": why} if why else {}))
  t0 = time.perf_counter()
  final = train.train_and_evaluate(config, workdir)
  section["train_and_evaluate_s"] = round(time.perf_counter() - t0, 1)
  losses = logged_scalars(workdir, "train/loss")
  values = [losses[k] for k in sorted(losses)]
  k = max(1, len(values) // 6)
  first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
  section.update(
      event_files=sorted(f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")),
      logged_loss_steps=len(values), first_losses=values[:3], last_losses=values[-3:],
      mean_first=first, mean_last=last,
      eval={k: v for k, v in final.items() if k.endswith("top1") or k.endswith("r1")})
  if not (len(values) == s.train_steps and np.all(np.isfinite(values)) and last < first):
    section["status_if_ran"] = "failed"


def more_rows(section: dict, s: Settings, bench: StepRows, shared: dict, clock: Clock,
              deadline: float, progress):
  """The baseline with FLIP patch dropout, and the extra (model, batch, loss) rows."""
  base = shared.get("baseline", {})
  rows, skipped_rows = [], []
  section.update(rows=rows, skipped=skipped_rows)
  plan = [(base.get("model", s.models[0]), s.batch, "rankclip", p) for p in s.patch_dropouts]
  plan += [(size, batch, objective, 0.0) for size, batch, objective in s.extra_rows]
  for size, batch, objective, dropout in plan:
    label = f"{size} batch {batch} {objective}" + (f" patch dropout {dropout}" if dropout else "")
    if not clock.fits(deadline, s.min_row_s):
      skipped_rows.append(f"{label}: time budget")
      continue
    row = bench.measure(bench.config(size, batch, objective, patch_dropout=dropout))
    if dropout and "ms_per_step" in row and "ms_per_step" in base:
      row["over_no_dropout"] = row["ms_per_step"] / base["ms_per_step"]
    if size == base.get("model"):
      relative(row, base)
    rows.append(row)
    progress()


def mib(x):
  return None if x is None else round(x / 2**20, 1)


def loss_at_scale(section: dict, s: Settings, clock: Clock, deadline: float):
  if not clock.fits(deadline, s.loss_min_s):
    return skipped(section, "time budget")
  try:
    import rax  # pylint: disable=g-import-not-at-top,unused-import
    have_rax = True
  except ImportError:
    have_rax = False
  variants = [("clip", "plain", None), ("clip", "chunked", s.chunk),
              ("rankclip", "plain", None), ("rankclip", "chunked", s.chunk)]
  if have_rax:
    variants.append(("rax_terms", "rax listmle (4 ranking terms)", None))
  rows, skipped_rows = [], []
  section.update(dim=s.dim, chunk=s.chunk, rax=have_rax, rows=rows, skipped=skipped_rows)

  def run(kind, strategy, chunk, n, repeats, last_s):
    """One row, unless the time left cannot hold it (estimated from the same loss at N/2)."""
    if last_s is not None and not clock.fits(deadline, 5 * last_s * (repeats + 2)):
      skipped_rows.append(f"{kind} {strategy} N={n}: time budget")
      return None
    t0 = time.perf_counter()
    seconds, scratch = loss_bench.measure(loss_bench.make_loss(kind, chunk=chunk), n, s.dim,
                                          repeats)
    io = 2 * 2 * n * s.dim * 4  # both embeddings in, both gradients out (float32)
    row = {"n": n, "loss": kind, "strategy": strategy, "ms": None if seconds is None
           else round(seconds * 1e3, 3), "scratch_mib": mib(scratch),
           "peak_mib": None if scratch is None else mib(scratch + io),
           "fits": seconds is not None, "wall_s": round(time.perf_counter() - t0, 2)}
    rows.append(row)
    print(f"  loss N={n} {kind} {strategy}: {row['ms']} ms, peak {row['peak_mib']} MiB",
          flush=True)
    return row

  last = {}
  for n in s.loss_sizes:
    for kind, strategy, chunk in variants:
      if kind == "rax_terms" and n > s.rax_max_n:
        continue
      prev = last.get((kind, strategy))
      if prev is not None and not prev["fits"]:
        continue  # did not fit at a smaller N
      row = run(kind, strategy, chunk, n, s.repeats, prev and prev["ms"] / 1e3)
      if row:
        last[(kind, strategy)] = row
  # The largest N that fits: RankCLIP doubled beyond the table until it does not fit, time is up,
  # or the cap.
  largest = {}
  for strategy, chunk in (("plain", None), ("chunked", s.chunk)):
    fitted = last.get(("rankclip", strategy))
    if fitted is None or not fitted["fits"]:
      continue
    n, because = 2 * fitted["n"], "cap"
    while n <= s.largest_n_cap:
      row = run("rankclip", strategy, chunk, n, 1, fitted["ms"] / 1e3)
      if row is None or not row["fits"]:
        because = "time budget" if row is None else "out of memory"
        break
      fitted, n = row, 2 * n
    largest[strategy] = {"n": fitted["n"], "next": n, "because": because}
  section["largest_n"] = largest
  for row in rows:  # time relative to CLIP plain, and rax's over ours, at the same N
    same = {(r["loss"], r["strategy"]): r for r in rows if r["n"] == row["n"] and r["ms"]}
    clip, ours, theirs = (same.get(("clip", "plain")), same.get(("rankclip", "plain")),
                          same.get(("rax_terms", "rax listmle (4 ranking terms)")))
    if row["ms"] and clip:
      row["x_clip_plain"] = round(row["ms"] / clip["ms"], 2)
    if row["loss"] == "rankclip" and row["strategy"] == "plain" and theirs and row["ms"]:
      row["rax_speedup"] = round(theirs["ms"] / row["ms"], 1)
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    section["device_memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    section["process_peak_gib"] = round(stats.get("peak_bytes_in_use", 0) / 2**30, 1)


# --- The report -------------------------------------------------------------------------------

def environment(tiny: bool) -> dict:
  """What this process knows without starting a JAX backend (see the open_clip part)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorboard",
                  "clu", "tensorflow", "tensorflow-cpu", "rax"):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      pass
  return {"mode": "tiny (CPU test sizes)" if tiny else "full", "python": sys.version.split()[0],
          "versions": versions}


def device_environment(s: Settings) -> dict:
  """The devices, and the platform's defaults for the baseline's model (starts JAX's backend)."""
  dev = jax.devices()[0]
  platform = platform_defaults.platform_name()
  model = train_bench.make_config(s.models[0], s.batch, s.image_size, s.context, s.dtype, True,
                                  "", 0.0).model
  stats = dev.memory_stats() or {}
  return {"devices": f"{jax.device_count()} x {dev.device_kind} ({dev.platform})",
          "platform": platform, "metric_writer": metric_writer.backend()[0],
          **({"device_memory_gib": round(stats["bytes_limit"] / 2**30, 1)}
             if "bytes_limit" in stats else {}),
          "platform_defaults": platform_defaults.resolve(model, platform),
          "measured_before": {k: v.get(platform, "")
                              for k, v in platform_defaults.MEASURED.items()}}


PARTS = ("open_clip", "correctness", "ours", "profile", "switches", "demo", "more_rows",
         "loss_at_scale")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/accelerator_check",
                      help="writes OUT.md and OUT.json (and the demo run under OUT_files/)")
  parser.add_argument("--tiny", action="store_true", help="CPU test sizes: seconds, not minutes")
  parser.add_argument("--budget_s", type=float, default=390.0,
                      help="no part or step row starts that would not end by this many seconds")
  parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                      help="which parts to run (default all; profile and switches need ours' "
                      "first row, and run it themselves if ours is left out)")
  parser.add_argument("--open_clip_python", default=None,
                      help="a Python with torch and open_clip_torch for part 1 (default: this "
                      "one where it can import both; '' skips open_clip)")
  parser.add_argument("--open_clip_compile", action="store_true",
                      help="also open_clip's step through torch.compile (about a minute per model)")
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  s = TINY if args.tiny else FULL
  clock = Clock()
  out_files = args.out + "_files"
  os.makedirs(out_files, exist_ok=True)
  report = {"environment": environment(args.tiny), "parts": {}, "order": []}
  parts, shared = report["parts"], {}

  def write():  # after every part and row, so that a run stopped from outside leaves what it had
    report["wall_s"] = round(clock.elapsed(), 1)
    with open(args.out + ".json", "w") as f:
      json.dump(report, f, indent=2, default=str)
    with open(args.out + ".md", "w") as f:
      f.write(accelerator_report.markdown(report))

  def run(name, part, *part_args):
    if name in args.parts or name in ("attention", "loss_strategies"):
      report["order"].append(name)
      guarded(parts, name, part, *part_args)
      write()

  # Part 1 before anything starts JAX's backend (which would take the GPU's memory).
  if args.open_clip_python is None:
    python, why_not = default_open_clip_python()
  else:
    python, why_not = args.open_clip_python, "--open_clip_python ''"
  run("open_clip", open_clip_part, s, python, why_not,
      args.open_clip_compile or s.open_clip_compile, clock, args.budget_s)
  shared["open_clip_rows"] = parts.get("open_clip", {}).get("rows", [])
  try:
    report["environment"].update(device_environment(s))
  except Exception as e:  # pylint: disable=broad-except  (no backend: nothing more can run)
    report["environment"]["error"] = f"{type(e).__name__}: {e}"[:2000]
    write()
    raise
  print(f"Accelerator check: {report['environment']['devices']}", flush=True)
  write()

  if "correctness" in args.parts:
    run("attention", attention_agrees, s)
    run("loss_strategies", loss_strategies_agree, s)
  bench = StepRows(s)
  run("ours", ours_part, s, bench, shared, clock, args.budget_s, write)
  run("profile", profile_part, s, bench, shared)
  run("switches", switches_part, s, bench, shared, clock, args.budget_s, write)
  shared.pop("baseline_run", None)
  run("demo", demo_trains, s, out_files, clock, args.budget_s)
  run("more_rows", more_rows, s, bench, shared, clock, args.budget_s, write)
  run("loss_at_scale", loss_at_scale, s, clock, args.budget_s)
  write()
  print(f"Report: {args.out}.md, {args.out}.json", flush=True)
  return 0 if all(p["status"] in ("ok", "skipped") for p in parts.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
