"""Command-line mistakes (rankclip_jax/cli.py): each is ONE `Error: ...` line on stderr naming the
flag or field, what was given and the fix, exit status 2, no traceback, and nothing written.

The commands themselves run as subprocesses, all started at once (each imports JAX and
TensorFlow, ~5-10 s): main.py, python -m rankclip_jax.evaluate, python -m rankclip_jax.convert,
each in an empty folder of its own, which must stay empty. The rarer mistakes in a config file are
checked in this process on cli.parse_command_line, with a flag registry of their own.
"""

import os
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from rankclip_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "rankclip_synthetic.py")
MAIN = [sys.executable, os.path.join(REPO, "main.py")]
EVALUATE = [sys.executable, "-m", "rankclip_jax.evaluate"]
CONVERT = [sys.executable, "-m", "rankclip_jax.convert"]
# TensorFlow's and absl's C++ logging, written before Python runs any of our code.
NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|[IWE]0000 ")

# name: (command, whether it is given --workdir/--output=<folder>/run, what the line must contain).
WD = "{wd}"
CASES = {
    "main_misspelt_field": (
        MAIN + [f"--config={CONFIG}", f"--workdir={WD}", "--config.loss.cross_wieght=0.1"],
        ["--config.loss.cross_wieght=0.1", "config.loss has no field 'cross_wieght'",
         "Did you mean 'cross_weight'?", "--config.loss.cross_weight=0.1"]),
    "main_wrong_type": (
        MAIN + [f"--config={CONFIG}", f"--workdir={WD}", "--config.total_steps=abc"],
        ["--config.total_steps=abc", "'abc'", "config.total_steps takes an int"]),
    "main_missing_workdir": (
        MAIN + [f"--config={CONFIG}"],
        ["--workdir is required", "Flag --workdir must have a value"]),
    "main_missing_config_file": (
        MAIN + [f"--config={os.path.join(REPO, 'configs', 'rankclip_synthetc.py')}",
                f"--workdir={WD}"],
        ["rankclip_synthetc.py", "no such file", "Did you mean", "rankclip_synthetic.py"]),
    "main_unknown_flag": (
        MAIN + [f"--config={CONFIG}", f"--workdirr={WD}"],
        ["unknown flag --workdirr=", "Did you mean --workdir?"]),
    "evaluate_misspelt_field": (
        EVALUATE + [f"--workdir={WD}", f"--evals={CONFIG}",
                    "--evals.evals.retrieval.num_exmples=5"],
        ["--evals.evals.retrieval.num_exmples=5", "has no field 'num_exmples'",
         "Did you mean 'num_examples'?"]),
    "evaluate_missing_workdir": (
        EVALUATE + [f"--evals={CONFIG}"],
        ["--workdir is required", "Flag --workdir must have a value"]),
    "convert_missing_input": (
        CONVERT + [f"--output={WD}"],
        ["--input is required.", "Flag --input must have a value"]),
}
# A config value out of its range (config_validation.py; test_config.py tries every numeric field
# in this process): one `Error:` line too, before any JAX work, exit status 1 like every error in
# what a run was given.
VALUE_CASES = {
    "main_negative_seed": (
        MAIN + [f"--config={CONFIG}", f"--workdir={WD}", "--config.seed=-1"],
        ["Error: config.seed=-1 must be an integer in [0, 2**32 - 1]"]),
}


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.strip() and not NOISE.match(line)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """name -> (folder it ran in, its workdir, CompletedProcess), every command run concurrently."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  started = {}
  for name, (cmd, _) in {**CASES, **VALUE_CASES}.items():
    folder = tmp_path_factory.mktemp(name)
    workdir = os.path.join(folder, "run")
    argv = [a.replace(WD, workdir) for a in cmd]
    started[name] = (folder, workdir, argv, subprocess.Popen(
        argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  out = {}
  for name, (folder, workdir, argv, proc) in started.items():
    try:
      stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      proc.kill()
      stdout, stderr = proc.communicate()
    out[name] = (folder, workdir,
                 subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr))
  return out


def _one_error_line(results, name, facts, status):
  folder, workdir, proc = results[name]
  lines = error_lines(proc.stderr)
  assert "Traceback" not in proc.stderr, "\n".join(lines)[-3000:]
  assert len(lines) == 1 and lines[0].startswith("Error: "), "\n".join(lines)[-3000:]
  for fact in facts:
    assert fact in lines[0], (fact, lines[0])
  assert proc.returncode == status, (proc.returncode, lines)
  assert not os.path.exists(workdir)
  assert not os.listdir(folder)  # nothing written where it ran either


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_command_line_mistake_is_one_error_line_and_status_2(results, name):
  _one_error_line(results, name, CASES[name][1], 2)


@pytest.mark.parametrize("name", sorted(VALUE_CASES))
def test_a_config_value_out_of_range_is_one_error_line_and_status_1(results, name):
  _one_error_line(results, name, VALUE_CASES[name][1], 1)


# In this process: cli.parse_command_line on a registry of its own, like main.py's flags.

GROUPED = """import ml_collections
def get_config():
  return ml_collections.ConfigDict(dict(steps=10, loss=dict(weight=0.5, name="rank")))
