"""Huge pages for XLA's per-step working memory on CPU runs (Linux with glibc).

On a CPU, XLA allocates a compiled program's temporary buffer (a training step's activations and
gradients: ~180 MiB for the demo's step) with `posix_memalign` at every execution, from one of its
worker threads, and frees it at the end. glibc serves an allocation that large with an `mmap` of
its own (a worker thread's arena holds at most 64 MiB; above its threshold, at most 32 MiB, the main
heap maps large blocks apart) and unmaps it when it is freed, so every step faults each 4 KiB page
of the buffer in again: ~46,000 page faults and about a quarter of the demo process's CPU time
spent in the kernel. glibc's `glibc.malloc.hugetlb=1` tunable has it ask the kernel for transparent
huge pages (2 MiB) on those mappings: measured, 65 times fewer page faults in a demo run, its
training 0.95x as long (1.08x the examples/s once running), the tiny model's step in
benchmarks/train_bench.py 0.84x as long, the results identical (docs/performance.md, "The
huge-page restart").

glibc reads its tunables only when a process starts, so the training command (`run()` of
rankclip_jax/main.py) starts itself again, at once and under the same process id, with
`GLIBC_TUNABLES` extended, when all of these hold: Linux with glibc 2.35 or newer (the tunable's
first release), the kernel's transparent huge pages set to `madvise` (with `always` the mappings get
huge pages anyway, with `never` they cannot), JAX going to run on the CPU (the first of
JAX_PLATFORMS is `cpu`, or it is unset and no GPU or TPU plugin is installed), and GLIBC_TUNABLES
not already naming `glibc.malloc.hugetlb`: `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps glibc's
default.

This module imports nothing heavy (no JAX), so that the decision costs nothing.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
# Packages whose presence means JAX may pick an accelerator when no platform is named.
_ACCELERATOR_PACKAGES = ("jax_plugins", "libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin",
                         "jax_rocm7_plugin")


def thp_mode() -> Optional[str]:
  """The kernel's transparent huge page mode ("always", "madvise" or "never"), None off Linux."""
  try:
    text = open(_THP_MODE_FILE).read()
  except OSError:
    return None
  chosen = [w for w in text.split() if w.startswith("[")]
  return chosen[0].strip("[]") if chosen else None


def runs_on_cpu(env: Mapping[str, str]) -> bool:
  """Whether JAX's default backend will be the CPU, decided without importing JAX."""
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PACKAGES)


def wants_huge_pages(env: Mapping[str, str], libc: tuple[str, str], mode: Optional[str]) -> bool:
  """Whether a process with this environment, C library (platform.libc_ver()) and transparent
  huge page mode should start again with the tunable (see the module docstring)."""
  name, version = libc
  try:
    new_enough = name == "glibc" and tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)
  except ValueError:
    new_enough = False
  return (new_enough and mode == "madvise" and TUNABLE not in env.get("GLIBC_TUNABLES", "")
          and runs_on_cpu(env))


def with_tunable(env: Mapping[str, str]) -> dict[str, str]:
  """`env` with glibc.malloc.hugetlb=1 added to GLIBC_TUNABLES (colon-separated)."""
  out = dict(env)
  out["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]))
  return out


def initial_environment() -> dict[str, str]:
  """The environment this process was started with (Linux: /proc/self/environ), without what
  imported libraries have set in os.environ since."""
  try:
    with open("/proc/self/environ", "rb") as f:
      items = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
  except OSError:
    return dict(os.environ)
  return {os.fsdecode(k): os.fsdecode(v) for k, v in items}


def restart_with_huge_pages() -> None:
  """Replaces this process (os.execve: the same process id, command line and starting environment)
  by one started with the tunable when wants_huge_pages(); returns, doing nothing, otherwise. Call
  it first thing."""
  if not (sys.platform.startswith("linux") and sys.executable):
    return
  env = initial_environment()
  if not wants_huge_pages(env, platform.libc_ver(), thp_mode()):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], with_tunable(env))
