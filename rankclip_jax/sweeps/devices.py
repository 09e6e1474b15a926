"""Which devices each of K concurrent runs gets, found without starting JAX in the sweep's own
process (a JAX process holds its GPUs' memory, a TPU host's chips, for its whole life).

On a GPU host the visible GPUs ($CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`) are split into K
equal slices, one per slot, handed to the runs through CUDA_VISIBLE_DEVICES. Elsewhere every run
sees all of this machine's devices: on CPU, K processes share the cores (and each has the
$XLA_FLAGS --xla_force_host_platform_device_count devices, default 1).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from typing import Optional

from rankclip_jax.sweeps.grid import SweepError


@dataclasses.dataclass
class Slot:
  """Where one run at a time executes: the environment variables it adds, and its description."""
  env: dict[str, str]
  description: str


def visible_gpus() -> list[str]:
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() in ("cpu", "tpu"):
    return []
  given = os.environ.get("CUDA_VISIBLE_DEVICES")
  if given is not None:
    return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def cpu_device_count() -> int:
  m = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
  return int(m.group(1)) if m else 1


def slots(parallel: int, gpus_per_run: int = 0) -> tuple[list[Slot], Optional[int]]:
  """(one Slot per concurrent run, the number of devices each run has, None when unknown)."""
  if parallel < 1:
    raise SweepError(f"--parallel={parallel} must be >= 1.")
  gpus = visible_gpus()
  if gpus:
    each = gpus_per_run or len(gpus) // parallel
    if each < 1 or each * parallel > len(gpus):
      raise SweepError(f"--parallel={parallel}" + (f" --gpus_per_run={gpus_per_run}" if
                       gpus_per_run else "") + f": this host has {len(gpus)} GPU(s) "
                       f"({','.join(gpus)}), not enough for {parallel} run(s) at a time with "
                       f"{max(each, 1)} each.")
    out = []
    for k in range(parallel):
      mine = ",".join(gpus[k * each:(k + 1) * each])
      out.append(Slot({"CUDA_VISIBLE_DEVICES": mine}, f"GPU {mine}"))
    return out, each
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() in ("", "cpu") and not _has_tpu():
    n = cpu_device_count()
    return [Slot({}, f"CPU ({n} device{'s' if n > 1 else ''})") for _ in range(parallel)], n
  if parallel > 1:
    raise SweepError(f"--parallel={parallel}: only GPU and CPU hosts split their devices between "
                     "runs; on this host the runs go one at a time (--parallel=1), or use "
                     "--emit=slurm / --emit=commands.")
  return [Slot({}, "this host's devices")], None


def _has_tpu() -> bool:
  return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
