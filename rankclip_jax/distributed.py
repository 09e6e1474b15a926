"""Multi-process JAX: one Python process per host (or per GPU node), joined by JAX's own runtime.

    distributed.initialize()                                   # TPU VM slices, SLURM: detected
    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # explicit

Everything after that is unchanged code: `jax.devices()` lists the devices of every process, the
mesh spans them all, each process feeds its own rows of the global batch
(`jax.make_array_from_process_local_data`) from its own share of each epoch
(`jax.process_index()`), process 0 alone writes metrics and results, and Orbax writes and reads
checkpoints from every process into one shared directory.

When to initialise:
- explicit: a coordinator address (flag `--coordinator_address`, or $JAX_COORDINATOR_ADDRESS) with the
  process count and this process's id (flags, or $JAX_NUM_PROCESSES / $JAX_PROCESS_ID);
- detected: JAX's cluster detection finds a multi-host TPU VM slice (Cloud TPU metadata) or a SLURM
  job with more than one task ($SLURM_NTASKS > 1) and fills everything in;
- otherwise: a single process, nothing to do.
On CPU (tests, laptops) the processes exchange data over gloo (slow at all-reduces once a
reduce-scatter has run, so the sharded loss avoids reduce-scatters there: losses/rowwise.py).
"""

from __future__ import annotations

import os
from typing import Optional

import jax
from absl import flags, logging

# Command-line flags of the entry points that use this module (main.py, rankclip_jax.evaluate).
COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process runs: host:port of process 0 (TPU VM slices and "
    "SLURM jobs are detected without it; see rankclip_jax/distributed.py).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: process count.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's id.")


def _multi_host_environment() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h.strip()]) > 1


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Joins this process to the others (see the module docstring); returns whether it did.

  Must run before anything touches a JAX device.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address is None and not _multi_host_environment():
    if num_processes not in (None, 1):
      raise ValueError(f"num_processes={num_processes} needs a coordinator address "
                       "(--coordinator_address=<host:port> of process 0).")
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError(
        f"--coordinator_address={coordinator_address} also needs --num_processes and --process_id "
        "(or $JAX_NUM_PROCESSES and $JAX_PROCESS_ID).")
  # Only the CPU backend's collectives: harmless beside a GPU/TPU, required for CPU processes.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("Process %d of %d: %d local of %d devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True



def initialize_from_flags() -> bool:
  """initialize() with --coordinator_address, --num_processes and --process_id."""
  return initialize(COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value)
