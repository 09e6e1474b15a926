"""The installable package (pyproject.toml): `import rankclip_jax` from any folder, the console
scripts, and dependencies that the pinned requirements.txt covers."""

import os
import re
import subprocess
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _pyproject():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _name(requirement: str) -> str:
  return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_of_the_package_is_pinned_in_requirements():
  pins = {}
  for line in open(os.path.join(REPO, "requirements.txt")):
    line = line.split("#")[0].strip()
    if line:
      pins[_name(line)] = line
  project = _pyproject()["project"]
  wanted = project["dependencies"] + project["optional-dependencies"]["test"]
  # absl-py and etils come with jax/orbax (not pinned on their own); everything else is.
  missing = [d for d in wanted if _name(d) not in pins and _name(d) not in ("absl-py", "etils")]
  assert missing == []


def test_the_package_imports_from_any_folder(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-c", "import rankclip_jax, rankclip_jax.train, rankclip_jax.defaults\n"
       "print(rankclip_jax.__file__)"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert proc.returncode == 0, (proc.stderr[-2000:] + "\nInstall the package: pip install -e .")
  assert proc.stdout.strip() == os.path.join(REPO, "rankclip_jax", "__init__.py")


COMMANDS = {"rankclip-train": "Flag --config must have a value",
            "rankclip-evaluate": "Flag --workdir must have a value",
            "rankclip-convert": "Error: --input is required.",
            "rankclip-sweep": "Error: --config and --sweep and --workdir required"}


def test_console_scripts_are_installed_and_run(tmp_path):
  """Each command runs our entry point from any folder: without its required flag it says so
  (they start at once: each imports jax)."""
  procs = {}
  for script in COMMANDS:
    assert _pyproject()["project"]["scripts"][script]
    path = os.path.join(BIN, script)
    assert os.path.exists(path), f"{path} is missing: install the package with pip install -e ."
    procs[script] = subprocess.Popen([path], cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
  for script, proc in procs.items():
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0 and COMMANDS[script] in out + err, (script, err[-2000:])


def test_console_scripts_import_the_configs_package_as_main_py_does(tmp_path):
  """A config file imports its siblings (`from configs import common`): with `python main.py` the
  repository is on sys.path; the console scripts put the folder above the config's package there
  (cli.put_config_packages_on_path), for a path relative to the repository and a full path from
  any folder alike. A config typo then gets its own error, not a ModuleNotFoundError."""
  config = os.path.join("configs", "rankclip_synthetic.py")
  cases = [
      ([os.path.join(BIN, "rankclip-train"), f"--config={config}", f"--workdir={tmp_path}/a",
        "--config.no_such_field=1"], REPO, "config has no field 'no_such_field'"),
      ([os.path.join(BIN, "rankclip-train"), "--config", os.path.join(REPO, config),
        f"--workdir={tmp_path}/b", "--config.no_such_field=1"], tmp_path,
       "config has no field 'no_such_field'"),
      ([os.path.join(BIN, "rankclip-sweep"), f"--config={os.path.join(REPO, config)}",
        f"--sweep={os.path.join(REPO, 'configs', 'sweeps', 'clip_vs_rankclip.py')}:1",
        f"--workdir={tmp_path}/c", "--emit=commands"], tmp_path, "rankclip,seed=1"),
  ]
  procs = [(subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True), want) for cmd, cwd, want in cases]
  for proc, want in procs:
    out, err = proc.communicate(timeout=180)
    assert want in out + err and "ModuleNotFoundError" not in out + err, err[-2000:]


def test_the_folder_above_a_config_package_goes_on_sys_path(tmp_path, monkeypatch):
  from rankclip_jax import cli
  (tmp_path / "proj" / "cfgs" / "sub").mkdir(parents=True)
  (tmp_path / "proj" / "cfgs" / "__init__.py").write_text("")
  (tmp_path / "proj" / "cfgs" / "sub" / "__init__.py").write_text("")
  (tmp_path / "proj" / "cfgs" / "sub" / "a.py").write_text("")
  (tmp_path / "loose.py").write_text("")
  monkeypatch.setattr(sys, "path", list(sys.path))
  proj = str(tmp_path / "proj")
  argv = ["prog", f"--config={proj}/cfgs/sub/a.py:3", "--sweep", str(tmp_path / "loose.py"),
          "--workdir=/nonexistent.py", "--other", f"{proj}/cfgs/sub/a.py"]
  assert cli.put_config_packages_on_path(argv) == [proj, str(tmp_path)]
  assert sys.path[:2] == [str(tmp_path), proj]
  assert cli.put_config_packages_on_path(argv) == []  # already there
