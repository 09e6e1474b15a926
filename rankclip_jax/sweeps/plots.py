"""The report's pictures (PNG, matplotlib imported here only): each headline metric per group with
its interval, every seed's value and the chance level; the mean training loss curve per group."""

from __future__ import annotations

import os
import re
from typing import Any


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _file_name(key: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".png"


def metric_picture(path: str, metric: str, rep: dict[str, Any]) -> None:
  plt = _pyplot()
  names = list(rep["groups"])
  fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6))
  for x, g in enumerate(names):
    s = rep["groups"][g]["metrics"][metric]
    seeds = list(s["values"].values())
    ax.plot([x] * len(seeds), seeds, "o", color="0.6", markersize=3, zorder=1)
    if s["mean"] is None:
      continue
    lo, hi = s["ci"] if s["ci"] else (s["mean"], s["mean"])
    ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o",
                color="C0" if g != rep["baseline"] else "C3", capsize=4, zorder=2)
  chance = rep["chance"].get(metric)
  if chance is not None:
    ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label=f"chance {chance:.3f}")
    ax.legend(loc="best", fontsize=8)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel(metric)
  ax.set_title(f"{metric}: mean and {rep['confidence']:.0%} t interval over seeds", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def loss_picture(path: str, rep: dict[str, Any], tag: str) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.0, 3.8))
  for g, curve in rep["train_loss"].items():
    if curve["steps"]:
      ax.plot(curve["steps"], curve["mean"], label=f"{g} ({curve['runs']} runs)", linewidth=1.2)
  ax.set_xlabel("step")
  ax.set_ylabel(f"mean {tag}")
  ax.legend(loc="best", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_pictures(rep: dict[str, Any], folder: str, loss_tag: str) -> dict[str, str]:
  """{headline metric or the loss tag: the PNG written} (nothing without finished runs)."""
  out = {}
  if not rep["finished"]:
    return out
  os.makedirs(folder, exist_ok=True)
  for metric in rep["headline"]:
    out[metric] = os.path.join(folder, _file_name(metric))
    metric_picture(out[metric], metric, rep)
  if any(c["steps"] for c in rep["train_loss"].values()):
    out[loss_tag] = os.path.join(folder, _file_name(loss_tag))
    loss_picture(out[loss_tag], rep, loss_tag)
  return out
