"""What a run's folder holds besides main.py's own files: the sweep's log of the current attempt
(log.txt), the logs of earlier ones (log.1.txt, log.2.txt, ... oldest first), and how to read
them."""

from __future__ import annotations

import os
from typing import Optional

LOG = "log.txt"


def old_logs(run_dir: str) -> list[str]:
  """The logs of earlier attempts, oldest first (log.1.txt, log.2.txt, ...)."""
  if not os.path.isdir(run_dir):
    return []
  found = [f for f in os.listdir(run_dir) if f.startswith("log.") and f.endswith(".txt")
           and f[4:-4].isdigit()]
  return sorted(found, key=lambda f: int(f[4:-4]))


def keep_previous_log(run_dir: str) -> Optional[str]:
  """Moves log.txt (an earlier attempt's) to the next free log.<k>.txt; returns that name."""
  current = os.path.join(run_dir, LOG)
  if not os.path.exists(current):
    return None
  k = 1 + max([int(f[4:-4]) for f in old_logs(run_dir)], default=0)
  name = f"log.{k}.txt"
  os.replace(current, os.path.join(run_dir, name))
  return name


def checkpoint_steps(run_dir: str) -> list[int]:
  folder = os.path.join(run_dir, "checkpoints")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def last_error(log_path: str) -> str:
  """The `Error:` line of a failed run's log, else its last line."""
  try:
    with open(log_path, encoding="utf-8", errors="replace") as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return "(no log)"
  errors = [line for line in lines if line.startswith("Error:")]
  return (errors or lines or ["(empty log)"])[-1][:500]
