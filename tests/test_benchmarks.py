"""The benchmark scripts run in CI-sized settings and print every row they promise."""

import os
import subprocess
import sys

import pytest

from tests.cli_runs import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loss_bench_runs_on_cpu_with_every_strategy():
  env = dict(os.environ, XLA_FLAGS=xla_flags(4), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.loss_bench", "--sizes", "64", "--dim", "16",
       "--chunk", "16", "--repeats", "1", "--model_step", "micro", "--model_dtype", "float32",
       "--model_image_size", "32"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  step_rows = [line for line in lines if "micro training step" in line]
  assert len(step_rows) == 1 and all("% of the step" in r for r in step_rows), proc.stdout
  rows = [line for line in lines if line.startswith("| 64 ") and line not in step_rows]
  names = {"clip", "rankclip plain", "rankclip chunked", "clip sharded", "rankclip sharded",
           "rankclip sharded+chunked", "rax listmle (4 terms)"}
  got = {r.split("|")[2].strip() for r in rows}
  assert got == names, (got, proc.stdout)
  for r in rows:  # a time and XLA's scratch size for every row (no timing is asserted)
    cells = [c.strip() for c in r.split("|")]
    assert float(cells[3]) > 0 and float(cells[4]) >= 0, r


def test_loss_bench_measures_compiled_scratch_and_time():
  """The compile step --compile_only reports on its own (abstract inputs, nothing run) is the one
  that is run and timed."""
  from benchmarks import loss_bench
  for chunk in (None, 16):
    loss_fn = loss_bench.make_loss("rankclip", chunk=chunk, mesh=None)
    seconds, scratch = loss_bench.measure(loss_fn, 64, 16, repeats=1)
    assert seconds > 0 and scratch > 0
    assert loss_bench.compile_step(loss_fn, 64, 16)[1] == scratch


def test_input_bench_runs_on_tar_and_csv_with_and_without_workers(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.input_bench", "--num", "48", "--workers", "0", "1",
       "--batch", "8", "--batches", "2", "--image_size", "32", "--dir", str(tmp_path)],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| ")
          and not line.startswith("| source")]
  assert {(r[1].strip(), r[2].strip()) for r in rows} == {
      (s, w) for s in ("webdataset tar", "csv + jpeg files") for w in ("0", "1")}, proc.stdout
  assert all(float(r[3]) > 0 for r in rows)
  assert "tar index: 1 shards, 96 members" in proc.stdout


def test_train_bench_runs_rankclip_and_clip_steps():
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_bench", "--sizes", "micro", "--batches", "8",
       "--image_size", "32", "--context", "16", "--steps", "1", "--dtype", "float32",
       "--peak_tflops", "1", "--scan", "--remat", "dots_with_no_batch_dims_saveable"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags()), capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| micro ")]
  assert [r[3].strip() for r in rows] == ["clip", "rankclip"], proc.stdout
  for r in rows:
    assert float(r[4]) > 0 and float(r[7]) > 0 and r[8].strip().endswith("%")
  assert float(rows[1][9]) > 0  # the RankCLIP / CLIP step-time ratio
  assert "scanned layers True" in proc.stdout and float(rows[0][10]) > 0  # compile time
  assert "remat dots_with_no_batch_dims_saveable" in proc.stdout and float(rows[0][11]) > 0


def test_step_profile_attributes_ops_to_tower_part_and_pass():
  """benchmarks/step_profile.py: an XLA op is attributed through its instruction's op_name."""
  from benchmarks import step_profile  # pylint: disable=g-import-not-at-top
  hlo = ('  %fusion.7 = f32[64,37,512]{2,1,0} fusion(%p), kind=kLoop, metadata={op_name='
         '"jit(train_step)/jvp(TwoTowers)/TwoTowers.encode_image/image/encoder/block_1/mlp/erf"}\n'
         '  ROOT %dot.3 = f32[8,8]{1,0} dot(%a, %b), metadata={op_name="jit(train_step)/'
         'transpose(jvp(TwoTowers))/TwoTowers.encode_text/text/encoder/block_0/attn/query/'
         'dot_general"}\n')
  names = step_profile.op_names(hlo)
  assert step_profile.categorise(names["fusion.7"]) == ("image", "MLP", "forward")
  assert step_profile.categorise(names["dot.3"]) == ("text", "attention", "backward")
  assert step_profile.categorise("jit(train_step)/cond/branch_1_fun/add")[0] == "optimizer"
  assert step_profile.categorise(
      "jit(train_step)/jvp()/jit(plackett_luce_nll_rows)/sort")[0] == "loss"
  config = step_profile.load_config("configs/rankclip_synthetic.py",
                                    ["model.patch_dropout=0.5", "model.remat=true",
                                     "model.size=micro", "model.recompute_elementwise=false"])
  assert (config.model.patch_dropout, config.model.remat, config.model.size) == (0.5, True, "micro")
  assert config.model.recompute_elementwise is False  # a placeholder field (None: by platform)


