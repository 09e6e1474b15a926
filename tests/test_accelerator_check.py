"""benchmarks/accelerator_check.py in its tiny CPU mode where TensorFlow cannot be imported (as on a
GPU or TPU machine with only JAX installed): every part and every kind of row runs, open_clip's
step through the .venv-torch Python (requirements-torch.txt), and the demo's metrics are
TensorBoard event files written without TensorFlow, read back by tensorboard's reader. (With
TensorFlow importable the check trains through CLU's writer, the writer of every other training
test.) Without .venv-torch the open_clip part must say why it was skipped, except in CI (.ci/run
sets RANKCLIP_JAX_CI=1), where a missing one fails the test: CI does not fail on skips."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.cli_runs import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PYTHON = os.environ.get("RANKCLIP_TORCH_PYTHON", os.path.join(REPO, ".venv-torch", "bin",
                                                                    "python"))
PARTS = ["open_clip", "attention", "loss_strategies", "ours", "profile", "switches", "demo",
         "more_rows", "loss_at_scale"]


def _run(out, *extra, env_extra=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=xla_flags(2), **(env_extra or {}))
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_check", "--tiny", "--out",
                         str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)
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


def _per_example_flops(row):
  return row["tflops"] / row["examples_per_s"]


def test_tiny_check_without_tensorflow(tmp_path, no_tensorflow):
  have_torch = os.path.exists(TORCH_PYTHON)
  if not have_torch and os.environ.get("RANKCLIP_JAX_CI"):
    pytest.fail(f"torch/open_clip not installed at {TORCH_PYTHON}; make it with: python3 -m venv "
                ".venv-torch && .venv-torch/bin/pip install -r requirements-torch.txt")
  pythonpath = os.pathsep.join([no_tensorflow, REPO, os.environ.get("PYTHONPATH", "")])
  report, md, _ = _run(tmp_path / "no_tf", *(["--open_clip_python", TORCH_PYTHON] if have_torch
                                             else []), env_extra={"PYTHONPATH": pythonpath})
  assert report["environment"]["metric_writer"] == "tensorboard"
  assert report["order"] == PARTS
  parts = report["parts"]
  assert {k: v["status"] for k, v in parts.items()} == {
      k: ("ok" if have_torch or k != "open_clip" else "skipped") for k in PARTS}
  env = report["environment"]
  assert env["platform"] == "cpu" and env["platform_defaults"]["attention"] == "einsum"

  # 1. open_clip's step, eager and through torch.compile, before JAX's backend started.
  oc = parts["open_clip"]
  assert oc["jax_backend_started_before"] is False
  if have_torch:
    assert oc["environment"]["device"] == "cpu" and oc["environment"]["open_clip"] == "3.3.0"
    assert [(r["framework"], r["model"], r["batch"]) for r in oc["rows"]] == [
        ("open_clip eager", "micro", 8), ("open_clip torch.compile (eager backend)", "micro", 8)]
    for r in oc["rows"]:
      assert r["examples_per_s"] == pytest.approx(8 / r["ms_per_step"] * 1e3, rel=1e-6)
      assert r["warmup_s"] > 0 and 0 < r["loss"] < 10  # ClipLoss of random features: a few nats
  else:
    assert "torch and open_clip not importable" in oc["skipped_because"] and not oc["rows"]

  # 2. The attention implementations agree (cudnn: not on a CPU); the loss strategies agree.
  rows = parts["attention"]["rows"]
  ran = [r for r in rows if "ok" in r]
  assert {(r["attention"], r["dtype"], r["causal"], r["query"]) for r in ran} == {
      (a, d, c, q) for a in ("einsum", "xla") for d in ("float32", "bfloat16")
      for c in (False, True) for q in ("every token", "one pooled")}
  assert all(r["ok"] for r in ran)
  assert all(r["grad_rel_diff"] < 1e-4 for r in ran if r["dtype"] == "float32")
  assert all(1e-4 < r["value_rel_diff"] < 0.05 for r in ran if r["dtype"] == "bfloat16")
  assert [(r["attention"], "GPU only" in r["not_run"]) for r in rows if "not_run" in r] == [
      ("cudnn", True), ("cudnn", True)]
  rows = parts["loss_strategies"]["rows"]
  assert [r["strategy"] for r in rows] == ["plain", "chunked", "sharded", "sharded+chunked"]
  assert all(r["grad_rel_diff"] < 1e-4 for r in rows) and parts["loss_strategies"]["devices"] == 2

  # 3. Ours with the config defaults, RankCLIP (the baseline) then CLIP, each over open_clip's.
  ours = parts["ours"]["rows"]
  assert [(r["model"], r["objective"], r["layers"], r["remat"], r["attention"]) for r in ours] == [
      ("micro", "rankclip", "per layer", "off", "einsum"),
      ("micro", "clip", "per layer", "off", "einsum")]
  assert all(r["examples_per_s"] > 0 and r["tflops"] > 0 and "mfu" not in r for r in ours)
  assert _per_example_flops(ours[0]) > _per_example_flops(ours[1])  # the ranking terms
  if have_torch:
    eager, compiled = (r["examples_per_s"] for r in oc["rows"])
    for r in ours:
      assert r["over_open_clip"] == pytest.approx(r["examples_per_s"] / eager)
      assert r["over_open_clip_compiled"] == pytest.approx(r["examples_per_s"] / compiled)
  base = ours[0]

  # 4. The baseline's trace, by kind of op and by tower, part and pass.
  prof = parts["profile"]
  assert (prof["model"], prof["batch"], prof["objective"]) == ("micro", 8, "rankclip")
  assert prof["ops_from"] == "host threads (CPU)" and prof["wall_ms"] > 0
  kinds = {r["kind"]: r["ms"] for r in prof["by_kind"]}
  assert {"matrix products", "attention", "norms and elementwise", "optimizer", "loss",
          "copies"} <= set(kinds) and all(ms > 0 for ms in kinds.values())
  assert sum(kinds.values()) == pytest.approx(prof["summed_ms"])
  assert sum(r["ms"] for r in prof["by_part"]) == pytest.approx(prof["summed_ms"])
  assert {"image", "text", "optimizer", "loss"} <= {r["tower"] for r in prof["by_part"]}
  assert {("image", "attention", "backward"), ("text", "MLP", "forward")} <= {
      (r["tower"], r["part"], r["pass"]) for r in prof["by_part"]}

  # 5. One row per switch value, each against the baseline; a verdict per switch by the rule.
  sw = parts["switches"]
  again = sw["baseline"]  # the baseline's compiled step timed again before the switch rows
  assert again["ms_per_step_first"] == base["ms_per_step"] and again["ms_per_step"] > 0
  assert again["examples_per_s"] == pytest.approx(8 / again["ms_per_step"] * 1e3)
  rows = sw["rows"]
  policies = ["dots_with_no_batch_dims_saveable"]  # TINY's one
  assert [(r["switch"], r["value"]) for r in rows] == (
      [("attention", "xla"), ("attention", "cudnn"), ("recompute_elementwise", False),
       ("last_block_pooled_only", False), ("layers", "scanned")]
      + [("remat", p) for p in policies] + [("batch", 16), ("batch", 32)])
  timed = {(r["switch"], r["value"]): r for r in rows if "ms_per_step" in r}
  assert len(timed) == 7 and "GPU only" in rows[1]["not_run"]
  for (switch, value), r in timed.items():
    assert r["examples_per_s"] > 0 and r["time_over_baseline"] > 0 and r["temp_mib"] > 0, r
    assert r["time_over_baseline"] == pytest.approx(
        r["ms_per_step"] / r["batch"] / (again["ms_per_step"] / base["batch"]))
  assert timed[("attention", "xla")]["attention"] == "xla"
  assert [timed[("remat", p)]["remat"] for p in policies] == policies
  assert timed[("layers", "scanned")]["layers"] == "scanned"
  assert [timed[("batch", b)]["batch"] for b in (16, 32)] == [16, 32]
  # Model FLOPs: every token of the last blocks computed without the pooled-only last block (as in
  # the scanned stack); the same with any remat, recompute and attention; a step's work is the
  # examples' plus the optimizer's (the same at any batch): linear in the batch.
  pooled_off = _per_example_flops(timed[("last_block_pooled_only", False)])
  assert pooled_off > _per_example_flops(base)
  assert _per_example_flops(timed[("layers", "scanned")]) == pytest.approx(pooled_off)
  for key in [("attention", "xla"), ("recompute_elementwise", False)] + [("remat", p)
                                                                        for p in policies]:
    assert _per_example_flops(timed[key]) == pytest.approx(_per_example_flops(base), rel=1e-3)
  step = {b: _per_example_flops(r) * b for b, r in [(8, base), (16, timed[("batch", 16)]),
                                                    (32, timed[("batch", 32)])]}
  assert step[32] - step[16] == pytest.approx(2 * (step[16] - step[8]), rel=0.02)
  verdicts = {v["switch"]: v for v in sw["verdicts"]}
  assert list(verdicts) == ["attention", "recompute_elementwise", "last_block_pooled_only",
                            "layers", "remat", "batch"]
  assert verdicts["attention"]["default"] == "einsum" and "cudnn" in verdicts["attention"]["line"]
  assert verdicts["layers"]["default"] == "per layer" and verdicts["batch"]["default"] == 8
  for v in verdicts.values():
    assert v["verdict"] == ("change" if v["best_over_default"] <= 0.97 else "keep"), v
    assert v["line"].startswith(v["switch"])

  # 6. The demo trained, its loss falling, in files TensorBoard reads; patch dropout; the loss.
  demo = parts["demo"]
  assert demo["metric_writer"] == "tensorboard" and "TensorFlow is blocked" in (
      demo["metric_writer_because"])
  from tests import cli_runs  # pylint: disable=g-import-not-at-top
  losses = cli_runs.logged(demo["workdir"])  # tensorboard's EventAccumulator
  assert sorted(losses) == list(range(1, 31))
  assert demo["mean_last"] < demo["mean_first"]
  assert cli_runs.logged(demo["workdir"], "zs_shape/top1").keys() == {30}
  assert os.path.exists(os.path.join(demo["workdir"], "results.json"))
  (dropped,) = parts["more_rows"]["rows"]
  assert dropped["patch_dropout"] == 0.5 and dropped["over_no_dropout"] > 0
  assert _per_example_flops(dropped) < _per_example_flops(base)  # the dropped patches
  scale = parts["loss_at_scale"]
  at_64 = {(r["loss"], r["strategy"]) for r in scale["rows"] if r["n"] == 64}
  assert at_64 == {("clip", "plain"), ("clip", "chunked"), ("rankclip", "plain"),
                   ("rankclip", "chunked"), ("rax_terms", "rax listmle (4 ranking terms)")}
  assert all(r["ms"] > 0 and r["peak_mib"] >= r["scratch_mib"] for r in scale["rows"])
  assert any(r.get("rax_speedup", 0) > 0 for r in scale["rows"])
  assert scale["largest_n"] == {"plain": {"n": 128, "next": 256, "because": "cap"},
                                "chunked": {"n": 128, "next": 256, "because": "cap"}}

  # The Markdown report shows each part, the profile's tables and the verdicts.
  for heading in ("## 1. open_clip on this device", "## 2. Correctness", "## 3. Ours against "
                  "open_clip", "## 4. Where the step's time goes", "## 5. The switches",
                  "### Verdicts", "## 6. As the budget allows", "By kind of op:"):
    assert heading in md, heading
  assert "largest N that fits, RankCLIP chunked: 128" in md
  assert len(re.findall(r"Status: \*\*ok\*\*", md)) == 9 - (not have_torch)
  assert md.count("- **keep**") + md.count("- **change**") == 6


def test_switch_rows_and_verdicts_on_a_gpu():
  """Part 5's plan and verdicts where the platform is a GPU (the rows of a run made up: what a GPU
  run would report), and the batch that would not fit computed with the fastest remat policy."""
  from benchmarks import accelerator_check as ac  # pylint: disable=g-import-not-at-top
  from rankclip_jax.models import platform_defaults  # pylint: disable=g-import-not-at-top
  from rankclip_jax.models.transformer import REMAT_POLICIES  # pylint: disable=g-import-not-at-top
  assert ac.FULL.remat_policies == tuple(REMAT_POLICIES)
  bench = ac.StepRows(ac.FULL)
  bench.platform, bench.device_bytes = "gpu", 80 * 2**30
  gib = 1024.0
  base = {"model": "B/16", "batch": 256, "objective": "rankclip", "layers": "per layer",
          "remat": "off", "attention": "cudnn", "recompute_elementwise": True,
          "last_block_pooled_only": True, "ms_per_step": 160.0, "temp_mib": 46 * gib}
  base["ms_per_example"] = 160.0 / 256
  assert [(w, v) for w, v, _ in ac.switch_plan(ac.FULL, base)] == [
      ("attention", "einsum"), ("attention", "xla"), ("recompute_elementwise", False),
      ("last_block_pooled_only", False), ("layers", "scanned"), ("remat", "nothing_saveable"),
      ("remat", "dots_with_no_batch_dims_saveable"), ("remat", "dots_saveable"), ("batch", 512),
      ("batch", 1024)]

  def row(switch, value, ms, batch=256, temp=46 * gib, **extra):
    r = dict(switch=switch, value=value, ms_per_step=ms, ms_per_example=ms / batch, batch=batch,
             temp_mib=temp, remat="off", layers="per layer", **extra)
    ac.relative(r, base)
    return r
  rows = [row("attention", "einsum", 190.0), row("attention", "xla", 154.0),  # 3.75% shorter
          row("recompute_elementwise", False, 157.0),  # 1.9% shorter: within the noise
          row("last_block_pooled_only", False, 166.0), row("layers", "scanned", 170.0),
          row("remat", "nothing_saveable", 215.0, temp=9 * gib),
          row("remat", "dots_saveable", 190.0, temp=30 * gib)]
  # Batch 512 would need 92 GiB of temp on an 80 GiB device: the fastest remat policy measured.
  assert ac._remat_for(512, base, rows, bench.device_bytes) == "dots_saveable"
  assert ac._remat_for(512, base, rows, 200 * 2**30) == ""
  rows.append(row("batch", 512, 370.0, batch=512, temp=60 * gib,
                  note="with remat dots_saveable: the defaults do not fit"))
  verdicts = {v["switch"]: v for v in ac.verdicts(rows, base, bench, ac.FULL)}
  assert [(k, v["verdict"], v.get("best")) for k, v in verdicts.items()] == [
      ("attention", "change", "xla"), ("recompute_elementwise", "keep", False),
      ("last_block_pooled_only", "keep", False), ("layers", "keep", "scanned"),
      ("remat", "keep", "dots_saveable"), ("batch", "keep", 512)]
  attention = verdicts["attention"]
  assert (attention["default"], attention["default_from"]) == ("cudnn", "platform default (gpu)")
  assert attention["line"].startswith("attention: change cudnn -> xla on gpu")
  assert attention["measured_before"] == (platform_defaults.MEASURED["attention"]["gpu"]
                                          or "not measured on this platform before")
  assert "dots_saveable (XLA temp memory 0.65x the baseline's)" in verdicts["remat"]["line"]
  assert "ran with remat dots_saveable" in verdicts["batch"]["line"]


def test_the_wheel_command_pins_what_requirements_pin():
  """The docstring's download command names each wheel at the version requirements.txt (and, for
  open_clip, requirements-torch.txt) pins."""
  from benchmarks import accelerator_check  # pylint: disable=g-import-not-at-top
  command = next(l for l in accelerator_check.__doc__.splitlines() if "pip download" in l)
  wheels = dict(re.findall(r"([a-z][a-z0-9-]*)==([0-9.]+)", command))
  assert {"grain", "ml-collections", "instant-clip-tokenizer", "ftfy", "rax", "open-clip-torch",
          "tqdm"} <= set(wheels)
  pins = {}
  for name in ("requirements.txt", "requirements-torch.txt"):
    pins.update(re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)", open(os.path.join(REPO, name)).read(),
                           flags=re.M))
  pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
  assert pins["open-clip-torch"] == wheels["open-clip-torch"]
  assert {k: v for k, v in wheels.items() if k in pins and pins[k] != v} == {}
