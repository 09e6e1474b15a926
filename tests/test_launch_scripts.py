"""The launch scripts (launch/*.sh, launch/slurm.sbatch) pass every value through exactly, whatever
it holds: quotes, `;`, `$(...)`, backquotes, spaces, a newline, an empty argument. Each script runs
under bash with stand-ins first on PATH (gcloud, git, pip, python, srun) that record their
arguments; for launch/tpu_vm.sh the command it gives `gcloud ... ssh --command=` is then run under
`bash -c`, as a TPU worker's shell would, with the same stand-ins. A payload that escaped its
quotes would create a marker file."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Records its name and arguments: the count first, so that empty arguments survive.
RECORDER = '#!/bin/bash\nprintf "%s\\0" "$#" "$(basename "$0")" "$@" >> "$CALLS"\n'
# git clone also makes the folder the workers' command goes on with.
GIT = RECORDER + ('if [ "$1" = clone ]; then mkdir -p "${@: -1}/.venv/bin"; '
                  ': > "${@: -1}/.venv/bin/activate"; fi\n')
SRUN = RECORDER + 'shift\nexec "$@"\n'  # drops --kill-on-bad-exit=1, runs the rest


def _payloads(marker):
  touch = f"touch {marker}"
  return {"quote": f"a'; {touch}; '", "double": f'b"; {touch}; "', "subst": f"$({touch})",
          "backquote": f"`{touch}`", "spaces": "x  y z", "newline": f"n\n{touch}\n",
          "backslash": "c\\'d\\", "glob": "*", "tilde": "~"}


def _stand_ins(tmp_path, **scripts):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name, text in scripts.items():
    (bin_dir / name).write_text(text)
    os.chmod(bin_dir / name, 0o755)
  return bin_dir


def _calls(path):
  """[[name, arg, ...], ...] in the order the stand-ins ran."""
  if not os.path.exists(path):
    return []
  fields = open(path, "rb").read().decode().split("\0")[:-1]
  out, i = [], 0
  while i < len(fields):
    n = int(fields[i])
    out.append(fields[i + 1:i + 2 + n])
    i += 2 + n
  return out


def _env(tmp_path, bin_dir, **extra):
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
              CALLS=str(tmp_path / "calls"), **extra)


def _jax_version():
  with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
    return next(line.strip()[len("jax=="):] for line in f if line.startswith("jax=="))


@pytest.mark.parametrize("overrides", [[], ["--config.seed=3"], "payloads"])
def test_tpu_vm_passes_every_value_to_the_workers_exactly(tmp_path, overrides):
  marker = tmp_path / "pwned"
  p = _payloads(marker)
  config, workdir = f"configs/{p['quote']}{p['subst']}.py", f"gs://b/{p['spaces']}{p['backquote']}"
  repo_url, rev = f"https://h/r{p['quote']}{p['double']}", f"v{p['subst']}{p['newline']}"
  if overrides == "payloads":
    overrides = [f"--config.data.train.path={v}" for v in p.values()] + [""]
  bin_dir = _stand_ins(tmp_path, gcloud=RECORDER, git=GIT, pip=RECORDER, python=RECORDER,
                       python3=RECORDER)
  env = _env(tmp_path, bin_dir, REPO_URL=repo_url, REV=rev)
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), "tpu-1", "zone-a",
                        "v4-8", config, workdir, *overrides], env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  ssh = [c for c in _calls(tmp_path / "calls") if c[:5] == ["gcloud", "compute", "tpus",
                                                              "tpu-vm", "ssh"]]
  assert len(ssh) == 1 and ssh[0][5:8] == ["tpu-1", "--zone=zone-a", "--worker=all"], ssh
  remote = ssh[0][8]
  assert remote.startswith("--command=")
  assert not marker.exists()
  (tmp_path / "calls").unlink()
  # What each worker runs, in a home folder of its own.
  home = tmp_path / "worker"
  home.mkdir()
  out = subprocess.run(["bash", "-c", remote[len("--command="):]], cwd=home, env=env,
                       capture_output=True, text=True, timeout=60)
  assert not marker.exists(), "a value ran as code on the worker"
  assert out.returncode == 0, out.stderr
  assert _calls(tmp_path / "calls") == [
      ["git", "clone", "-q", "--", repo_url, "rankclip_jax"],
      ["git", "fetch", "-q", "origin"],
      ["git", "checkout", "-q", rev],
      ["pip", "install", "-q", "-r", "requirements.txt", f"jax[tpu]=={_jax_version()}"],
      ["python", "main.py", f"--config={config}", f"--workdir={workdir}", *overrides]]


@pytest.mark.parametrize("name,value", [("REV", "--upload-pack=touch x"), ("REPO_URL", "-u"),
                                        ("REV", "-b")])
def test_tpu_vm_refuses_a_revision_or_url_git_would_take_as_an_option(tmp_path, name, value):
  bin_dir = _stand_ins(tmp_path, gcloud=RECORDER)
  env = _env(tmp_path, bin_dir, REPO_URL="https://h/r", REV="v1")
  env[name] = value
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), "tpu-1", "zone-a",
                        "v4-8", "configs/c.py", "gs://b/w"], env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 2 and out.stderr.startswith(f"Error: {name}="), out.stderr
  assert _calls(tmp_path / "calls") == []  # no slice made, nothing run


def test_local_and_slurm_scripts_pass_every_value_exactly(tmp_path):
  marker = tmp_path / "pwned"
  values = list(_payloads(marker).values())
  config, workdir, overrides = values[0], values[2], values[1:] + [""]
  bin_dir = _stand_ins(tmp_path, python=RECORDER, srun=SRUN)
  env = _env(tmp_path, bin_dir)
  want = ["python", "main.py", f"--config={config}", f"--workdir={workdir}", *overrides]
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), config, workdir,
                        *overrides], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert _calls(tmp_path / "calls") == [want]
  (tmp_path / "calls").unlink()
  submit = tmp_path / "submit"
  (submit / ".venv" / "bin").mkdir(parents=True)
  (submit / ".venv" / "bin" / "activate").write_text("")
  shutil.copy(os.path.join(REPO, "launch", "slurm.sbatch"), tmp_path / "job.sbatch")
  out = subprocess.run(["bash", str(tmp_path / "job.sbatch"), config, workdir, *overrides],
                       env=dict(env, SLURM_SUBMIT_DIR=str(submit)), capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert _calls(tmp_path / "calls") == [["srun", "--kill-on-bad-exit=1", *want],
                                        want]
  assert not marker.exists()
