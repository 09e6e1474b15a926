"""Sweeps (rankclip_jax/sweep.py, rankclip_jax/sweeps/): the grid and its run names, every run
checked before any starts, a real sweep of micro runs interrupted, failed and run again, the
interval arithmetic against scipy, the report on runs with known results, and the SLURM script and
commands for other schedulers."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from scipy import stats as scipy_stats

from rankclip_jax import cli
from rankclip_jax import sweeps
from rankclip_jax.sweeps import SweepError, chain, fixed, product, values, variants
from rankclip_jax.sweeps import build, devices, emit, grid, report, rundir, stats
from rankclip_jax.sweeps.plan import Plan, PlannedRun
from tests import cli_runs

REPO = cli_runs.REPO
CONFIG = os.path.join(REPO, "configs", "rankclip_synthetic.py")
# TensorFlow's and absl's C++ logging, written before Python runs any of our code.
NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|[IWE]0000 ")


def names(runs):
  return [r.name for r in grid.name_runs(runs)]


# The grid and its names.


def test_product_zip_and_chain_expand_in_order_with_short_readable_names():
  methods = variants({"clip": {"loss.cross_weight": 0.0}, "rank": {"loss.cross_weight": 1 / 16}})
  seeds = values("seed", range(2))
  assert names(product(methods, seeds)) == ["clip,seed=0", "clip,seed=1", "rank,seed=0",
                                            "rank,seed=1"]
  both = ("loss.cross_weight", "loss.inmodal_weight")
  zipped = sweeps.zip(values("loss.cross_weight", [1 / 64, 0.5]),
                      values("optim.learning_rate", [1e-3, 1e-5]))
  assert names(zipped) == ["cross_weight=0.015625,learning_rate=0.001",
                           "cross_weight=0.5,learning_rate=1e-05"]
  runs = grid.name_runs(chain(product(values(both, [1 / 32], name="w"), fixed({"seed": 3})),
                              values("loss.weight_schedule", ["constant"])))
  assert [r.name for r in runs] == ["w=0.03125", "weight_schedule=constant"]
  assert runs[0].overrides == {"loss.cross_weight": 1 / 32, "loss.inmodal_weight": 1 / 32,
                               "seed": 3}
  # Two swept fields ending alike keep as much of their paths as tells them apart.
  assert names(product(values("loss.weight", [1]), values("optim.weight", [2]))) == [
      "loss.weight=1,optim.weight=2"]
  # Stable: a run's name does not depend on the other runs, nor on building it twice.
  assert names(product(methods, seeds))[:2] == names(product(methods[:1], seeds))
  # Groups: the runs that differ only in their seed.
  assert [r.group for r in grid.name_runs(product(methods, seeds))] == ["clip", "clip", "rank",
                                                                        "rank"]
  assert [r.group for r in grid.name_runs(values("seed", [0, 1]))] == ["base", "base"]
  assert grid.format_value("a b/c") == "a_b_c" and grid.format_value(True) == "True"


@pytest.mark.parametrize("runs,facts", [
    (chain(values("seed", [0, 1]), values("seed", [1])), ["runs 2 and 3", "'seed=1'"]),
    (chain(product(fixed({"loss.cross_weight": 0.0}), values("seed", [0])),
           product(fixed({"loss.cross_weight": 0.5}), values("seed", [0]))),
     ["both named 'seed=0'", "name="]),
    (product(values("seed", [0]), fixed({"seed": 1})), ["field 'seed' is set to 0", "and to 1"]),
    (chain(product(fixed({"loss.cross_weight": 0.0}), values("seed", [0])),
           product(fixed({"loss.cross_weight": 0.5}), values("seed", [1]))),
     ["group 'base'", "differ in more than the seed"]),
])
def test_a_name_clash_or_a_field_set_twice_is_an_error(runs, facts):
  with pytest.raises(SweepError) as e:
    grid.name_runs(runs)
  for fact in facts:
    assert fact in str(e.value), (fact, str(e.value))


def test_zip_needs_equal_lengths_and_labels_name_folders():
  with pytest.raises(SweepError, match=r"\[2, 1\] runs"):
    sweeps.zip(values("seed", [0, 1]), values("loss.cross_weight", [0.5]))
  with pytest.raises(SweepError, match="letters, digits"):
    variants({"a/b": {}})


@pytest.mark.parametrize("make,facts", [
    (lambda: variants({"..": {}}), ["the label '..' cannot name a run's folder", "'.' or '..'"]),
    (lambda: variants({".": {}}), ["the label '.' cannot name a run's folder"]),
    (lambda: variants({"": {}}), ["the label ''", "letters, digits"]),
    (lambda: variants({".xla_cache": {}}), ["'.xla_cache' cannot name", "not starting with '.'"]),
    (lambda: values("seed", [0], name="../up"), ["name='../up'", "cannot name a run's folder"]),
    (lambda: grid.name_runs(values("data/x", [1])), ["run 1's name 'data/x=1' cannot name",
                                                     "letters, digits and '._+-'"]),
])
def test_a_label_that_is_not_a_plain_folder_name_is_refused(make, facts):
  """A run's folder is <sweep workdir>/<its name>: `.` or `..` would be the sweep's own folder or
  its parent, a '/' another folder, a leading '.' one of the sweep's hidden files."""
  with pytest.raises(SweepError) as e:
    make()
  for fact in facts:
    assert fact in str(e.value), (fact, str(e.value))


def test_a_plan_file_naming_a_run_outside_its_folder_is_refused(tmp_path):
  plan = Plan(workdir=str(tmp_path), config=CONFIG, common_flags=[],
              runs=[PlannedRun(index=1, name="ok", group="ok", seed=0, overrides={}, flags=[])])
  plan.save()
  data = json.loads((tmp_path / "sweep.json").read_text())
  data["runs"][0]["name"] = ".."
  (tmp_path / "sweep.json").write_text(json.dumps(data))
  with pytest.raises(SweepError, match=r"sweep.json: run '\.\.' cannot name a run's folder"):
    Plan.load(str(tmp_path))


# Every run checked before any starts.


