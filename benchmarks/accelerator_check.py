"""One command for a fresh accelerator machine: is the project correct there, and how fast is it?

  python -m benchmarks.accelerator_check        # runs/accelerator_check.md and .json (runs/: not in git)
  python -m benchmarks.accelerator_check --tiny --out=/tmp/tiny       # CPU, small sizes (tests)

Three parts, each guarded: an error or an out-of-memory in one is written into the report and the
others still run. Parts 2 and 3 start no new measurement when their time is up (--budget_s, 390 s
by default, so that the whole command, start-up and the last row included, takes under 8 minutes).
  1. correctness: the RankCLIP loss and its gradient computed plain, chunked, sharded (shard_map
     over all local devices) and sharded+chunked agree at N=4096 (float32, highest matmul
     precision); 30 steps of the demo (configs/rankclip_synthetic.py, with a 5-step warmup and the
     ranking weights held constant so that the loss itself must fall) through the real trainer
     (train.train_and_evaluate: data, checkpoints, evaluation, metric writer), the loss read back
     from its TensorBoard event files;
  2. the loss at scale: forward+backward time and XLA's memory (scratch, and peak = scratch +
     embeddings + gradients) of CLIP and RankCLIP, plain and chunked, at N = 4096 .. 32768
     (D=512), the largest N that fits (doubling until out of memory or out of time), and the
     speedup over rax.listmle_loss's four ranking terms where rax is installed
     (benchmarks/loss_bench.py does the measuring);
  3. training throughput: ViT-B/32 and ViT-B/16, RankCLIP and CLIP steps in bfloat16 at batch 256
     and 1024, scanned layers, without remat and with remat (nothing_saveable): examples/s,
     TFLOP/s, MFU and the RankCLIP/CLIP step-time ratio (benchmarks/train_bench.py: the real
     jitted, sharded Trainer step on synthetic device batches; FLOPs from rankclip_jax/flops.py),
     and the ViT-B/16 RankCLIP step at batch 256 with FLIP patch dropout 0.25 and 0.5 against the
     same step without it; then that step with per-layer blocks (where model.last_block_pooled_only
     applies), with the model's defaults and with each of model.recompute_elementwise and
     model.last_block_pooled_only switched off (both chosen on CPUs: is each worth keeping here?).
The exit status is 0 when every part ran and the correctness checks passed.

A machine that has only JAX, flax, optax and orbax-checkpoint (with their own dependencies,
tensorboard, pillow and scipy) gets the project's other dependencies as wheels for Python 3.12,
manylinux x86-64 where a package has compiled parts (8.5 MiB together): grain 0.2.18, array-record
0.8.6, cloudpickle 3.1.3, portpicker 1.6.0, psutil 7.2.2, ml-collections 1.1.0, ftfy 6.3.1,
wcwidth 0.9.4, instant-clip-tokenizer 0.1.1 and, for the comparison, rax 0.4.0. Download them on
a machine with PyPI (into .whl/, which git ignores):

  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0 psutil==7.2.2 ml-collections==1.1.0 ftfy==6.3.1 wcwidth==0.9.4 instant-clip-tokenizer==0.1.1 rax==0.4.0

adding flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 (pure Python, 2.3 MiB) to run the versions
requirements.txt pins rather than the image's (as on the H200 of docs/benchmarks.md, whose image
had JAX 0.11.2);

and on the accelerator machine, from the repository root:

  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python3 -m benchmarks.accelerator_check

Neither TensorFlow nor clu is needed: without them the run's metrics are written by
rankclip_jax/tensorboard_writer.py (the report says which writer was used).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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

from benchmarks import accelerator_report, loss_bench, train_bench
from rankclip_jax import metric_writer


@dataclasses.dataclass(frozen=True)
class Settings:
  check_n: int = 4096
  dim: int = 512
  chunk: int = 512
  loss_sizes: tuple = (4096, 8192, 16384, 32768)
  largest_n_cap: int = 1 << 20
  rax_max_n: int = 16384  # rax scans over the list: one step per element
  repeats: int = 5
  train_steps: int = 30
  tiny_model: bool = False
  models: tuple = ("B/32", "B/16")
  batches: tuple = (256, 1024)
  remats: tuple = ("", "nothing_saveable")  # model.remat off, then on with this policy
  dtype: str = "bfloat16"  # of the throughput rows (compute; parameters stay float32)
  image_size: int = 224
  context: int = 77
  bench_steps: int = 10
  # FLIP patch dropout: RankCLIP steps of this model and batch (remat off) at these shares of the
  # image patches dropped, against the same step at 0.
  patch_dropouts: tuple = (0.25, 0.5)
  patch_dropout_at: tuple = ("B/16", 256)
  # The same model and batch (remat off) with per-layer blocks: the defaults, then each of these
  # boolean config.model fields set to False in turn, against the defaults.
  model_switches: tuple = ("recompute_elementwise", "last_block_pooled_only")
  min_config_s: float = 25.0  # a training-throughput row is not started with less time left


FULL = Settings()
TINY = Settings(check_n=64, dim=16, chunk=16, loss_sizes=(64,), largest_n_cap=128, rax_max_n=64,
                repeats=1, train_steps=30, tiny_model=True, models=("micro",), batches=(8,),
                remats=("",), dtype="float32", image_size=32, context=16, bench_steps=2,
                patch_dropouts=(0.5,), patch_dropout_at=("micro", 8),
                model_switches=("last_block_pooled_only",),
                min_config_s=0.0)  # float32: XLA's CPU compiler takes twice as long for bf16


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


# --- 1. Correctness ---------------------------------------------------------------------------

def data_mesh():
  return jax.make_mesh((jax.local_device_count(),), ("data",), axis_types=(AxisType.Auto,))


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


def demo_trains(section: dict, s: Settings, out_dir: str):
  from rankclip_jax import train  # pylint: disable=g-import-not-at-top
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


# --- 2. The loss at scale ---------------------------------------------------------------------

def mib(x):
  return None if x is None else round(x / 2**20, 1)


def loss_at_scale(section: dict, s: Settings, clock: Clock, deadline: float):
  try:
    import rax  # pylint: disable=g-import-not-at-top,unused-import
    have_rax = True
  except ImportError:
    have_rax = False
  variants = [("clip", "plain", None), ("clip", "chunked", s.chunk),
              ("rankclip", "plain", None), ("rankclip", "chunked", s.chunk)]
  if have_rax:
    variants.append(("rax_terms", "rax listmle (4 ranking terms)", None))
  rows, skipped = [], []
  section.update(dim=s.dim, chunk=s.chunk, rax=have_rax, rows=rows, skipped=skipped)

  def run(kind, strategy, chunk, n, repeats, last_s):
    """One row, unless the time left cannot hold it (estimated from the same loss at N/2)."""
    if last_s is not None and not clock.fits(deadline, 5 * last_s * (repeats + 2)):
      skipped.append(f"{kind} {strategy} N={n}: time budget")
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


# --- 3. Training throughput -------------------------------------------------------------------

def train_throughput(section: dict, s: Settings, clock: Clock, deadline: float,
                     progress=lambda: None):
  """progress(): called after every row (the command writes the report so far)."""
  rows, skipped = [], []
  section.update(dtype=s.dtype, image_size=s.image_size, context=s.context,
                 steps_timed=s.bench_steps, rows=rows, skipped=skipped)
  # Without remat first, the smaller batch first, then with remat: the rows that matter most come
  # first when time runs out. The patch-dropout rows, then the per-layer rows with the model's
  # defaults switched off one at a time, follow their model's no-dropout rows.
  plan = []  # (remat, size, batch, patch dropout, objectives, scanned, the field switched off)
  for remat in s.remats:
    for batch in s.batches:
      for size in s.models:
        plan.append((remat, size, batch, 0.0, ("clip", "rankclip"), True, ""))
        if not remat and (size, batch) == tuple(s.patch_dropout_at):
          plan += [(remat, size, batch, p, ("rankclip",), True, "") for p in s.patch_dropouts]
          plan += [(remat, size, batch, 0.0, ("rankclip",), False, off)
                   for off in ("",) + tuple(s.model_switches)]
  times = {}  # (size, batch, remat, objective, patch dropout, scanned, switched off) -> ms per step
  for remat, size, batch, dropout, objectives, scan, off in plan:
    for name in objectives:
      label = f"{size} batch {batch} {name} remat {remat or 'off'}"
      if dropout:
        label += f" patch dropout {dropout}"
      if not scan:
        label += " per-layer blocks" + (f", {off} off" if off else "")
      if not clock.fits(deadline, s.min_config_s):
        skipped.append(f"{label}: time budget")
        continue
      config = train_bench.make_config(size, batch, s.image_size, s.context, s.dtype,
                                        name == "rankclip", remat, 0.0, scan=scan,
                                        patch_dropout=dropout)
      if off:
        config.model[off] = False
      row = {"model": size, "batch": batch, "objective": name, "remat": remat or "off",
             "patch_dropout": dropout, "layers": "scanned" if scan else "per layer",
             "switched_off": off}
      try:
        row.update(train_bench.measure(config, s.bench_steps))  # its "loss": the last value
      except Exception as e:  # pylint: disable=broad-except  (one row fails, the others run)
        row["error"] = "out of memory" if is_oom(e) else f"{type(e).__name__}: {e}"[:300]
        if not is_oom(e):
          section["status_if_ran"] = "error"
      gc.collect()
      rows.append(row)
      if "ms_per_step" in row:
        key = (size, batch, remat)
        times[key + (name, dropout, scan, off)] = row["ms_per_step"]
        if name == "rankclip" and scan and not dropout and key + ("clip", 0.0, True, "") in times:
          row["rankclip_over_clip"] = round(
              row["ms_per_step"] / times[key + ("clip", 0.0, True, "")], 3)
        if dropout and key + (name, 0.0, True, "") in times:
          row["over_no_dropout"] = round(row["ms_per_step"] / times[key + (name, 0.0, True, "")], 3)
        if off and key + (name, 0.0, False, "") in times:
          row["over_defaults"] = round(row["ms_per_step"] / times[key + (name, 0.0, False, "")], 3)
      print(f"  train {label}: {row.get('examples_per_s', row.get('error'))}", flush=True)
      progress()


# --- The report -------------------------------------------------------------------------------

def environment(tiny: bool) -> dict:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorboard",
                  "clu", "tensorflow", "tensorflow-cpu", "rax"):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      pass
  dev = jax.devices()[0]
  return {"mode": "tiny (CPU test sizes)" if tiny else "full", "python": sys.version.split()[0],
          "devices": f"{jax.device_count()} x {dev.device_kind} ({dev.platform})",
          "metric_writer": metric_writer.backend()[0], "versions": versions}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/accelerator_check",
                      help="writes OUT.md and OUT.json (and the demo run under OUT_files/)")
  parser.add_argument("--tiny", action="store_true", help="CPU test sizes: seconds, not minutes")
  parser.add_argument("--budget_s", type=float, default=390.0,
                      help="parts 2 and 3 start no new measurement after this many seconds")
  parser.add_argument("--parts", nargs="+", default=["1", "2", "3"], choices=["1", "2", "3"],
                      help="which parts to run (default all)")
  parser.add_argument("--loss_share", type=float, default=0.4,
                      help="share of the time left after part 1 that part 2 may use")
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  s = TINY if args.tiny else FULL
  clock = Clock()
  out_files = args.out + "_files"
  os.makedirs(out_files, exist_ok=True)
  report = {"environment": environment(args.tiny), "parts": {}}
  print(f"Accelerator check: {report['environment']['devices']}", flush=True)
  parts = report["parts"]

  def write():  # after every part too, so that a run stopped from outside leaves what it measured
    report["wall_s"] = round(clock.elapsed(), 1)
    with open(args.out + ".json", "w") as f:
      json.dump(report, f, indent=2, default=str)
    with open(args.out + ".md", "w") as f:
      f.write(accelerator_report.markdown(report))

  if "1" in args.parts:
    guarded(parts, "loss_strategies", loss_strategies_agree, s)
    guarded(parts, "demo_training", demo_trains, s, out_files)
    write()
  if "2" in args.parts:
    deadline = clock.elapsed() + args.loss_share * max(0.0, args.budget_s - clock.elapsed())
    if "3" not in args.parts:
      deadline = args.budget_s
    guarded(parts, "loss_at_scale", loss_at_scale, s, clock, deadline)
    write()
  if "3" in args.parts:
    guarded(parts, "train_throughput", train_throughput, s, clock, args.budget_s, write)
  write()
  print(f"Report: {args.out}.md, {args.out}.json", flush=True)
  return 0 if all(p["status"] == "ok" for p in parts.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