"""


def _parse(monkeypatch, capsys, argv, *files):
  """`prog argv` parsed as main.py parses it: --config (locked) and --workdir, both required.
  `files` are (path, text) to write first. Returns (exit status, the stderr lines)."""
  for path, text in files:
    path.write_text(text)
  # ml_collections loads every --config file as module config_config, reusing sys.modules'.
  monkeypatch.delitem(sys.modules, "config_config", raising=False)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=["prog"] + argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
  with pytest.raises(SystemExit) as exit_:
    cli.parse_command_line(["prog"] + argv, ["config", "workdir"], flag_values=fv)
  return exit_.value.code, error_lines(capsys.readouterr().err)


@pytest.mark.parametrize("text,facts", [
    ("def get_config():\n  raise ValueError('no such recipe')\n",
     ["ValueError: no such recipe", "bad.py:2"]),  # absl re-raises ValueErrors with a traceback
    ("def get_config():\n  return {}['lr']\n", ["KeyError: 'lr'", "bad.py:2"]),
    ("def get_config(:\n  pass\n", ["SyntaxError", "bad.py:1"]),
    ("import no_such_module_zz\n", ["ModuleNotFoundError", "no_such_module_zz", "bad.py:1"]),
    ("def get_config():\n  return open('/no/such/file.txt').read()\n",
     ["FileNotFoundError", "/no/such/file.txt", "bad.py:2"]),  # ml_collections defers IOErrors
    ("BASE = 1\n", ["defines no get_config()"]),
])
def test_a_config_file_that_does_not_load_is_one_error_line(monkeypatch, capsys, tmp_path, text,
                                                            facts):
  bad = tmp_path / "bad.py"
  status, lines = _parse(monkeypatch, capsys, [f"--config={bad}", f"--workdir={tmp_path}/run"],
                         (bad, text))
  assert status == 2 and len(lines) == 1, lines
  assert lines[0].startswith(f"Error: --config={bad}: "), lines
  for fact in facts:
    assert fact in lines[0], (fact, lines[0])
  assert "Traceback" not in lines[0]


@pytest.mark.parametrize("args,facts", [
    (["--config.loss.wieght=1"], ["config.loss has no field 'wieght'",
                                  "Did you mean 'weight'?", "--config.loss.weight=1"]),
    (["--config.new_field=1"], ["config has no field 'new_field'", "cannot add fields",
                                "Its fields: loss, steps"]),  # locked: no new fields
    (["--config.loss=3"], ["--config.loss=3", "config.loss is a group of fields (name, weight)"]),
    (["--config.loss.weight=heavy"], ["--config.loss.weight=heavy", "takes a float"]),
    (["extra"], ["unexpected argument 'extra'"]),
    (["--config.steps=5", "a", "b"], ["unexpected arguments 'a' 'b'"]),
])
def test_overrides_and_arguments_that_cannot_work_are_one_error_line(monkeypatch, capsys,
                                                                     tmp_path, args, facts):
  config = tmp_path / "grouped.py"
  status, lines = _parse(monkeypatch, capsys,
                         [f"--config={config}", f"--workdir={tmp_path}/run"] + args,
                         (config, GROUPED))
  assert status == 2 and len(lines) == 1 and lines[0].startswith("Error: "), lines
  for fact in facts:
    assert fact in lines[0], (fact, lines[0])


def test_an_override_before_its_config_file_is_one_error_line(monkeypatch, capsys, tmp_path):
  config = tmp_path / "grouped.py"
  status, lines = _parse(monkeypatch, capsys,
                         ["--config.steps=5", f"--config={config}", f"--workdir={tmp_path}/run"],
                         (config, GROUPED))
  assert status == 2 and len(lines) == 1, lines
  assert "--config.steps=5" in lines[0] and "give --config=<config file> first" in lines[0]


def test_a_correct_command_line_parses(monkeypatch, capsys, tmp_path):
  config = tmp_path / "grouped.py"
  config.write_text(GROUPED)
  monkeypatch.delitem(sys.modules, "config_config", raising=False)
  fv = flags.FlagValues()
  argv = ["prog", f"--config={config}", "--workdir=runs/x", "--config.loss.weight=2"]
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  assert cli.parse_command_line(argv, ["config", "workdir"], flag_values=fv) == ["prog"]
  assert fv.config.loss.weight == 2.0 and fv.workdir == "runs/x"
  assert not capsys.readouterr().err