def _sweep_file(tmp_path, body, name="sweep.py"):
  path = tmp_path / name
  path.write_text("from rankclip_jax.sweeps import *\n\ndef get_sweep():\n  return " + body + "\n")
  return str(path)


@pytest.mark.parametrize("bad,facts", [
    ('{"loss.cross_wieght": 0.1}', ["--config.loss.cross_wieght=0.1",
                                    "Did you mean 'cross_weight'?"]),
    ('{"total_steps": "many"}', ["--config.total_steps=many", "config.total_steps takes an int"]),
    ('{"batch_size": 15}', ["config.batch_size=15", "divisible by the 2 devices"]),
    ('{"loss.name": "siglip"}', ["config.loss.name='siglip'", "--config.loss.cross_weight=0"]),
])
def test_every_run_is_checked_before_any_run_starts(tmp_path, bad, facts):
  """The last run of three cannot work: the plan stops there, naming the run and the field."""
  body = (f'Sweep(runs=chain(product(variants({{"good": {{}}}}), values("seed", [0, 1])), '
          f'variants({{"bad": {bad}}})))')
  with pytest.raises(SweepError) as e:
    build.build_plan(workdir=str(tmp_path / "out"), config=CONFIG, command_line=[],
                     sweep_file=_sweep_file(tmp_path, body), num_devices=2)
  assert str(e.value).startswith("run 'bad' (3 of 3): "), str(e.value)
  for fact in facts:
    assert fact in str(e.value), (fact, str(e.value))
  assert not (tmp_path / "out").exists()


def test_a_run_named_like_the_sweeps_own_files_is_refused(tmp_path):
  with pytest.raises(SweepError, match="run 'sweep.json' is named like the sweep's own"):
    build.build_plan(workdir=str(tmp_path / "out"), config=CONFIG, command_line=[],
                     sweep_file=_sweep_file(tmp_path, 'Sweep(runs=variants({"sweep.json": {}}))'),
                     num_devices=1)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where,value,facts", [
    ("run", "a\nb", ["run 'bad' (2 of 2): field 'data.eval_data_dir': its value 'a\\nb'",
                      "control character '\\n'"]),
    ("run", "a\u2028b", ["control character '\\u2028'"]),
    ("command_line", "a\rb", ["'--config.data.eval_data_dir=a\\rb' holds the control "
                               "character '\\r'"]),
    ("workdir", "out\nrm -rf x", ["'--workdir=", "holds the control character '\\n'"]),
])
def test_a_control_character_in_a_command_is_refused(tmp_path, where, value, facts):
  """`--emit=commands` prints one line per run: a newline in an override or a path would split a
  run across two; such a plan is refused, naming where the character is."""
  run = {"data.eval_data_dir": value} if where == "run" else {}
  body = f'Sweep(runs=variants({{"good": {{}}, "bad": {run!r}}}))'
  workdir = str(tmp_path / (value if where == "workdir" else "out"))
  with pytest.raises(SweepError) as e:
    build.build_plan(workdir=workdir, config=CONFIG, sweep_file=_sweep_file(tmp_path, body),
                     command_line=[f"--config.data.eval_data_dir={value}"]
                     if where == "command_line" else [], num_devices=1)
  for fact in facts:
    assert fact in str(e.value), (fact, str(e.value))
  assert "Did you mean" not in str(e.value)
  assert os.listdir(tmp_path) == ["sweep.py"]  # nothing written


def test_a_tab_in_a_value_keeps_its_run_on_one_line(tmp_path):
  body = 'Sweep(runs=variants({"tsv": {"data.train.delimiter": "\\t"}, "csv": {}}))'
  plan = build.build_plan(workdir=str(tmp_path / "out"), config=CONFIG, command_line=[],
                          sweep_file=_sweep_file(tmp_path, body), num_devices=1)
  lines = "\n".join(emit.commands(plan)).split("\n")
  assert len(lines) == 2
  assert shlex.split(lines[0])[-1] == "--config.data.train.delimiter=\t"


def test_a_sweep_file_that_cannot_work_names_itself(tmp_path):
  for body, fact in (('Sweep(runs=values("seed", [0]), baseline="clip")',
                      "baseline='clip' is none of the sweep's groups: base"),
                     ('[1, 2]', "returned list, not rankclip_jax.sweeps.Sweep"),
                     ('Sweep(runs=values("seed", [0]) + 1)', "TypeError")):
    path = _sweep_file(tmp_path, body)
    with pytest.raises(SweepError) as e:
      build.build_plan(workdir=str(tmp_path / "out"), config=CONFIG, command_line=[],
                       sweep_file=path, num_devices=1)
    assert str(e.value).startswith(f"--sweep={path}: ") and fact in str(e.value), str(e.value)


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.strip() and not NOISE.match(l)]