# A compiled module as XLA's GPU backend writes it (Compiled.as_text()), cut down to one op of each
# kind: a GEMM fusion (Triton), cuDNN's fused attention and a cuBLAS GEMM (custom calls), a
# LayerNorm fusion, a copy, an optimizer and a loss fusion, and a while loop.
_IMAGE = "jvp(TwoTowers)/TwoTowers.encode_image/image/encoder/block_0"
_TEXT = "TwoTowers.encode_text/text/encoder/block_0/attn"


def _meta(path):
  return f', metadata={{op_name="jit(train_step)/{path}"}}'


_GPU_HLO = "\n".join([
    "HloModule jit_train_step, entry_computation_layout={(bf16[8,64]{1,0})->bf16[8,64]{1,0}}",
    "",
    "%fused_computation.1 (param_0: bf16[8,64], param_1: bf16[64,64]) -> bf16[8,64] {",
    "  %param_0 = bf16[8,64]{1,0} parameter(0)",
    "  %param_1 = bf16[64,64]{1,0} parameter(1)",
    "  ROOT %dot.1 = bf16[8,64]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, "
    "rhs_contracting_dims={0}" + _meta(_IMAGE + "/mlp/fc1/dot_general"),
    "}",
    "",
    "%fused_computation.2 (param_0.1: f32[8,64]) -> f32[8] {",
    "  %param_0.1 = f32[8,64]{1,0} parameter(0)",
    "  %constant.1 = f32[] constant(0)",
    "  ROOT %reduce.1 = f32[8]{0} reduce(%param_0.1, %constant.1), dimensions={1}, to_apply=%add"
    + _meta(_IMAGE + "/ln_1/reduce_sum"),
    "}",
    "",
    "ENTRY %main.9 (p0: bf16[8,64], p1: bf16[64,64]) -> bf16[8,64] {",
    "  %p0 = bf16[8,64]{1,0} parameter(0)",
    "  %p1 = bf16[64,64]{1,0} parameter(1)",
    "  %gemm_fusion.1 = bf16[8,64]{1,0} fusion(%p0, %p1), kind=kCustom, "
    "calls=%fused_computation.1" + _meta(_IMAGE + "/mlp/fc1/dot_general")
    + ', backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}',
    "  %custom-call.3 = (bf16[2,16,4,64]{3,2,1,0}, /*index=1*/u8[0]{0}) "
    'custom-call(%p0, %p0, %p0), custom_call_target="__cudnn$fmhaSoftmax"'
    + _meta(f"jvp(TwoTowers)/{_TEXT}/dot_product_attention/jit(_dot_product_attention)/"
            "custom_call"),
    "  %cublas-gemm.2 = (bf16[8,192]{1,0}, s8[4]{0}) custom-call(%p0, %p1), "
    'custom_call_target="__cublas$gemm"'
    + _meta(f"transpose(jvp(TwoTowers))/{_TEXT}/btw,wshd->sbhtd/dot_general"),
    "  %loop_fusion.4 = f32[8]{0} fusion(%p0), kind=kLoop, calls=%fused_computation.2"
    + _meta(_IMAGE + "/ln_1/reduce_sum"),
    "  %copy.5 = bf16[64,64]{0,1} copy(%p1)",
    "  %optimizer_fusion = f32[64,64]{1,0} fusion(%p1), kind=kLoop, calls=%fused_computation.2"
    + _meta("optimizer/add"),
    "  %loss_fusion = f32[8]{0} fusion(%p0), kind=kLoop, calls=%fused_computation.2"
    + _meta("jvp()/jit(plackett_luce_nll_rows)/sort"),
    "  %while.1 = (s32[], bf16[8,64]{1,0}) while(%tuple.0), condition=%cond, body=%body",
    "  ROOT %tuple.2 = (bf16[8,64]{1,0}) tuple(%gemm_fusion.1)",
    "}", ""])


