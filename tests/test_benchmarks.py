"""The benchmark scripts run in CI-sized settings and print every row they promise."""

import os
import subprocess
import sys

from tests.cli_runs import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loss_bench_runs_on_cpu_with_every_strategy():
  env = dict(os.environ, XLA_FLAGS=xla_flags(4), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.loss_bench", "--sizes", "64", "--dim", "16",
       "--chunk", "16", "--repeats", "1", "--model_step", "micro", "--model_dtype", "float32"],
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
                                     "model.size=micro"])
  assert (config.model.patch_dropout, config.model.remat, config.model.size) == (0.5, True, "micro")


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