def _env():
  return dict(cli_runs.env(cli_runs.REFERENCE_DEVICES), PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def test_the_command_stops_on_a_bad_run_with_one_error_line_and_emits_commands(tmp_path):
  """Two `python -m rankclip_jax.sweep` processes at once: a sweep whose third run misspells a
  field (one `Error:` line naming the run and the field, exit status 2, nothing written), and
  `--emit=commands` of a good one (one runnable main.py command per run on stdout)."""
  bad = _sweep_file(tmp_path, 'Sweep(runs=chain(values("seed", [0, 1]), '
                              'variants({"typo": {"optim.learning_rat": 0.1}})))', "bad.py")
  good = _sweep_file(tmp_path, 'Sweep(runs=product(variants({"clip": {"loss.cross_weight": 0.0}, '
                               '"rank": {}}), values("seed", [0, 1])), baseline="clip")', "good.py")
  cmd = [sys.executable, "-m", "rankclip_jax.sweep", f"--config={CONFIG}",
         "--config.total_steps=77"]
  procs = {
      "bad": subprocess.Popen(cmd + [f"--sweep={bad}", f"--workdir={tmp_path}/bad_out"],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True),
      "good": subprocess.Popen(cmd + [f"--sweep={good}", f"--workdir={tmp_path}/good_out",
                                      "--emit=commands"], cwd=REPO, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)}
  out = {k: (p.communicate(timeout=240), p.returncode) for k, p in procs.items()}
  (_, stderr), status = out["bad"]
  lines = _error_lines(stderr)
  assert status == 2 and len(lines) == 1, (status, lines)
  assert lines[0].startswith("Error: run 'typo' (3 of 3): --config.optim.learning_rat=0.1: "), lines
  assert "Did you mean 'learning_rate'?" in lines[0]
  assert not (tmp_path / "bad_out").exists()

  (stdout, stderr), status = out["good"]
  assert status == 0, stderr[-3000:]
  commands = stdout.strip().splitlines()
  assert len(commands) == 4
  plan = Plan.load(str(tmp_path / "good_out"))
  for line, run in zip(commands, plan.runs):
    assert subprocess.run(["bash", "-n", "-c", line]).returncode == 0
    config, workdir = _parse_as_main(shlex.split(line)[2:])  # after `python -m`
    assert workdir == os.path.join(str(tmp_path / "good_out"), run.name)
    assert config.total_steps == 77 and config.seed == run.seed
    assert config.loss.cross_weight == (0.0 if run.group == "clip" else 1 / 16)


def test_a_sweep_refused_by_the_lock_changes_none_of_the_running_sweeps_files(tmp_path):
  """Another sweep holds the folder's lock (here: this process). The same sweep started again,
  and `--emit=commands` and `--emit=slurm` into that folder, all at once: each is refused with one
  `Error:` line naming the holder, and the running sweep's files are as they were."""
  import fcntl  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "out"
  workdir.mkdir()
  for name in ("sweep.json", "sweep.sbatch"):
    (workdir / name).write_text(f"the running sweep's {name}")
  sweep_file = _sweep_file(tmp_path, 'Sweep(runs=values("seed", [0, 1]))')
  cmd = [sys.executable, "-m", "rankclip_jax.sweep", f"--config={CONFIG}", f"--sweep={sweep_file}",
         f"--workdir={workdir}"] + cli_runs.train_cmd("x", total_steps=2)[4:]
  with open(workdir / ".sweep.lock", "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("process 1 on the-other-host since 09:00")
    lock.flush()
    before = {p.name: p.read_text() for p in workdir.iterdir()}
    procs = {mode: subprocess.Popen(cmd + flags_, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for mode, flags_ in (("run", []), ("commands", ["--emit=commands"]),
                                  ("slurm", ["--emit=slurm"]))}
    out = {mode: (p.communicate(timeout=240), p.returncode) for mode, p in procs.items()}
    after = {p.name: p.read_text() for p in workdir.iterdir()}
  assert after == before
  for mode, ((stdout, stderr), status) in out.items():
    lines = _error_lines(stderr)
    assert status == 1 and len(lines) == 1, (mode, status, lines)
    assert lines[0].startswith(f"Error: another sweep is running in {workdir} (process 1 on "
                               "the-other-host since 09:00; "), (mode, lines)
    assert not stdout.strip(), (mode, stdout)


def _parse_as_main(argv):
  """argv (rankclip_jax.main and its flags) parsed as main.py parses it: (config, workdir)."""
  assert argv[0] == "rankclip_jax.main", argv
  argv = ["main.py"] + argv[1:]
  sys.modules.pop("config_config", None)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  _, problem = cli.check_command_line(argv, ["config", "workdir"], flag_values=fv)
  assert problem is None, problem
  return fv["config"].value, fv["workdir"].value


# A real sweep of micro runs through the command line.


def _lock_free(workdir) -> bool:
  import fcntl  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, ".sweep.lock"), "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    fcntl.flock(f, fcntl.LOCK_UN)
    return True


def test_a_sweep_interrupted_and_run_again_skips_resumes_and_retries(tmp_path, uninterrupted_run):
  """Three runs of tests/cli_runs.py's micro recipe: `done` already finished (the session's
  uninterrupted run, copied in), `warm_start` (2 steps) starts from weights that are not there
  yet (it fails), `reference,seed=0` trains that recipe again. The sweep is killed (SIGKILL) once it
  has a checkpoint: the run gets SIGTERM as its sweep dies, saves and stops. Then the weights
  appear and the same command (with --parallel=2) skips `done`, retries `warm_start` (its failed
  log kept as log.1.txt) and resumes `reference,seed=0`, which ends exactly like the
  uninterrupted run."""
  workdir = tmp_path / "sweep"
  weights = tmp_path / "weights"
  shutil.copytree(uninterrupted_run, workdir / "done")
  # reference,seed=0: the recipe's own seed, in a folder named like the studies' (',' and '=').
  sweep_file = _sweep_file(tmp_path, f'Sweep(runs=chain(variants({{"done": {{}}, "warm_start": '
                                     f'{{"model.init_from": "{weights}", "total_steps": 2}}}}), '
                                     'product(variants({"reference": {}}), values("seed", [0]))))')
  cmd = [sys.executable, "-m", "rankclip_jax.sweep", f"--config={CONFIG}",
         f"--sweep={sweep_file}", f"--workdir={workdir}"] + cli_runs.train_cmd("x")[4:] + [
             "--config.checkpoint.every_steps=5"]
  reference = workdir / "reference,seed=0"

  # 1. done is skipped, warm_start fails, reference is interrupted once it has a checkpoint.
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while not rundir.checkpoint_steps(str(reference)):
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
    time.sleep(0.1)
  proc.kill()
  first = proc.communicate()[0]
  assert "[1/3] done: finished before, skipped." in first, first
  assert "[2/3] warm_start: FAILED (exit status 1)" in first, first
  assert f"config.model.init_from={weights}: no such file or directory" in first
  while not _lock_free(str(workdir)):  # the run holds the sweep's lock until it has stopped
    assert time.time() < deadline
    time.sleep(0.1)
  assert not (reference / "results.json").exists(), "the run ended before the sweep was killed"
  stopped_at = max(rundir.checkpoint_steps(str(reference)))
  assert "Stopped by SIGTERM" in (reference / "log.txt").read_text()

  # 2. The cause of the failure fixed, the same command (two runs at a time, each on 2 CPU devices).
  os.symlink(uninterrupted_run, weights)
  second = subprocess.run(cmd + ["--parallel=2"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=400)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  out = second.stdout
  assert "[1/3] done: finished before, skipped." in out, out
  assert not (workdir / "done" / "log.txt").exists()  # untouched
  assert "[2/3] warm_start: started (attempt 2; the last one's log kept as log.1.txt)" in out, out
  assert "[2/3] warm_start: done in" in out
  assert "Error: config.model.init_from" in (workdir / "warm_start" / "log.1.txt").read_text()
  assert "Starting step 0/2" in (workdir / "warm_start" / "log.txt").read_text()
  assert f"[3/3] reference,seed=0: resuming from step {stopped_at} (attempt 2;" in out, out
  assert "[3/3] reference,seed=0: done in" in out and "ETA 0m00s" in out
  assert "2 of 3 runs to go, 2 at a time" in out
  assert "Stopped by SIGTERM" in (reference / "log.1.txt").read_text()
  assert f"Resuming at step {stopped_at}/" in (reference / "log.txt").read_text()
  assert json.loads((reference / "results.json").read_text()) == json.loads(
      open(os.path.join(uninterrupted_run, "results.json")).read())
  for tag in ("train/loss", "train/grad_norm"):
    got, want = cli_runs.logged(str(reference), tag), cli_runs.logged(uninterrupted_run, tag)
    assert sorted(got) == sorted(want) == list(range(1, cli_runs.REFERENCE_STEPS + 1)), tag
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-6, err_msg=tag)
  rep = json.loads((workdir / "report.json").read_text())
  assert rep["finished"] == 3 and rep["missing"] == []
  # A sweep this small ends with its runs' results next to each other.
  assert ("Results (held-out evaluation), one column per run:\n| metric | done | warm_start | "
          "reference,seed=0 | chance |") in out, out


# Seed noise, against scipy.


def test_the_t_interval_and_the_paired_difference_match_scipy():
  rng = np.random.default_rng(0)
  for n in (2, 3, 5, 12):
    xs = rng.normal(0.6, 0.05, n)
    s = stats.t_interval(xs)
    lo, hi = scipy_stats.t.interval(0.95, n - 1, loc=np.mean(xs), scale=scipy_stats.sem(xs))
    assert s.n == n and s.mean == pytest.approx(np.mean(xs), abs=1e-12)
    assert s.std == pytest.approx(np.std(xs, ddof=1), rel=1e-12)
    assert (s.low, s.high) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    b = xs - rng.normal(0.02, 0.01, n)
    a_by_seed = dict(enumerate(xs))
    b_by_seed = {**dict(enumerate(b)), 100: 0.9}  # a seed only b has is left out
    d, seeds = stats.paired_difference(a_by_seed, b_by_seed)
    want = scipy_stats.ttest_rel(xs, b).confidence_interval(0.95)
    assert seeds == list(range(n)) and d.n == n
    assert (d.low, d.high) == (pytest.approx(want.low, rel=1e-10),
                               pytest.approx(want.high, rel=1e-10))
    assert d.excludes_zero() == (want.low > 0 or want.high < 0)
  one = stats.t_interval([0.5])
  assert (one.n, one.mean, one.std, one.low) == (1, 0.5, None, None)
  assert stats.t_interval([]).mean is None


# The report, on runs with known results.


def _fabricated_sweep(workdir):
  """clip and rank, seeds 0-2; rank's seed 2 never ran. Known results and TensorBoard losses."""
  runs = grid.name_runs(product(variants({"clip": {"loss.cross_weight": 0.0}, "rank": {}}),
                                values("seed", range(3))))
  plan = Plan(workdir=str(workdir), config=CONFIG, common_flags=[], baseline="clip",
              headline=["zs_shape/top1", "retrieval/i2t_r1"],
              runs=[PlannedRun(index=i + 1, name=r.name, group=r.group,
                               seed=r.overrides["seed"], overrides=r.overrides, flags=[])
                    for i, r in enumerate(runs)])
  plan.save()
  shape = {"clip": [0.50, 0.56, 0.53], "rank": [0.58, 0.61]}
  i2t = {"clip": [0.20, 0.22, 0.19], "rank": [0.21, 0.25]}
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  for run in plan.runs:
    if run.group == "rank" and run.seed == 2:
      continue
    folder = plan.run_dir(run)
    os.makedirs(folder)
    results = {"step": 3, "zs_shape/top1": shape[run.group][run.seed],
               "zs_shape/top3": shape[run.group][run.seed] + 0.2, "zs_shape/chance": 0.125,
               "zs_shape/num_examples": 512, "retrieval/i2t_r1": i2t[run.group][run.seed],
               "retrieval/num_images": 512}
    with open(os.path.join(folder, "results.json"), "w") as f:
      json.dump(results, f)
    writer = metric_writers.create_default_writer(folder)
    for step in (1, 2, 3):
      writer.write_scalars(step, {"train/loss": 10.0 * (run.group == "rank") + run.seed + step})
    writer.close()
  return plan, shape, i2t


def test_the_report_on_runs_with_known_results(tmp_path):
  plan, shape, i2t = _fabricated_sweep(tmp_path / "sweep")
  os.makedirs(plan.run_dir(plan.runs[-1]) + "/checkpoints/40")  # rank,seed=2 was interrupted
  out = subprocess.run([sys.executable, "-m", "rankclip_jax.sweep", "--report", plan.workdir],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Report of 5 of 6 runs: {plan.workdir}/report.md" in out.stdout
  rep = json.loads((tmp_path / "sweep" / "report.json").read_text())
  assert rep["missing"] == ["rank,seed=2"] and rep["finished"] == 5
  assert next(r for r in rep["runs"] if r["name"] == "rank,seed=2")["status"] == \
      "interrupted at checkpoint 40"
  assert rep["metrics"] == ["retrieval/i2t_r1", "zs_shape/top1", "zs_shape/top3"]
  assert rep["chance"] == {"zs_shape/top1": 0.125, "zs_shape/top3": 0.375}
  for group in ("clip", "rank"):
    got = rep["groups"][group]["metrics"]["zs_shape/top1"]
    xs = shape[group]
    lo, hi = scipy_stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=scipy_stats.sem(xs))
    assert got["n"] == len(xs) and got["mean"] == pytest.approx(np.mean(xs))
    assert got["std"] == pytest.approx(np.std(xs, ddof=1))
    assert got["ci"] == [pytest.approx(lo), pytest.approx(hi)]
    assert got["chance"] == 0.125
    # Evaluation noise: each run's binomial standard error on its 512 scenes, root mean square.
    assert got["eval_se"] == pytest.approx(
        np.sqrt(np.mean([p * (1 - p) / 512 for p in xs])), rel=1e-12)
    recall = rep["groups"][group]["metrics"]["retrieval/i2t_r1"]["eval_se"]
    assert recall == pytest.approx(np.sqrt(np.mean([p * (1 - p) / 512 for p in i2t[group]])))
  for metric, values_ in (("zs_shape/top1", shape), ("retrieval/i2t_r1", i2t)):
    d = rep["differences"]["rank"][metric]
    want = scipy_stats.ttest_rel(values_["rank"], values_["clip"][:2]).confidence_interval(0.95)
    assert d["seeds"] == [0, 1] and d["n"] == 2
    assert d["mean"] == pytest.approx(np.mean(np.subtract(values_["rank"], values_["clip"][:2])))
    assert d["ci"] == [pytest.approx(want.low), pytest.approx(want.high)]
  assert "clip" not in rep["differences"] and rep["compared_with"] == {"rank": "clip"}
  assert rep["axes"] == {}  # a sweep without axes: every group against the baseline group
  # The mean loss curve per group, from the TensorBoard files: (0 + 1 + 2) / 3 + step for clip.
  assert rep["train_loss"]["clip"] == {"steps": [1, 2, 3], "mean": [2.0, 3.0, 4.0], "runs": 3}
  assert rep["train_loss"]["rank"]["mean"] == [11.5, 12.5, 13.5]
  for key in ("zs_shape/top1", "retrieval/i2t_r1", "train/loss"):
    path = tmp_path / "sweep" / rep["pictures"][key]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
  md = (tmp_path / "sweep" / "report.md").read_text()
  assert "### zs_shape/top1 (chance 0.1250)" in md and "`rank,seed=2`: interrupted" in md
  assert f"| clip | 3 | {np.mean(shape['clip']):.4f} | {np.std(shape['clip'], ddof=1):.4f} |" in md
  assert "| group | n | mean | std | eval SE | 95% CI | - clip (paired) |" in md
  assert "Along the axes" not in md
  # The config as the sweep stored it (absolute), shown relative to the folder the report ran in.
  assert os.path.isabs(rep["config"])
  assert f"Config `{os.path.relpath(CONFIG, REPO)}`." in md


def test_a_small_sweep_prints_its_runs_results_side_by_side(tmp_path):
  """One column per finished run, the chance level beside each accuracy ("-" where there is none);
  the unfinished run has no column."""
  plan, shape, i2t = _fabricated_sweep(tmp_path / "sweep")
  table = report.side_by_side(report.build(plan.workdir)).splitlines()
  assert table[0] == ("| metric | clip,seed=0 | clip,seed=1 | clip,seed=2 | rank,seed=0 | "
                      "rank,seed=1 | chance |")
  rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in table[2:]}
  assert rows["zs_shape/top1"] == [f"{v:.4f}" for v in shape["clip"] + shape["rank"]] + ["0.1250 |"]
  assert rows["zs_shape/top3"][-1] == "0.3750 |"  # top-3 of 8 classes
  assert rows["retrieval/i2t_r1"] == [f"{v:.4f}" for v in i2t["clip"] + i2t["rank"]] + ["- |"]
  # The sweep's headline metrics first; counts (num_examples, num_images) are not metrics.
  assert list(rows) == ["zs_shape/top1", "retrieval/i2t_r1", "zs_shape/top3"]


# Axes: each cell's groups against the baseline's group of the same cell.

_METHODS = ('variants({"clip": {"loss.cross_weight": 0.0, "loss.inmodal_weight": 0.0}, '
            '"rankclip": {}})')
_CELLS = ('variants({"base": {}, "lr3": {"optim.learning_rate": 0.003}, '
          '"const": {"loss.weight_schedule": "constant"}})')
_AXES = ('{"learning_rate": [(0.001, "base"), (0.003, "lr3")], '
         '"schedule": [("ramp", "base"), ("constant", "const")]}')
# Known results: clip's per cell and seed, and rankclip - clip per cell and seed (rankclip,const
# seed 2 never ran). Within its cell rankclip is ahead (base), behind (lr3) or within the noise.
_CLIP = {"zs_shape/top1": {"base": [0.50, 0.56, 0.53], "lr3": [0.40, 0.45, 0.43],
                           "const": [0.60, 0.62, 0.58]},
         "retrieval/i2t_r1": {"base": [0.20, 0.22, 0.19], "lr3": [0.30, 0.25, 0.27],
                              "const": [0.21, 0.24, 0.23]}}
_GAIN = {"zs_shape/top1": {"base": [0.08, 0.10, 0.12], "lr3": [-0.04, -0.05, -0.06],
                           "const": [0.01, 0.03]},
         "retrieval/i2t_r1": {"base": [0.02, 0.00, 0.01], "lr3": [0.00, 0.01, 0.03],
                              "const": [0.01, -0.01]}}


def _value(metric, method, cell, seed):
  clip = _CLIP[metric][cell][seed]
  return clip if method == "clip" else clip + _GAIN[metric][cell][seed]


def _axes_sweep(tmp_path):
  """The sweep planned from a sweep file with axes (sweep.json saved), its run folders holding
  results.json files with the known numbers above."""
  sweep_file = _sweep_file(tmp_path, f'Sweep(runs=product({_METHODS}, {_CELLS}, values("seed", '
                                     f'range(3))), baseline="clip", axes={_AXES}, '
                                     'headline=("zs_shape/top1", "retrieval/i2t_r1"))')
  plan = build.build_plan(workdir=str(tmp_path / "sweep"), config=CONFIG, command_line=[],
                          sweep_file=sweep_file, num_devices=1)
  plan.save()
  for run in plan.runs:
    method, cell = run.group.split(",")
    if run.name == "rankclip,const,seed=2":
      continue
    os.makedirs(plan.run_dir(run))
    shape = _value("zs_shape/top1", method, cell, run.seed)
    results = {"step": 3, "zs_shape/top1": shape, "zs_shape/top3": min(1.0, shape + 0.2),
               "zs_shape/chance": 0.125, "zs_shape/num_examples": 512,
               "retrieval/i2t_r1": _value("retrieval/i2t_r1", method, cell, run.seed),
               "retrieval/num_images": 256}
    with open(os.path.join(plan.run_dir(run), "results.json"), "w") as f:
      json.dump(results, f)
  return plan


def _hand_difference(gain):
  """mean and the 95% Student t interval of a paired difference, by hand with scipy's t."""
  n, mean = len(gain), float(np.mean(gain))
  half = scipy_stats.t.ppf(0.975, n - 1) * np.std(gain, ddof=1) / np.sqrt(n)
  return mean, mean - half, mean + half


def test_the_report_along_axes_on_runs_with_known_results(tmp_path):
  """Two axes over three cells: each cell's rankclip against that cell's clip, paired by seed,
  in report.json (against a hand computation with scipy's t), report.md's table per axis and a
  picture per axis; all from the sweep's folder alone (sweep.json keeps the axes)."""
  plan = _axes_sweep(tmp_path)
  saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
  assert saved["baseline"] == "clip" and saved["axes"] == {
      "learning_rate": [[0.001, "base"], [0.003, "lr3"]],
      "schedule": [["ramp", "base"], ["constant", "const"]]}
  rep = report.write_report(plan.workdir)
  assert rep["compared_with"] == {"rankclip,base": "clip,base", "rankclip,lr3": "clip,lr3",
                                  "rankclip,const": "clip,const"}
  # `differences`: each rankclip group against its own cell's clip (lr3: -0.05 there, where
  # against clip,base it would be -0.18).
  for cell in ("base", "lr3", "const"):
    for metric in ("zs_shape/top1", "retrieval/i2t_r1"):
      d = rep["differences"][f"rankclip,{cell}"][metric]
      gain = _GAIN[metric][cell]
      mean, low, high = _hand_difference(gain)
      assert d["n"] == len(gain) and d["seeds"] == list(range(len(gain)))
      assert d["mean"] == pytest.approx(mean, abs=1e-12)
      assert d["ci"] == [pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12)]
      assert d["excludes_zero"] == (low > 0 or high < 0)
  assert [c for c in ("base", "lr3", "const") if rep["differences"][f"rankclip,{c}"][
      "zs_shape/top1"]["excludes_zero"]] == ["base", "lr3"]
  assert not any(g.startswith("clip,") for g in rep["differences"])

  # `axes`: per axis, per value (in the sweep's order), per method, per metric (headline first).
  assert list(rep["axes"]) == ["learning_rate", "schedule"]
  rows = rep["axes"]["schedule"]
  assert [(r["value"], r["cell"], r["baseline_group"]) for r in rows] == [
      ("ramp", "base", "clip,base"), ("constant", "const", "clip,const")]
  for row in rep["axes"]["learning_rate"] + rows:
    assert list(row["methods"]) == ["rankclip"]
    got = row["methods"]["rankclip"]
    assert got["group"] == f"rankclip,{row['cell']}"
    assert list(got["metrics"]) == ["zs_shape/top1", "retrieval/i2t_r1", "zs_shape/top3"]
    for metric, count in (("zs_shape/top1", 512), ("retrieval/i2t_r1", 256)):
      d = got["metrics"][metric]
      assert {k: d[k] for k in ("mean", "ci", "n", "seeds", "excludes_zero")} == {
          k: rep["differences"][got["group"]][metric][k]
          for k in ("mean", "ci", "n", "seeds", "excludes_zero")}
      assert d["chance"] == (0.125 if metric == "zs_shape/top1" else None)
      # One seed's difference: the two groups' binomial standard errors (each the root mean
      # square over the group's finished runs) combined.
      seeds = {"clip": range(3), "rankclip": range(len(_GAIN[metric][row["cell"]]))}
      var = {m: np.mean([(lambda p: p * (1 - p) / count)(_value(metric, m, row["cell"], s))
                         for s in seeds[m]]) for m in seeds}
      assert d["eval_se"] == pytest.approx(np.sqrt(var["clip"] + var["rankclip"]), rel=1e-12)
    assert got["metrics"]["zs_shape/top3"]["chance"] == 0.375

  # report.md: a table per axis, a row per value, the headline metrics' differences.
  md = (tmp_path / "sweep" / "report.md").read_text()
  def cell(metric, cell_):
    mean, low, high = _hand_difference(_GAIN[metric][cell_])
    return f"{mean:+.4f} [{low:.4f}, {high:.4f}]" + (" *" if low > 0 or high < 0 else "")
  assert "differences are against the `clip` group of the same cell, paired by seed." in md
  assert "### learning_rate: rankclip - clip" in md and "### schedule: rankclip - clip" in md
  assert "| learning_rate | cell | pairs | zs_shape/top1 | retrieval/i2t_r1 |" in md
  for value, cell_, pairs in (("0.001", "base", 3), ("0.003", "lr3", 3), ("ramp", "base", 3),
                              ("constant", "const", 2)):
    row = (f"| {value} | `{cell_}` | {pairs} | {cell('zs_shape/top1', cell_)} | "
           f"{cell('retrieval/i2t_r1', cell_)} |")
    assert row in md, (row, md)
  assert "| 0.001 | `base` | 3 | +0.1000 [0.0503, 0.1497] * |" in md
  assert "| 0.003 | `lr3` | 3 | -0.0500 [-0.0748, -0.0252] * |" in md
  assert "Chance levels: `zs_shape/top1` 0.1250 (" in md
  assert "Evaluation noise of one seed's difference" in md and "`retrieval/i2t_r1` 0.0" in md
  assert "- clip of its cell (paired)" in md  # the per-metric tables say which clip
  # One picture per axis: a real PNG, linked from report.md.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for axis in ("learning_rate", "schedule"):
    path = rep["axis_pictures"][axis]
    assert path == f"report_pictures/axis_{axis}.png" and f"![{axis}]({path})" in md
    data = (tmp_path / "sweep" / path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "sweep" / path) as picture:
      picture.verify()
      assert picture.format == "PNG" and picture.size[0] > 400 and picture.size[1] > 200


