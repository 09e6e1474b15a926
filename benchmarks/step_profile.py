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
op belongs to the forward pass (`jvp(...)`) or the backward pass (`transpose(jvp(...))`), and is
given a kind from the instruction itself (its opcode, a custom call's target, the instructions a
fusion holds): matrix products, attention (the softmax(q k^T) v of SelfAttention, a fused kernel
or its parts), norms and elementwise, optimizer, loss, copies. On a CPU XLA runs independent ops on
several threads at once, so the op times add up to more than the wall time of a step; the shares
are of the summed op time. On a GPU the ops are the device's kernels (the trace's events on the
GPU's process, each naming its HLO instruction; host-side events are not counted), which run one
after another on a stream: their sum over the step's wall time is the share of the step the GPU
was busy. Also printed: the step's wall time, and XLA's cost analysis (FLOPs, bytes accessed) of
the compiled step.

On a CPU host it starts itself again with glibc's huge-page tunable, as the training command does
(rankclip_jax/host_memory.py); `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` profiles glibc's default.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
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
    if old is None:  # a placeholder (e.g. model.recompute_elementwise: None means "by platform")
      node[leaf] = json.loads(value.lower() if value.lower() in ("true", "false", "null")
                              else value)
    else:
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


@dataclasses.dataclass
class Instruction:
  """One instruction of an HLO module's text: what it computes, what a fusion or a call holds."""

  opcode: str
  op_name: str = ""  # its op_name metadata (the Flax module path of the traced operation)
  target: str = ""  # a custom call's custom_call_target (e.g. __cublas$gemm, __cudnn$fmha...)
  calls: tuple = ()  # the computations it runs (a fusion's body, a while's body and condition)
  batched_dot: bool = False  # a dot with batch dimensions (attention's q k^T and weights v)


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _opcode(rest: str) -> str:
  """The opcode of an instruction's text after "name = ": its type, then opcode(operands...)."""
  if rest.startswith("("):  # a tuple type, perhaps nested
    depth = 0
    for i, ch in enumerate(rest):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        rest = rest[i + 1:]
        break
  else:
    rest = rest.split(" ", 1)[1] if " " in rest else ""
  m = re.match(r"\s*([a-z][\w\-]*)\(", rest)
  return m.group(1) if m else ""


