"""The report's pictures (PNG, matplotlib imported here only): each headline metric per group with
its interval, every seed's value and the chance level; the mean training loss curve per group; per
axis of a sweep with axes, each method's difference from the baseline at every axis value."""

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
  baselines = set(rep["compared_with"].values())  # with axes, one per cell
  fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6))
  for x, g in enumerate(names):
    s = rep["groups"][g]["metrics"][metric]
    seeds = list(s["values"].values())
    ax.plot([x] * len(seeds), seeds, "o", color="0.6", markersize=3, zorder=1)
    if s["mean"] is None:
      continue
    lo, hi = s["ci"] if s["ci"] else (s["mean"], s["mean"])
    ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o",
                color="C3" if g in baselines else "C0", capsize=4, zorder=2)
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


def axis_picture(path: str, axis: str, rows: list[dict[str, Any]], rep: dict[str, Any]) -> None:
  """One panel per headline metric: x the axis's values in the sweep's order (categories, so
  strings work), y each method minus the baseline in that value's cell with its interval over
  paired seeds as error bars, and the zero line."""
  plt = _pyplot()
  metrics = rep["headline"]
  methods = list(dict.fromkeys(m for row in rows for m in row["methods"]))
  ncols = min(len(metrics), 4)
  nrows = -(-len(metrics) // ncols)
  fig, panels = plt.subplots(nrows, ncols, squeeze=False, figsize=(
      max(2.8, 0.6 * len(rows) + 1.6) * ncols, 2.8 * nrows + 0.5))
  shift = [0.0] if len(methods) < 2 else [0.25 * (j / (len(methods) - 1) - 0.5)
                                           for j in range(len(methods))]
  for k, metric in enumerate(metrics):
    ax = panels[k // ncols][k % ncols]
    ax.axhline(0.0, color="0.4", linewidth=1)
    for j, method in enumerate(methods):
      for x, row in enumerate(rows):
        d = row["methods"].get(method, {}).get("metrics", {}).get(metric)
        if d is None or d["mean"] is None:
          continue
        lo, hi = d["ci"] if d["ci"] else (d["mean"], d["mean"])
        ax.errorbar([x + shift[j]], [d["mean"]], yerr=[[d["mean"] - lo], [hi - d["mean"]]],
                    fmt="o", color=f"C{j}", capsize=4, label=method if x == 0 else None)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([str(row["value"]) for row in rows], fontsize=8)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_xlabel(axis, fontsize=8)
    ax.set_title(metric, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    if k % ncols == 0:
      ax.set_ylabel(f"difference from {rep['baseline']}", fontsize=8)
  for k in range(len(metrics), nrows * ncols):
    panels[k // ncols][k % ncols].set_visible(False)
  if len(methods) > 1:
    panels[0][0].legend(loc="best", fontsize=7)
  fig.suptitle(f"{axis}: {', '.join(methods)} - {rep['baseline']}, mean and "
               f"{rep['confidence']:.0%} t interval over paired seeds", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_axis_pictures(rep: dict[str, Any], folder: str) -> dict[str, str]:
  """{axis: the PNG written}, one per axis of the report (nothing without finished runs or
  headline metrics)."""
  out = {}
  if not rep["finished"] or not rep["headline"] or not rep.get("axes"):
    return out
  os.makedirs(folder, exist_ok=True)
  for axis, rows in rep["axes"].items():
    out[axis] = os.path.join(folder, "axis_" + _file_name(axis))
    axis_picture(out[axis], axis, rows, rep)
  return out


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