def test_a_sweep_json_without_axes_still_loads_and_reports_as_before(tmp_path):
  """sweep.json files written before axes existed have no `axes` field."""
  plan, shape, _ = _fabricated_sweep(tmp_path / "sweep")
  data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
  assert data.pop("axes") == {}
  (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(data))
  assert Plan.load(plan.workdir).axes == {}
  rep = report.build(plan.workdir)
  assert rep["axes"] == {} and list(rep["differences"]) == ["rank"]
  assert rep["differences"]["rank"]["zs_shape/top1"]["mean"] == pytest.approx(
      np.mean(np.subtract(shape["rank"], shape["clip"][:2])))


_SEED0 = 'values("seed", [0])'


@pytest.mark.parametrize("runs,extra,facts", [
    (f"product({_METHODS}, {_CELLS}, {_SEED0})",
     'baseline="clip", axes={"lr": [(0.001, "base"), (0.005, "lr5")]}',
     ["axes['lr']: the cell 'lr5' (value 0.005) is none of the cells of the sweep's groups: "
      "base, lr3, const"]),
    (f'chain(product({_METHODS}, variants({{"base": {{}}}}), {_SEED0}), product(variants('
     f'{{"rankclip": {{}}}}), variants({{"lr3": {{"optim.learning_rate": 0.003}}}}), {_SEED0}))',
     'baseline="clip", axes={"lr": [(0.001, "base"), (0.003, "lr3")]}',
     ["cell 'lr3' has no baseline group 'clip,lr3' to compare its groups (rankclip,lr3) with"]),
    (f"product({_METHODS}, {_CELLS}, {_SEED0})",
     'baseline="clip", axes={"lr": [(0.001, "base"), (0.001, "lr3")]}',
     ["axes['lr']: the value 0.001 is given twice", "distinct"]),
    (f"product({_METHODS}, {_CELLS}, {_SEED0})",
     'baseline="clip,base", axes={"lr": [(0.001, "base")]}',
     ["baseline='clip,base' is a label of none of the sweep's groups",
      "baseline names the method label"]),
    (f"product({_METHODS}, {_CELLS}, {_SEED0})", 'axes={"lr": [(0.001, "base")]}',
     ["give baseline= the method label"]),
    (f"product({_METHODS}, {_CELLS}, {_SEED0})",
     'baseline="clip", axes={"lr": [([1], "base")]}',
     ["axes['lr']: the value [1] must be a string, a finite number or a bool"]),
])
def test_axes_that_cannot_work_are_refused_before_anything_is_written(tmp_path, runs, extra, facts):
  path = _sweep_file(tmp_path, f"Sweep(runs={runs}, {extra})")
  with pytest.raises(SweepError) as e:
    build.build_plan(workdir=str(tmp_path / "out"), config=CONFIG, command_line=[],
                     sweep_file=path, num_devices=1)
  assert str(e.value).startswith(f"--sweep={path}: "), str(e.value)
  for fact in facts:
    assert fact in str(e.value), (fact, str(e.value))
  assert not (tmp_path / "out").exists()


