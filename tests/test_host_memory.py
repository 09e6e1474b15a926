"""rankclip_jax/host_memory.py: when the training command starts itself again with glibc's huge-page
tunable, and what the tunable does to a CPU program's large per-execution buffer (each case in a
fresh process: glibc reads its tunables only at start-up)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from rankclip_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = ("glibc", "2.36")


def _cpu(**env):
  return dict({"JAX_PLATFORMS": "cpu"}, **env)


@pytest.mark.parametrize("env,libc,mode,want", [
    (_cpu(), GLIBC, "madvise", True),
    (_cpu(), ("glibc", "2.35"), "madvise", True),
    (_cpu(), ("glibc", "2.31"), "madvise", False),  # no such tunable before 2.35
    (_cpu(), ("", ""), "madvise", False),  # musl and others
    (_cpu(), GLIBC, "always", False),  # huge pages already
    (_cpu(), GLIBC, "never", False),  # none to be had
    (_cpu(), GLIBC, None, False),  # not Linux
    (_cpu(GLIBC_TUNABLES="glibc.malloc.hugetlb=0"), GLIBC, "madvise", False),  # the user's choice
    (_cpu(GLIBC_TUNABLES="glibc.malloc.hugetlb=1"), GLIBC, "madvise", False),  # already there
    ({"JAX_PLATFORMS": "cuda,cpu"}, GLIBC, "madvise", False),
    ({"JAX_PLATFORMS": "tpu"}, GLIBC, "madvise", False),
])
def test_when_the_command_starts_again_with_huge_pages(env, libc, mode, want):
  assert host_memory.wants_huge_pages(env, libc, mode) is want


def test_the_tunable_is_added_to_the_users_own():
  assert host_memory.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  got = host_memory.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
  assert got == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "b"}


_RESTART = r"""
import os, sys
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:],
      os.environ.get("SET_BY_AN_IMPORT"), flush=True)
os.environ["SET_BY_AN_IMPORT"] = "1"  # not the user's: the second start must not see it
from rankclip_jax import host_memory
host_memory.restart_with_huge_pages()
print("on", os.getpid(), flush=True)
"""


def _python(args, **env) -> subprocess.CompletedProcess:
  clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env=dict(clean, **env))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


needs_madvise = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and host_memory.wants_huge_pages(
        _cpu(), platform.libc_ver(), host_memory.thp_mode())),
    reason="the restart needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode")


@needs_madvise
def test_the_process_starts_again_once_with_its_arguments_and_process_id():
  lines = _python(["-c", _RESTART, "--a=1", "b"], JAX_PLATFORMS="cpu").stdout.splitlines()
  first, second, on = lines
  pid = first.split()[1]
  assert first == f"start {pid}  ['--a=1', 'b'] None"
  # The same process, its command line and the environment it started with, plus the tunable.
  assert second == f"start {pid} glibc.malloc.hugetlb=1 ['--a=1', 'b'] None"
  assert on == f"on {pid}"  # once: the second start found the tunable and went on
  # Where it is not wanted, nothing happens.
  lines = _python(["-c", _RESTART], JAX_PLATFORMS="cpu",
                  GLIBC_TUNABLES="glibc.malloc.hugetlb=0").stdout.splitlines()
  assert len(lines) == 2 and lines[0].endswith("glibc.malloc.hugetlb=0 [] None")


_PAGE_FAULTS = r"""
import json, resource
import jax, jax.numpy as jnp
x = jnp.ones((20 * 2**20,), jnp.float32)   # 80 MiB: glibc maps a block this large apart
f = jax.jit(lambda v: v * 2.0 + 1.0)        # a new 80 MiB buffer at every execution
for _ in range(3):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"faults": faults, "pages": x.nbytes // 4096}))
"""


@needs_madvise
def test_with_the_tunable_a_large_buffer_is_faulted_in_huge_pages():
  def faults(tunable):
    out = _python(["-c", _PAGE_FAULTS], JAX_PLATFORMS="cpu", GLIBC_TUNABLES=tunable).stdout
    return json.loads(out.strip().splitlines()[-1])
  plain = faults("glibc.malloc.hugetlb=0")
  huge = faults("glibc.malloc.hugetlb=1")
  # glibc's default: every 4 KiB page of each new 80 MiB buffer is faulted in.
  assert plain["faults"] > 0.5 * plain["pages"], plain
  # Huge pages: 2 MiB at a fault (the kernel may fall back to small pages for a few).
  assert huge["faults"] < 0.1 * huge["pages"], huge


def test_the_training_command_starts_with_it(monkeypatch):
  from rankclip_jax import main as train_command

  class Restarted(Exception):
    pass

  def restart():
    raise Restarted

  monkeypatch.setattr(host_memory, "restart_with_huge_pages", restart)
  with pytest.raises(Restarted):  # before the command line is even read
    train_command.run()