def _gpu_trace(steps=2, streams=True):
  """A jax.profiler trace of `steps` steps as its trace.json.gz holds a GPU's: host events (which
  name HLO ops too: the launches), the device's kernels on a stream line, the converter's derived
  XLA Ops line repeating them, and a kernel of another module."""
  events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "M", "pid": 2, "name": "process_name",
             "args": {"name": "/device:GPU:0 NVIDIA H100 80GB HBM3"}},
            {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "python"}},
            {"ph": "M", "pid": 2, "tid": 11, "name": "thread_name", "args": {"name": "XLA Ops"}},
            {"ph": "M", "pid": 2, "tid": 12, "name": "thread_name",
             "args": {"name": "XLA Modules"}}]
  if streams:
    events.append({"ph": "M", "pid": 2, "tid": 10, "name": "thread_name",
                   "args": {"name": "Stream #13(Compute)"}})
  kernels = [("sm90_xmma_gemm_bf16bf16", "gemm_fusion.1", 400),
             ("cudnn_fmha_fprop", "custom-call.3", 300),
             ("cudnn_fmha_reduce", "custom-call.3", 100), ("cutlass_gemm", "cublas-gemm.2", 200),
             ("loop_fusion_4", "loop_fusion.4", 50), ("copy_5", "copy.5", 25),
             ("MemcpyD2D", None, 10), ("optimizer_fusion", "optimizer_fusion", 80),
             ("loss_fusion", "loss_fusion", 40), ("while_body_kernel", "while.1", 999)]
  ts = 0
  for _ in range(steps):
    events.append({"ph": "X", "pid": 1, "tid": 1, "ts": ts, "dur": 5000,
                   "name": "PjitFunction(jit(train_step))"})
    for name, op, dur in kernels:
      args = {"hlo_module": "jit_train_step"} | ({"hlo_op": op} if op else {})
      events.append({"ph": "X", "pid": 1, "tid": 1, "ts": ts, "dur": 7, "name": f"launch {name}",
                     "args": dict(args)})  # host side: never counted
      if streams:
        events.append({"ph": "X", "pid": 2, "tid": 10, "ts": ts, "dur": dur, "name": name,
                       "args": args})
      if op:
        events.append({"ph": "X", "pid": 2, "tid": 11, "ts": ts, "dur": dur, "name": op,
                       "args": {"hlo_module": "jit_train_step", "hlo_op": op}})
      ts += dur
    events.append({"ph": "X", "pid": 2, "tid": 10 if streams else 11, "ts": ts, "dur": 1000,
                   "name": "fusion.99", "args": {"hlo_module": "jit_other", "hlo_op": "fusion.99"}})
    events.append({"ph": "X", "pid": 2, "tid": 12, "ts": 0, "dur": ts, "name": "jit_train_step"})
  return events


def test_step_profile_reads_a_gpu_trace_by_kernel_and_kind():
  """On a GPU the ops are the device's kernels (per HLO instruction, host events and the derived
  lines left out, other modules too), and each gets a kind from the compiled module."""
  from benchmarks import step_profile  # pylint: disable=g-import-not-at-top
  per_op, where = step_profile.device_op_times(_gpu_trace(), steps=2, module="jit_train_step")
  assert where == "device streams of /device:GPU:0 NVIDIA H100 80GB HBM3"
  expected = {"gemm_fusion.1": 0.4, "custom-call.3": 0.4, "cublas-gemm.2": 0.2,
              "loop_fusion.4": 0.05, "copy.5": 0.025, "MemcpyD2D": 0.01,
              "optimizer_fusion": 0.08, "loss_fusion": 0.04, "while.1": 0.999}
  assert dict(per_op) == pytest.approx(expected)
  # A trace without stream lines (a TPU's): its XLA Ops line holds the ops.
  per_op, where = step_profile.device_op_times(_gpu_trace(streams=False), 2, "jit_train_step")
  assert where.startswith("the device's XLA Ops line")
  assert per_op["custom-call.3"] == pytest.approx(0.4)
  assert "MemcpyD2D" not in per_op and "fusion.99" not in per_op

  instructions, computations = step_profile.hlo_instructions(_GPU_HLO)
  assert instructions["custom-call.3"].target == "__cudnn$fmhaSoftmax"
  assert instructions["custom-call.3"].opcode == "custom-call"  # after a tuple type
  assert instructions["gemm_fusion.1"].calls == ("fused_computation.1",)
  assert computations["main.9"][:3] == ["p0", "p1", "gemm_fusion.1"]
  kinds = {name: step_profile.op_kind(name, instructions, computations) for name in expected}
  assert kinds == {"gemm_fusion.1": "matrix products", "custom-call.3": "attention",
                   "cublas-gemm.2": "matrix products", "loop_fusion.4": "norms and elementwise",
                   "copy.5": "copies", "MemcpyD2D": "copies", "optimizer_fusion": "optimizer",
                   "loss_fusion": "loss", "while.1": "other"}
  summary = step_profile.summarise(per_op=dict(step_profile.device_op_times(
      _gpu_trace(), 2, "jit_train_step")[0]), hlo_text=_GPU_HLO, wall_ms=2.5)
  assert summary["control_flow_ms"] == pytest.approx(0.999)  # its body's kernels count instead
  assert summary["summed_ms"] == pytest.approx(1.205) and summary["unattributed_ms"] == 0.01
  assert {r["kind"]: r["ms"] for r in summary["by_kind"]} == pytest.approx({
      "matrix products": 0.6, "attention": 0.4, "optimizer": 0.08, "norms and elementwise": 0.05,
      "loss": 0.04, "copies": 0.035})
  parts = {(r["tower"], r["part"], r["pass"]): r["ms"] for r in summary["by_part"]}
  assert parts[("image", "MLP", "forward")] == pytest.approx(0.4)
  assert parts[("text", "attention", "forward")] == pytest.approx(0.4)
  assert parts[("text", "attention", "backward")] == pytest.approx(0.2)
  assert summary["top"][0]["op"] in ("gemm_fusion.1", "custom-call.3")