def test_a_sweep_json_with_axes_that_cannot_work_names_the_file(tmp_path):
  plan, _, _ = _fabricated_sweep(tmp_path / "sweep")
  path = tmp_path / "sweep" / "sweep.json"
  data = json.loads(path.read_text())
  data["axes"] = {"x": [[1, "a"], [1, "b"]]}
  path.write_text(json.dumps(data))
  with pytest.raises(SweepError, match=re.escape(f"{path}: axes['x']: the value 1 is given twice")):
    Plan.load(plan.workdir)
  data["axes"] = {"x": [[1, "clip"]]}  # the groups `clip` and `rank` have no cell
  path.write_text(json.dumps(data))
  with pytest.raises(SweepError, match=re.escape(f"{path}: group 'clip' has no method label")):
    report.build(plan.workdir)


# Devices and other schedulers.


def test_parallel_runs_split_the_gpus_or_share_the_cpu(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
  slots, each = devices.slots(2)
  assert each == 2 and [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                   {"CUDA_VISIBLE_DEVICES": "2,3"}]
  slots, each = devices.slots(3, gpus_per_run=1)
  assert each == 1 and [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "2"]
  with pytest.raises(SweepError, match="4 GPU"):
    devices.slots(5)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  slots, each = devices.slots(2)
  assert each == 3 and [s.env for s in slots] == [{}, {}]


def _sbatch_words(text, quotes):
  """The arguments sbatch reads from the rest of an #SBATCH line, by the rules of
  _get_argument() in SLURM's src/sbatch/opt.c: a backslash takes the next character as it is,
  a quote groups up to its match, an unquoted '#' starts a comment, whitespace separates.
  quotes: '"\'' (current releases), or '"' (older ones: there '#' ends the line even inside)."""
  words, word, quote, chars = [], None, None, iter(text)
  for ch in chars:
    if ch == "\\":
      word = (word or "") + next(chars, "")
    elif quote is not None and ch == quote:
      quote = None
    elif ch == "#" and (quote is None or len(quotes) == 1):
      break
    elif quote is None and ch in quotes:
      quote, word = ch, word or ""
    elif quote is None and ch.isspace():
      if word is not None:
        words.append(word)
      word = None
    else:
      word = (word or "") + ch
  return words + ([word] if word is not None else [])


def _slurm_file_name(pattern, job, task):
  """sbatch's --output file name for array task `task` of job `job` (%A, %a, %%)."""
  return re.sub("%(.)", lambda m: {"A": str(job), "a": str(task), "%": "%"}[m.group(1)], pattern)


@pytest.mark.parametrize("folder", ["sweep", "my sweeps #2, 'quoted' \"too\" at 100%"])
def test_the_slurm_script_runs_one_run_per_array_task(tmp_path, folder):
  """The script passes `bash -n`; run by bash with a stand-in srun and python, task 1 trains the
  second run with its flags (its earlier log kept), a finished run's task does nothing. sbatch
  reads the workdir back from the #SBATCH --output line whatever characters it holds."""
  workdir = tmp_path / folder
  plan, _, _ = _fabricated_sweep(workdir)
  plan.common_flags = ["--config.total_steps=9"]
  plan.runs = [PlannedRun(index=r.index, name=r.name, group=r.group, seed=r.seed,
                          overrides=r.overrides, flags=[f"--config.seed={r.seed}"])
               for r in plan.runs]
  script = tmp_path / "sweep.sbatch"
  script.write_text(emit.slurm_script(plan, gpus_per_run=2, parallel=3))
  assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
  text = script.read_text()
  assert "#SBATCH --array=0-5%3" in text and "#SBATCH --gpus-per-node=2" in text
  assert "#SBATCH --signal=TERM@300" in text and "#SBATCH --requeue" in text
  output = [line for line in text.splitlines() if line.startswith("#SBATCH --output=")]
  for quotes in ("\"'", '"'):
    words = _sbatch_words(output[0][len("#SBATCH"):], quotes)
    assert len(words) == 1 and words[0].startswith("--output="), (quotes, words)
    assert _slurm_file_name(words[0][len("--output="):], 12, 3) == f"{workdir}/slurm-12_3.out"
  with pytest.raises(SweepError, match="backslash"):
    emit.slurm_script(Plan(workdir=str(tmp_path / "a\\b"), config=CONFIG, common_flags=[],
                           runs=plan.runs))
  submit = tmp_path / "repo"
  (submit / ".venv" / "bin").mkdir(parents=True)
  (submit / "bin").mkdir()
  (submit / ".venv" / "bin" / "activate").write_text(f'export PATH="{submit}/bin:$PATH"\n')
  (submit / "bin" / "srun").write_text('#!/bin/bash\nshift\nexec "$@"\n')
  (submit / "bin" / "python").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
  for f in ("srun", "python"):
    os.chmod(submit / "bin" / f, 0o755)
  def task(k):
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(k),
                                  SLURM_SUBMIT_DIR=str(submit)))
    assert out.returncode == 0, out.stderr
    return out.stdout

  assert task(1) == "clip,seed=1: finished before, skipped.\n"  # it has results.json
  assert task(5) == task(5) == "rank,seed=2 (run 6 of 6): log " + str(
      workdir / "rank,seed=2" / "log.txt") + "\n"  # none: trained (twice)
  folder = workdir / "rank,seed=2"
  argv = (folder / "log.txt").read_text().split("\n")[:-1]
  assert argv == ["-m", "rankclip_jax.main", f"--config={CONFIG}", "--config.total_steps=9",
                  f"--workdir={folder}", "--config.seed=2"]
  assert (folder / "log.1.txt").read_text() == (folder / "log.txt").read_text()