def hlo_instructions(hlo_text: str) -> tuple[dict[str, Instruction], dict[str, list[str]]]:
  """({instruction name: Instruction}, {computation name: its instructions' names}) of a module's
  text (Compiled.as_text(): the optimised module, whose instruction names the trace's ops carry)."""
  instructions, computations, current = {}, {}, None
  for line in hlo_text.splitlines():
    line = re.sub(r"/\*.*?\*/", "", line)  # /*index=5*/ comments inside operand lists and types
    header = _COMPUTATION.match(line)
    if header and " = " not in line:
      current = header.group(1)
      computations[current] = []
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, rest = m.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    instructions.setdefault(name, Instruction(
        opcode=_opcode(rest), op_name=op_name.group(1) if op_name else "",
        target=target.group(1) if target else "",
        calls=tuple(re.findall(r"(?:calls|body|condition|to_apply|branch_computations)="
                               r"\{?%([\w.\-]+)", rest)),
        batched_dot="lhs_batch_dims=" in rest))
    if current is not None:
      computations[current].append(name)
  return instructions, computations


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its op_name metadata (the Flax module path of the traced operation)."""
  return {k: v.op_name for k, v in hlo_instructions(hlo_text)[0].items() if v.op_name}


def _held(name: str, instructions, computations, depth: int = 0) -> list[Instruction]:
  """The instruction and, for a fusion (or a call), the instructions its computations hold."""
  ins = instructions[name]
  out = [ins]
  if ins.opcode in ("fusion", "call", "custom-call", "async-start") and depth < 3:
    for computation in ins.calls:
      for inner in computations.get(computation, ()):
        out += _held(inner, instructions, computations, depth + 1)
  return out


KINDS = ("matrix products", "attention", "norms and elementwise", "optimizer", "loss", "copies",
         "collectives", "other")
# The attention computed between the projections: the hand-written one (SelfAttention._attend:
# its two batched einsums, mask and softmax), jax.nn.dot_product_attention's, a fused kernel.
_ATTENTION_CORE = re.compile(r"_attend|dot_product_attention|bhqd,bhkd|bhqk,bhkd|softmax|fmha")
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COPIES = {"copy", "copy-start", "copy-done", "transpose"}
_PLUMBING = {"parameter", "bitcast", "reshape", "tuple", "get-tuple-element", "constant"}
CONTROL_FLOW = ("while", "conditional", "call")


def op_kind(name: str, instructions: dict, computations: dict) -> str:
  """One of KINDS for the op a trace names (an instruction of the compiled module, or a kernel
  that names none: a memcpy or memset is a copy). Where in the step comes first (the optimizer's
  and the loss's ops are theirs whatever they compute), then what the op computes."""
  if name not in instructions:
    return "copies" if re.search(r"memcpy|memset", name, re.I) else "other"
  ins = instructions[name]
  tower, part, _ = categorise(ins.op_name)
  if tower in ("optimizer", "loss"):
    return tower
  held = _held(name, instructions, computations)
  opcodes = {h.opcode for h in held}
  targets = " ".join(h.target for h in held).lower()
  if any(o.startswith(_COLLECTIVES) for o in opcodes):
    return "collectives"
  if re.search(r"fmha|flash|attention", targets):
    return "attention"
  dots = [h for h in held if h.opcode in ("dot", "convolution")]
  if dots or re.search(r"gemm|matmul|conv", targets):
    names = [d.op_name for d in dots] or [ins.op_name]
    if part == "attention" and any(_ATTENTION_CORE.search(n) for n in names):
      return "attention"
    return "matrix products"
  if part == "attention" and _ATTENTION_CORE.search(ins.op_name):
    return "attention"
  if opcodes & _COPIES and opcodes <= _COPIES | _PLUMBING | {"fusion"}:
    return "copies"
  return "norms and elementwise" if tower in ("image", "text") else "other"


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


# Lines of a device's process in the trace that repeat its kernels (derived from them by the
# profiler's converter) rather than being kernels themselves.
_DERIVED_LINES = ("XLA Modules", "XLA Ops", "Framework Ops", "TensorFlow Ops",
                  "Framework Name Scope", "TensorFlow Name Scope", "Source code", "Steps",
                  "XLA TraceMe")


def device_op_times(events: list[dict], steps: int, module: str = "") -> tuple[dict, str]:
  """({op: ms per step}, where the ops were found) from a trace's events.

  Where the trace has device processes (process_name metadata, ph "M", naming "/device:GPU:0 ..."
  or a TPU): the events on those processes, each kernel counted under the HLO instruction it
  names (args["hlo_op"], else its own name: a memcpy); the kernels' own lines ("Stream #..."),
  else a TPU's "XLA Ops" line, else every line but the ones derived from the kernels. Events of
  other modules than `module` (args["hlo_module"], when given and when any event is of it) are
  left out. Host-side events are not counted. Without device processes (a CPU): every complete
  event on the host but the runtime's own (_NOT_OPS), named as the trace names it (the thunk's
  instruction)."""
  process = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in process.items() if re.search(r"/device:(GPU|TPU)", name)}
  per_op = collections.Counter()
  if not devices:
    for e in events:
      if e.get("ph") == "X" and e.get("dur") and not e["name"].startswith(_NOT_OPS):
        per_op[e["name"]] += e["dur"] / steps / 1e3
    return per_op, "host threads (CPU)"
  line = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "") for e in events
          if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in devices}
  on_device = [e for e in events if e.get("ph") == "X" and e.get("pid") in devices and e.get("dur")]

  def named(e):
    return line.get((e["pid"], e.get("tid")), "")

  kernels = [e for e in on_device if named(e).startswith("Stream")]
  where = "device streams"
  if not kernels:
    kernels = [e for e in on_device if named(e) == "XLA Ops"]
    where = "the device's XLA Ops line"
  if not kernels:
    kernels = [e for e in on_device if named(e) not in _DERIVED_LINES]
    where = "device lines"
  if module:
    mine = [e for e in kernels
            if str(e.get("args", {}).get("hlo_module", module)).startswith(module)]
    kernels = mine or kernels
  for e in kernels:
    per_op[e.get("args", {}).get("hlo_op") or e["name"]] += e["dur"] / steps / 1e3
  return per_op, where + " of " + ", ".join(sorted(process[p] for p in devices))