def test_step_profile_keeps_the_cpu_trace_reading():
  """Without a device process (a CPU trace) every host event but the runtime's own is an op."""
  from benchmarks import step_profile  # pylint: disable=g-import-not-at-top
  events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 3000, "name": "ThunkExecutor::Execute"},
            {"ph": "X", "pid": 1, "tid": 2, "ts": 0, "dur": 600, "name": "ynn_fusion.3",
             "args": {"hlo_op": "ynn_fusion.3"}},
            {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 100, "name": "$profiler.py:1 x"},
            {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 200, "name": "copy.2"}]
  per_op, where = step_profile.device_op_times(events, steps=2)
  assert dict(per_op) == pytest.approx({"ynn_fusion.3": 0.3, "copy.2": 0.1})
  assert where == "host threads (CPU)"


def test_stream_bench_compares_both_tar_readers_on_a_cached_corpus(tmp_path):
  """benchmarks/stream_bench.py: start-up, memory and throughput rows for both readers, measured
  at two corpus sizes and extrapolated; the corpus is real tar shards, found again on a rerun."""
  import argparse  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  from benchmarks import stream_bench  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.stream_bench", "--members", "400", "--shard_members",
       "100", "--batch", "8", "--batches", "2", "--mem_batches", "1", "--pause", "0", "--dir",
       str(tmp_path)],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "corpus: 400 members = 200 examples" in out and "in 4 shards of 100 members" in out, out
  assert "corpus generation: generated in" in out and "CPUs, Python" in out, out
  rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
          if line.startswith("| stream") or line.startswith("| random")]
  startup = [r for r in rows if len(r) == 7]
  memory = [r for r in rows if len(r) == 9]
  speed = [r for r in rows if len(r) == 6]
  for table in (startup, memory):
    measured = {(r[0].split()[0], r[1], r[2]) for r in table if r[-1] == "measured"}
    assert measured == {(k, s, m) for k in ("stream", "random") for s, m in (("4", "400"),
                                                                            ("1", "100"))}, out
    assert sum("extrapolated" in r[-1] and "100M" in r[2] for r in table) == 2, out
  assert all(float(r[5]) > 0 for r in startup if r[-1] == "measured"), out
  assert all(float(r[4]) >= float(r[3]) > 0 for r in memory if r[-1] == "measured"), out
  assert [(r[0].split()[0], r[1]) for r in speed] == [("stream", "0"), ("random", "0")], out
  assert all(float(r[2]) > 0 and float(r[4]) > 0 for r in speed) and float(speed[1][5]) > 0, out
  shard = tmp_path / "px40-400m-100s" / "00003.tar"
  with tarfile.open(shard) as tar:  # img2dataset's layout: <key>.jpg, <key>.txt
    names = tar.getnames()
  assert names[:2] == ["000000150.jpg", "000000150.txt"] and len(names) == 100
  args = argparse.Namespace(dir=str(tmp_path), members=400, shard_members=100, photo=False,
                            jpeg_px=40)
  assert stream_bench.ensure_corpus(args)["reused"]
  args.members = 402  # other parameters: another corpus
  assert not stream_bench.ensure_corpus(args)["reused"]
