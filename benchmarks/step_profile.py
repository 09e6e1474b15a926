"""Where a training step's time goes: a jax.profiler trace of the real jitted step, its ops summed by
tower (image, text, loss, optimizer), part (stem, attention, MLP, LayerNorm, embeddings, ...) and
direction (forward, backward).

  python -m benchmarks.step_profile                                    # the demo config
  python -m benchmarks.step_profile --config=configs/rankclip_synthetic.py \
      --set model.patch_dropout=0.5 --set batch_size=128 --steps 8
  python -m benchmarks.step_profile --compare model.patch_dropout=0.25 model.patch_dropout=0.5

--compare times the config's step against the step with each given override (several separated
by commas), interleaved in one process (rounds of a few steps each, in turn), and prints each
one's median step time and its ratio to the config's: other load on the machine then falls on all
of them alike.

Input is a fixed random batch already on the devices, so the figures are the step's alone. Each
op of the trace (an XLA thunk: a fusion, a matmul, a copy) is attributed through the `op_name`
metadata of its instruction in the compiled HLO, which names the Flax module path and whether the
op belongs to the forward pass (`jvp(...)`) or the backward pass (`transpose(jvp(...))`). On a CPU
XLA runs independent ops on several threads at once, so the op times add up to more than the
wall time of a step; the shares are of the summed op time. Also printed: the step's wall time,
and XLA's cost analysis (FLOPs, bytes accessed) of the compiled step.

On a CPU host it starts itself again with glibc's huge-page tunable, as the training command does
(rankclip_jax/host_memory.py); `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` profiles glibc's default.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import os
import re
import tempfile
import time

import jax
import numpy as np
from absl import flags

from rankclip_jax import compat
from rankclip_jax import host_memory
from rankclip_jax import train
from rankclip_jax.data.records import SKIP_KINDS

_NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "$", "PjitFunction", "CommonPjRt")


def load_config(path: str, overrides: list[str]):
  spec = importlib.util.spec_from_file_location("profiled_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[leaf]
    node[leaf] = (value if isinstance(old, str) else
                  type(old)(json.loads(value.lower() if isinstance(old, bool) else value)))
  return config


def random_batch(trainer):
  c = trainer.config
  rng = np.random.default_rng(0)
  local = {k: rng.normal(size=(c.batch_size, c.image_size, c.image_size, 3)).astype(np.float32)
           for k in trainer.image_keys}
  local["text"] = rng.integers(1, 49000, size=(c.batch_size, c.context_length)).astype(np.int32)
  local["text"][:, c.context_length // 3] = trainer.tokenizer.eot_id  # captions of ~1/3 length
  local["skipped"] = np.zeros((c.batch_size, len(SKIP_KINDS)), np.int32)
  return trainer.global_batch(local)


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its op_name metadata (the Flax module path of the traced operation)."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]+)\"", line)
    if m:
      out.setdefault(m.group(1), m.group(2))
  return out


def categorise(op_name: str) -> tuple[str, str, str]:
  """op_name metadata -> (tower, part, direction)."""
  if "encode_image" in op_name or "/image/" in op_name:
    tower = "image"
  elif "encode_text" in op_name or "/text/" in op_name:
    tower = "text"
  elif re.search(r"loss|objective|shard_map|plackett|all_gather|psum", op_name):
    tower = "loss"
  elif re.search(r"optimizer/|cond/branch|adam|update|apply_if_finite|global_norm|is_finite|clip",
                 op_name):
    tower = "optimizer"
  else:
    tower = "other (copies, select, bookkeeping)"
  parts = (("stem", r"stem_|patch_embed"), ("attention", r"/attn/"), ("MLP", r"/mlp/"),
           ("LayerNorm", r"/ln_"), ("embeddings", r"token_embedding|pos_embedding|/cls"),
           ("projection", r"/proj/"))
  part = next((name for name, pattern in parts if re.search(pattern, op_name)), "")
  direction = "backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name else ""
  return tower, part, direction


def compiled_step(config):
  """(the compiled train step, a state, a batch), warmed up."""
  trainer = train.Trainer(config)
  state = trainer.init()
  batch = random_batch(trainer)
  step = trainer.train_step.lower(state, batch).compile()
  for _ in range(3):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return step, state, batch


def compare(config_path: str, base: list[str], variants: list[str], rounds: int, steps: int):
  """Median step time of the config and of each variant (comma-separated overrides on top),
  timed in turn, round after round."""
  names = ["(the config)"] + variants
  runs = [list(compiled_step(load_config(config_path, base + (v.split(",") if v else []))))
          for v in [""] + variants]
  times = [[] for _ in runs]
  for _ in range(rounds):
    for run, t in zip(runs, times):
      step, state, batch = run
      t0 = time.perf_counter()
      for _ in range(steps):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
      t.append((time.perf_counter() - t0) / steps * 1e3)
      run[1] = state
  base_ms = float(np.median(times[0]))
  print("| variant | median ms/step | min ms/step | step time / the config's |\n|---|---|---|---|")
  for name, t in zip(names, times):
    print(f"| {name} | {np.median(t):.1f} | {min(t):.1f} | {np.median(t) / base_ms:.3f} |")


def profile(config, steps: int):
  step, state, batch = compiled_step(config)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  wall_ms = (time.perf_counter() - t0) / steps * 1e3
  trace_dir = tempfile.mkdtemp(prefix="step_profile_")
  jax.profiler.start_trace(trace_dir)
  for _ in range(steps):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  jax.profiler.stop_trace()
  (trace_file,) = glob.glob(os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz"))
  events = json.load(gzip.open(trace_file))["traceEvents"]
  names = op_names(step.as_text())
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("dur") and not e["name"].startswith(_NOT_OPS):
      per_op[e["name"]] += e["dur"] / steps / 1e3
  return wall_ms, per_op, names, compat.cost_analysis(step) or {}


def main():
  host_memory.restart_with_huge_pages()  # as the training command does (rankclip_jax/host_memory.py)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/rankclip_synthetic.py")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a config override, e.g. model.patch_dropout=0.5 (repeatable)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=12, help="how many single ops to list")
  parser.add_argument("--compare", nargs="+", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
                      help="time the config against these variants instead of profiling it")
  parser.add_argument("--rounds", type=int, default=10, help="--compare: rounds of --steps steps")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  if args.compare:
    print(f"{args.config} {' '.join(args.set)}: {jax.devices()[0].device_kind}, jax "
          f"{jax.__version__}, {os.cpu_count()} cores, {args.rounds} rounds of {args.steps} steps")
    compare(args.config, args.set, args.compare, args.rounds, args.steps)
    return
  config = load_config(args.config, args.set)
  wall_ms, per_op, names, cost = profile(config, args.steps)
  total = sum(per_op.values())
  dev = jax.devices()[0]
  print(f"{args.config} {' '.join(args.set)}: batch {config.batch_size}, {jax.device_count()} x "
        f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}, {os.cpu_count()} cores")
  print(f"step wall time {wall_ms:.1f} ms ({config.batch_size / wall_ms * 1e3:.0f} examples/s); "
        f"summed op time {total:.1f} ms; XLA cost analysis: {cost.get('flops', 0) / 1e9:.2f} "
        f"GFLOP, {cost.get('bytes accessed', 0) / 2**30:.2f} GiB accessed per step\n")
  groups = collections.Counter()
  towers = collections.Counter()
  for name, ms in per_op.items():
    tower, part, direction = categorise(names.get(name, ""))
    groups[(tower, part, direction)] += ms
    towers[tower] += ms
  print("| tower | part | pass | ms/step | share |\n|---|---|---|---|---|")
  for tower, tower_ms in towers.most_common():
    rows = sorted(((k, v) for k, v in groups.items() if k[0] == tower), key=lambda kv: -kv[1])
    for (_, part, direction), ms in rows:
      if ms >= 0.005 * total:
        print(f"| {tower} | {part or '-'} | {direction or '-'} | {ms:.1f} | {ms / total:.1%} |")
    print(f"| **{tower}** | all | all | **{tower_ms:.1f}** | **{tower_ms / total:.1%}** |")
  print(f"\nThe {args.top} longest ops:\n| op | ms/step | what (op_name) |\n|---|---|---|")
  for name, ms in per_op.most_common(args.top):
    print(f"| {name} | {ms:.2f} | {names.get(name, '?')[:110]} |")


if __name__ == "__main__":
  main()
