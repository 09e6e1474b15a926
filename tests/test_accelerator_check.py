"""benchmarks/accelerator_check.py in its tiny CPU mode where TensorFlow cannot be imported (as on a
GPU or TPU machine with only JAX installed): every part runs and the demo's metrics are TensorBoard
event files written without TensorFlow, read back by tensorboard's reader. (With TensorFlow
importable the check trains through CLU's writer, the writer of every other training test.)"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.cli_runs import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(out, *extra, env_extra=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=xla_flags(2), **(env_extra or {}))
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_check", "--tiny", "--out",
                         str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(f"{out}.json") as f:
    return json.load(f), open(f"{out}.md").read(), proc


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory):
  """A folder to put first on PYTHONPATH whose `tensorflow` raises ImportError on import."""
  folder = tmp_path_factory.mktemp("no_tensorflow")
  (folder / "tensorflow").mkdir()
  (folder / "tensorflow" / "__init__.py").write_text(
      "raise ImportError('TensorFlow is blocked by tests/test_accelerator_check.py')\n")
  return str(folder)


def test_tiny_check_without_tensorflow(tmp_path, no_tensorflow):
  pythonpath = os.pathsep.join([no_tensorflow, REPO, os.environ.get("PYTHONPATH", "")])
  report, md, _ = _run(tmp_path / "no_tf", env_extra={"PYTHONPATH": pythonpath})
  assert report["environment"]["metric_writer"] == "tensorboard"
  parts = report["parts"]
  assert {k: v["status"] for k, v in parts.items()} == {
      "loss_strategies": "ok", "demo_training": "ok", "loss_at_scale": "ok",
      "train_throughput": "ok"}

  # 1. The strategies agree; the demo trained, its loss falling, in files TensorBoard reads.
  rows = parts["loss_strategies"]["rows"]
  assert [r["strategy"] for r in rows] == ["plain", "chunked", "sharded", "sharded+chunked"]
  assert all(r["grad_rel_diff"] < 1e-4 for r in rows) and parts["loss_strategies"]["devices"] == 2
  demo = parts["demo_training"]
  assert demo["metric_writer"] == "tensorboard" and "TensorFlow is blocked" in (
      demo["metric_writer_because"])
  from tests import cli_runs  # pylint: disable=g-import-not-at-top
  losses = cli_runs.logged(demo["workdir"])  # tensorboard's EventAccumulator
  assert sorted(losses) == list(range(1, 31))
  assert demo["mean_last"] < demo["mean_first"]
  assert cli_runs.logged(demo["workdir"], "zs_shape/top1").keys() == {30}
  assert os.path.exists(os.path.join(demo["workdir"], "results.json"))

  # 2. Every variant at N=64, rax's terms, ours' speedup over it, the largest N searched.
  scale = parts["loss_at_scale"]
  at_64 = {(r["loss"], r["strategy"]) for r in scale["rows"] if r["n"] == 64}
  assert at_64 == {("clip", "plain"), ("clip", "chunked"), ("rankclip", "plain"),
                   ("rankclip", "chunked"), ("rax_terms", "rax listmle (4 ranking terms)")}
  assert all(r["ms"] > 0 and r["peak_mib"] >= r["scratch_mib"] for r in scale["rows"])
  assert any(r.get("rax_speedup", 0) > 0 for r in scale["rows"])
  assert scale["largest_n"] == {"plain": {"n": 128, "next": 256, "because": "cap"},
                                "chunked": {"n": 128, "next": 256, "because": "cap"}}

  # 3. A CLIP and a RankCLIP step, their ratio; RankCLIP with half the patches dropped; RankCLIP
  # with per-layer blocks, the model's defaults and last_block_pooled_only off.
  steps = parts["train_throughput"]["rows"]
  assert [(r["objective"], r["patch_dropout"], r["layers"], r["switched_off"]) for r in steps] == [
      ("clip", 0.0, "scanned", ""), ("rankclip", 0.0, "scanned", ""),
      ("rankclip", 0.5, "scanned", ""), ("rankclip", 0.0, "per layer", ""),
      ("rankclip", 0.0, "per layer", "last_block_pooled_only")]
  assert all(r["examples_per_s"] > 0 and r["tflops"] > 0 for r in steps)
  assert steps[1]["rankclip_over_clip"] > 0 and "rankclip_over_clip" not in steps[2]
  assert steps[2]["over_no_dropout"] > 0
  flops_per_example = [r["tflops"] / r["examples_per_s"] for r in steps]
  assert flops_per_example[2] < flops_per_example[1]  # the dropped patches are not computed
  assert flops_per_example[4] > flops_per_example[3]  # every token of the last blocks computed
  assert steps[4]["over_defaults"] > 0 and "over_defaults" not in steps[3]
  assert "rankclip_over_clip" not in steps[3]

  # The Markdown report shows each part.
  for heading in ("## 1. Correctness", "## 2. The loss at scale", "## 3. Training throughput"):
    assert heading in md
  assert "largest N that fits, RankCLIP chunked: 128" in md
  assert len(re.findall(r"Status: \*\*ok\*\*", md)) == 4


def test_the_wheel_command_pins_what_requirements_pin():
  """The docstring's download command names each wheel at the version requirements.txt pins."""
  from benchmarks import accelerator_check  # pylint: disable=g-import-not-at-top
  command = next(l for l in accelerator_check.__doc__.splitlines() if "pip download" in l)
  wheels = dict(re.findall(r"([a-z][a-z0-9-]*)==([0-9.]+)", command))
  assert {"grain", "ml-collections", "instant-clip-tokenizer", "ftfy", "rax"} <= set(wheels)
  pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)", open(
      os.path.join(REPO, "requirements.txt")).read(), flags=re.M))
  pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
  assert {k: v for k, v in wheels.items() if k in pins and pins[k] != v} == {}
