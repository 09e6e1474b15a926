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