def test_the_study_files_build_every_run():
  """The two studies' sweep files: every run named and its config validated (ALIP's included),
  and the paper comparison's seed count from its argument (`paper_comparison.py:1`: seed 0 only,
  under the same names as in the full study)."""
  config = os.path.join(REPO, "configs/rankclip_synthetic.py")
  full = build.build_plan(workdir="unused", config=config, command_line=[],
                          sweep_file=os.path.join(REPO, "configs/sweeps/paper_comparison.py"),
                          num_devices=1)
  methods = ["clip", "rankclip", "rankclip_c", "rankclip_i", "cyclip", "siglip", "alip"]
  # CLIP and RankCLIP at every seed first, then the other methods seed by seed.
  assert [r.name for r in full.runs] == (
      [f"{m},seed={s}" for s in range(5) for m in methods[:2]]
      + [f"{m},seed={s}" for s in range(5) for m in methods[2:]])
  assert full.baseline == "clip"
  one = build.build_plan(workdir="unused", config=config, command_line=[],
                         sweep_file=os.path.join(REPO, "configs/sweeps/paper_comparison.py:1"),
                         num_devices=1)
  assert [r.name for r in one.runs] == [f"{m},seed=0" for m in methods]
  assert one.runs[-1].overrides["loss.name"] == "alip"
  pair = build.build_plan(workdir="unused", config=config, command_line=[],
                          sweep_file=os.path.join(REPO, "configs/sweeps/clip_vs_rankclip.py:3"),
                          num_devices=1)
  assert [r.name for r in pair.runs] == ["clip,seed=3", "rankclip,seed=3"]
  assert pair.runs[1].overrides == full.runs[1].overrides | {"seed": 3}
  weights = build.build_plan(workdir="unused", config=config, command_line=[],
                             sweep_file=os.path.join(REPO, "configs/sweeps/ranking_weights.py"),
                             num_devices=1)
  assert len(weights.runs) == 21 and len({r.group for r in weights.runs}) == 7


def test_the_regimes_study_compares_each_cell_with_its_own_clip():
  """configs/sweeps/regimes.py (2 seeds): every run validated on the benchmark config, its axes
  saved in the plan, and each cell's RankCLIP compared with that cell's CLIP."""
  from configs.sweeps import regimes  # pylint: disable=g-import-not-at-top
  plan = build.build_plan(workdir="unused", config=os.path.join(REPO, "configs/bench_synthetic.py"),
                          command_line=[], num_devices=1,
                          sweep_file=os.path.join(REPO, "configs/sweeps/regimes.py:2"))
  assert len(plan.runs) == 2 * len(regimes.CELLS) * 2 and plan.baseline == "clip"
  assert plan.axes == {axis: [list(p) for p in pairs] for axis, pairs in regimes.AXES.items()}
  groups = list(dict.fromkeys(r.group for r in plan.runs))
  assert report.compared_with(plan, groups) == {f"rankclip,{c}": f"clip,{c}"
                                                for c in regimes.CELLS}
  assert {c for pairs in regimes.AXES.values() for _, c in pairs} == set(regimes.CELLS)