def summarise(per_op: dict, hlo_text: str, wall_ms: float) -> dict:
  """The ops' time per step by (tower, part, pass), by tower and by kind (KINDS), the longest ops,
  and the totals. Control-flow instructions (a while loop around scanned layers) are left out:
  their time is their body's ops', counted as those."""
  instructions, computations = hlo_instructions(hlo_text)
  control = {k for k in per_op
             if k in instructions and instructions[k].opcode in CONTROL_FLOW}
  ops = {k: v for k, v in per_op.items() if k not in control}
  total = sum(ops.values()) or 1e-9
  parts, towers, kinds = collections.Counter(), collections.Counter(), collections.Counter()
  kind_of = {}
  for name, ms in ops.items():
    ins = instructions.get(name)
    tower, part, direction = categorise(ins.op_name if ins else "")
    parts[(tower, part, direction)] += ms
    towers[tower] += ms
    kind_of[name] = op_kind(name, instructions, computations)
    kinds[kind_of[name]] += ms

  def share(ms):
    return ms / total

  by_part = [{"tower": t, "part": p or "-", "pass": d or "-", "ms": ms, "share": share(ms)}
             for (t, p, d), ms in sorted(parts.items(), key=lambda kv: (-towers[kv[0][0]], -kv[1]))]
  return {
      "wall_ms": wall_ms, "summed_ms": sum(ops.values()), "ops": len(ops),
      "unattributed_ms": sum(ms for k, ms in ops.items() if k not in instructions),
      "control_flow_ms": sum(per_op[k] for k in control),
      "by_tower": [{"tower": t, "ms": ms, "share": share(ms)} for t, ms in towers.most_common()],
      "by_part": by_part,
      "by_kind": [{"kind": k, "ms": ms, "share": share(ms)} for k, ms in kinds.most_common()],
      "top": [{"op": k, "ms": ms, "kind": kind_of[k],
               "op_name": instructions[k].op_name if k in instructions else "?"}
              for k, ms in collections.Counter(ops).most_common(40)]}


def trace_step(step, state, batch, steps: int, trace_dir: str = ""):
  """(wall ms per step untraced, {op: ms per step} traced, where the ops were found, the state):
  `steps` steps of a compiled, warmed-up step, timed, then `steps` more under jax.profiler."""
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  wall_ms = (time.perf_counter() - t0) / steps * 1e3
  trace_dir = trace_dir or tempfile.mkdtemp(prefix="step_profile_")
  jax.profiler.start_trace(trace_dir)
  for _ in range(steps):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  jax.profiler.stop_trace()
  files = glob.glob(os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz"))
  if len(files) != 1:
    raise RuntimeError(f"expected one *.trace.json.gz under {trace_dir}, found "
                       f"{glob.glob(os.path.join(trace_dir, '**'), recursive=True)}")
  with gzip.open(files[0]) as f:
    events = json.load(f)["traceEvents"]
  module = re.match(r"HloModule ([\w.\-]+)", step.as_text())
  per_op, where = device_op_times(events, steps, module.group(1) if module else "")
  return wall_ms, per_op, where, state


def profile(config, steps: int):
  step, state, batch = compiled_step(config)
  wall_ms, per_op, where, _ = trace_step(step, state, batch, steps)
  return wall_ms, per_op, where, step.as_text(), compat.cost_analysis(step) or {}


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
  wall_ms, per_op, where, hlo, cost = profile(config, args.steps)
  summary = summarise(per_op, hlo, wall_ms)
  total = summary["summed_ms"]
  dev = jax.devices()[0]
  print(f"{args.config} {' '.join(args.set)}: batch {config.batch_size}, {jax.device_count()} x "
        f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}, {os.cpu_count()} cores")
  print(f"step wall time {wall_ms:.1f} ms ({config.batch_size / wall_ms * 1e3:.0f} examples/s); "
        f"summed op time {total:.1f} ms ({where}); XLA cost analysis: "
        f"{cost.get('flops', 0) / 1e9:.2f} GFLOP, {cost.get('bytes accessed', 0) / 2**30:.2f} GiB "
        "accessed per step\n")
  print("| tower | part | pass | ms/step | share |\n|---|---|---|---|---|")
  for tower in summary["by_tower"]:
    for row in summary["by_part"]:
      if row["tower"] == tower["tower"] and row["share"] >= 0.005:
        print(f"| {row['tower']} | {row['part']} | {row['pass']} | {row['ms']:.1f} | "
              f"{row['share']:.1%} |")
    print(f"| **{tower['tower']}** | all | all | **{tower['ms']:.1f}** | "
          f"**{tower['share']:.1%}** |")
  print("\n| kind of op | ms/step | share |\n|---|---|---|")
  for row in summary["by_kind"]:
    print(f"| {row['kind']} | {row['ms']:.1f} | {row['share']:.1%} |")
  print(f"\nThe {args.top} longest ops:\n| op | ms/step | kind | what (op_name) |\n"
        "|---|---|---|---|")
  for row in summary["top"][:args.top]:
    print(f"| {row['op']} | {row['ms']:.2f} | {row['kind']} | {row['op_name'][:110]} |")


if __name__ == "__main__":
  main()
