"""The sweep's report, <workdir>/report.json and report.md (pictures in <workdir>/report_pictures/),
from the plan (sweep.json) and what the run folders hold:

- per group (the runs that differ only in their seed) and metric of results.json: n, mean, std and
  the 95% Student t interval over seeds; an accuracy `<eval>/top<k>` beside its chance level (k
  times the `<eval>/chance` that the zero-shot evaluators write, at most 1);
- beside the seeds' std, the evaluation noise of an accuracy or a recall: the binomial standard
  error sqrt(p (1 - p) / N) of one run's value on its N evaluation examples (root mean square over
  the group's runs), so that a reader sees whether the evaluation sets are large enough (its error
  well below the spread over seeds);
- per group against the sweep's baseline group: the difference paired by seed, with its interval;
  with axes (grid.Sweep.axes), against the baseline's group of the group's own cell, and per axis,
  per axis value and per method the difference from the baseline at that value, with the chance
  level and the evaluation noise of one seed's difference (pictured per axis);
- the mean training loss curve per group (TensorBoard's train/loss of each finished run);
- the runs still missing, each with what its folder says (never started, interrupted at a
  checkpoint, failed with its error line).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Optional, Sequence

from rankclip_jax.sweeps import grid, plots, rundir, stats
from rankclip_jax.sweeps.grid import SweepError
from rankclip_jax.sweeps.plan import PLAN_FILE, RESULTS_FILE, Plan

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PICTURES = "report_pictures"
LOSS_TAG = "train/loss"
_NOT_METRICS = re.compile(r"^(step|preempted)$|/(chance|num_\w+|skipped)$")  # counts, not metrics
_TOPK = re.compile(r"^(.*)/top(\d+)$")
_RECALL = re.compile(r"^(.*)/(i2t|t2i)_r\d+$")
_RECALL_COUNT = {"i2t": "num_images", "t2i": "num_texts"}  # what a recall is a share of


def read_results(run_dir: str) -> dict[str, Any]:
  with open(os.path.join(run_dir, RESULTS_FILE), encoding="utf-8") as f:
    return json.load(f)


def metric_keys(results: dict[str, Any]) -> list[str]:
  return sorted(k for k, v in results.items() if isinstance(v, (int, float))
                and not isinstance(v, bool) and not _NOT_METRICS.search(k))


def headline_keys(results: dict[str, Any], headline: Sequence[str] = ()) -> list[str]:
  """The sweep's headline metrics, default every `*/top1` and `retrieval/*_r1`, among `results`."""
  keys = metric_keys(results)
  if headline:
    return [k for k in headline if k in keys]
  return [k for k in keys if k.endswith("/top1") or re.search(r"_r1$", k)]


def chance_level(metric: str, results: dict[str, Any]) -> Optional[float]:
  m = _TOPK.match(metric)
  if m and f"{m.group(1)}/chance" in results:
    return min(1.0, int(m.group(2)) * float(results[f"{m.group(1)}/chance"]))
  return None


def evaluation_examples(metric: str, results: dict[str, Any]) -> Optional[int]:
  """N, the number of evaluation examples an accuracy or recall is a share of (None: unknown)."""
  topk, recall = _TOPK.match(metric), _RECALL.match(metric)
  if topk:
    n = results.get(f"{topk.group(1)}/num_examples")
  elif recall:
    n = results.get(f"{recall.group(1)}/{_RECALL_COUNT[recall.group(2)]}")
  else:
    return None
  return int(n) if isinstance(n, (int, float)) and n > 0 else None


def evaluation_se(metric: str, results: dict[str, Any]) -> Optional[float]:
  """One run's binomial standard error of an accuracy or recall: sqrt(p (1 - p) / N)."""
  n = evaluation_examples(metric, results)
  p = results.get(metric)
  if n is None or not isinstance(p, (int, float)) or not 0 <= p <= 1:
    return None
  return math.sqrt(p * (1 - p) / n)


def logged_scalars(run_dir: str, tag: str = LOSS_TAG) -> dict[int, float]:
  """{step: value} of a scalar in the run's TensorBoard event files (TensorBoard's own reader,
  without TensorFlow); the last value per step (a resumed run logs again after its checkpoint)."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(run_dir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  tags = acc.Tags()
  if tag in tags.get("tensors", ()):
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
  if tag in tags.get("scalars", ()):
    return {e.step: float(e.value) for e in acc.Scalars(tag)}
  return {}


def run_status(plan: Plan, run) -> str:
  """What a run's folder says: finished, failed (its error), interrupted, started, not started."""
  run_dir = plan.run_dir(run)
  if plan.finished(run):
    return "finished"
  log = os.path.join(run_dir, rundir.LOG)
  error = rundir.last_error(log) if os.path.exists(log) else ""
  if error.startswith("Error:"):
    return f"failed: {error}"
  steps = rundir.checkpoint_steps(run_dir)
  if steps:
    return f"interrupted at checkpoint {steps[-1]}"
  return "started, no checkpoint yet" if os.path.exists(log) else "not started"


def _mean_curve(curves: list[dict[int, float]]) -> dict[str, list]:
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  return {"steps": steps, "mean": [sum(c[s] for c in curves) / len(curves) for s in steps],
          "runs": len(curves)}


def _rms(xs: Optional[list[float]]) -> Optional[float]:
  return math.sqrt(math.fsum(x * x for x in xs) / len(xs)) if xs else None


def _cells(plan: Plan, groups: Sequence[str]) -> dict[str, dict[str, str]]:
  """{cell: {method: group}} of a plan with axes (grid.cells), {} without."""
  if not plan.axes:
    return {}
  try:
    return grid.cells(groups, plan.baseline, plan.axes)
  except SweepError as e:
    raise SweepError(f"{os.path.join(plan.workdir, PLAN_FILE)}: {e}") from None


def compared_with(plan: Plan, groups: Sequence[str]) -> dict[str, str]:
  """{group: the group its differences are against}: the baseline group, or with axes the
  baseline's group of the group's own cell; the baseline groups themselves have none."""
  if plan.axes:
    return {g: methods[plan.baseline] for methods in _cells(plan, groups).values()
            for method, g in methods.items() if method != plan.baseline}
  if plan.baseline in groups:
    return {g: plan.baseline for g in groups if g != plan.baseline}
  return {}


def _combined(a: Optional[float], b: Optional[float]) -> Optional[float]:
  """The standard error of a difference of two independent values: sqrt(a^2 + b^2)."""
  return None if a is None or b is None else math.sqrt(a * a + b * b)


def _axes(plan: Plan, cells: dict[str, dict[str, str]], groups: dict[str, Any],
          differences: dict[str, Any], ordered: Sequence[str]) -> dict[str, list]:
  """{axis: [{value, cell, baseline_group, methods: {method: {group, metrics: {metric: the
  paired difference from the cell's baseline group, its chance level and eval_se}}}}, ...]}, the
  axis values in the sweep's order, the metrics in `ordered`'s. eval_se is the evaluation noise of
  one seed's difference: the two groups' eval SE combined, sqrt(a^2 + b^2)."""
  methods = list(dict.fromkeys(m for by_method in cells.values() for m in by_method
                               if m != plan.baseline))
  out = {}
  for axis, pairs in plan.axes.items():
    rows = []
    for value, cell in pairs:
      base = cells[cell][plan.baseline]
      row = {"value": value, "cell": cell, "baseline_group": base, "methods": {}}
      for method in methods:
        g = cells[cell].get(method)
        if g is None:
          continue
        row["methods"][method] = {"group": g, "metrics": {
            m: dict(differences[g][m], chance=groups[g]["metrics"][m]["chance"],
                    eval_se=_combined(groups[g]["metrics"][m]["eval_se"],
                                      groups[base]["metrics"][m]["eval_se"]))
            for m in ordered}}
      rows.append(row)
    out[axis] = rows
  return out


def build(workdir: str) -> dict[str, Any]:
  """The report's numbers (report.json's content, without the pictures)."""
  plan = Plan.load(workdir)
  results = {r.name: read_results(plan.run_dir(r)) for r in plan.runs if plan.finished(r)}
  metrics = sorted(set().union(*(metric_keys(v) for v in results.values()))) if results else []
  chance = {}
  for res in results.values():
    for m in metrics:
      level = chance_level(m, res)
      if level is not None:
        chance.setdefault(m, level)
  groups: dict[str, dict[str, Any]] = {}
  for r in plan.runs:
    g = groups.setdefault(r.group, {"runs": [], "seeds": [], "values": {}, "eval_se": {}})
    g["runs"].append(r.name)
    if r.name in results:
      g["seeds"].append(r.seed)
      for m in metric_keys(results[r.name]):
        g["values"].setdefault(m, {})[r.seed] = float(results[r.name][m])
        se = evaluation_se(m, results[r.name])
        if se is not None:
          g["eval_se"].setdefault(m, []).append(se)
  out_groups, differences, curves = {}, {}, {}
  cells = _cells(plan, list(groups))
  against = compared_with(plan, list(groups))
  for name, g in groups.items():
    out_groups[name] = {
        "runs": g["runs"], "seeds": g["seeds"],
        "metrics": {m: dict(stats.t_interval(list(g["values"].get(m, {}).values())).as_dict(),
                            chance=chance.get(m), eval_se=_rms(g["eval_se"].get(m)),
                            values=g["values"].get(m, {}))
                    for m in metrics}}
    if name in against:
      base = groups[against[name]]
      differences[name] = {}
      for m in metrics:
        summary, seeds = stats.paired_difference(g["values"].get(m, {}),
                                                 base["values"].get(m, {}))
        differences[name][m] = dict(summary.as_dict(), seeds=seeds,
                                    excludes_zero=summary.excludes_zero())
    finished = [plan.run_dir(r) for r in plan.runs if r.group == name and r.name in results]
    curves[name] = _mean_curve([c for c in map(logged_scalars, finished) if c])
  first = next(iter(results.values()), {})
  headline = [m for m in (plan.headline or headline_keys(first)) if m in metrics]
  ordered = headline + [m for m in metrics if m not in headline]
  return {
      "workdir": plan.workdir, "sweep_file": plan.sweep_file, "config": plan.config,
      "common_flags": plan.common_flags, "baseline": plan.baseline,
      "confidence": stats.CONFIDENCE,
      "runs": [{"name": r.name, "group": r.group, "seed": r.seed, "status": run_status(plan, r),
                "overrides": r.overrides} for r in plan.runs],
      "finished": len(results), "total": len(plan.runs),
      "missing": [r.name for r in plan.runs if r.name not in results],
      "metrics": metrics,
      "headline": headline,
      "chance": chance, "groups": out_groups, "differences": differences,
      "compared_with": against,
      "axes": _axes(plan, cells, out_groups, differences, ordered) if plan.axes else {},
      "train_loss": curves,
  }


def _num(x: Optional[float]) -> str:
  return "-" if x is None else f"{x:.4f}"


def _ci(s: dict) -> str:
  return "-" if s.get("ci") is None else f"[{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"


def _ordered_metrics(rep: dict[str, Any]) -> list[str]:
  """The report's headline metrics, then the others."""
  return rep["headline"] + [m for m in rep["metrics"] if m not in rep["headline"]]


def _shown(path: str) -> str:
  """`path` relative to the current folder when it lies inside it (a report run from the
  repository names `configs/...`, committable as it is), else as given."""
  rel = os.path.relpath(path) if os.path.isabs(path) else path
  return path if rel.startswith(os.pardir) else rel


def _difference(d: dict) -> str:
  """A paired difference as `mean [low, high]` (`*`: the interval excludes 0)."""
  if d["mean"] is None:
    return "-"
  if d["ci"] is None:
    return f"{d['mean']:+.4f}"
  return f"{d['mean']:+.4f} {_ci(d)}" + (" *" if d["excludes_zero"] else "")


def _span(xs: Sequence[float]) -> str:
  """`0.0210`, or `0.0210-0.0230` where the values differ."""
  low, high = _num(min(xs)), _num(max(xs))
  return low if low == high else f"{low}-{high}"


def _escaped(value: Any) -> str:
  return str(value).replace("|", "\\|")


def axes_markdown(rep: dict[str, Any]) -> list[str]:
  """Per axis: its picture and a table, a row per axis value (and method), a column per headline
  metric holding the difference from the baseline in that value's cell; then the metrics' chance
  levels and the evaluation noise of one seed's difference."""
  if not rep.get("axes"):
    return []
  pct, base, headline = f"{rep['confidence']:.0%}", rep["baseline"], rep["headline"]
  lines = ["## Along the axes", "",
           f"At each value of an axis, its cell's groups against the `{base}` group of the same "
           f"cell, paired by seed: the mean difference and its {pct} Student t interval (`*`: the "
           "interval excludes 0); `pairs`: the seeds both groups finished.", ""]
  for axis, rows in rep["axes"].items():
    methods = list(dict.fromkeys(m for row in rows for m in row["methods"]))
    several = len(methods) > 1
    lines += [f"### {axis}" + (": " if methods else "") + ", ".join(f"{m} - {base}"
                                                                for m in methods), ""]
    picture = rep.get("axis_pictures", {}).get(axis)
    if picture:
      lines += [f"![{axis}]({picture})", ""]
    columns = [_escaped(axis), "cell"] + (["method"] if several else []) + ["pairs"] + headline
    lines += ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
      for method, d in row["methods"].items():
        ns = sorted({d["metrics"][m]["n"] for m in headline})
        pairs = "-" if not ns else f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
        lines.append("| " + " | ".join(
            [_escaped(row["value"]), f"`{row['cell']}`"] + ([method] if several else [])
            + [pairs] + [_difference(d["metrics"][m]) for m in headline]) + " |")
    chance = [f"`{m}` {_num(rep['chance'][m])}" for m in headline if m in rep["chance"]]
    noise = []
    for m in headline:
      ses = [d["metrics"][m]["eval_se"] for row in rows for d in row["methods"].values()
             if d["metrics"][m]["eval_se"] is not None]
      if ses:
        noise.append(f"`{m}` {_span(ses)}")
    lines += [""] + ([("Chance levels: " + ", ".join(chance) + " (a difference is in the "
                       "metric's own units; each group's level beside chance is in the tables "
                       "below).")] if chance else []) + (
        [("Evaluation noise of one seed's difference (the two groups' `eval SE` combined, "
          "sqrt(a^2 + b^2)), over the axis's cells: " + ", ".join(noise) + ".")] if noise else [])
    lines.append("")
  return lines


def markdown(rep: dict[str, Any]) -> str:
  pct = f"{rep['confidence']:.0%}"
  against = (f"the `{rep['baseline']}` group of the same cell" if rep.get("axes")
             else f"`{rep['baseline']}`")
  lines = [f"# Sweep report: {os.path.basename(rep['sweep_file']) or rep['workdir']}", "",
           f"{rep['finished']} of {rep['total']} runs finished. Config `{_shown(rep['config'])}`"
           + (f" with `{' '.join(rep['common_flags'])}`" if rep["common_flags"] else "") + ".",
           f"Groups are the runs that differ only in their seed; intervals are {pct} Student t "
           "intervals of the mean over seeds; `eval SE` is the evaluation noise of one run's "
           "value (binomial standard error on its evaluation examples, root mean square over "
           "the group), to set beside the seeds' `std`" + (
               f"; differences are against {against}, paired by seed." if
               rep["baseline"] else "."), ""]
  if rep["missing"]:
    lines += ["## Missing runs", ""]
    status = {r["name"]: r["status"] for r in rep["runs"]}
    lines += [f"- `{name}`: {status[name]}" for name in rep["missing"]] + [""]
  lines += axes_markdown(rep)
  ordered = _ordered_metrics(rep)
  for i, m in enumerate(ordered):
    if i == 0:
      lines += ["## Headline metrics", ""]
    if i == len(rep["headline"]):
      lines += ["## Other metrics", ""]
    chance = rep["chance"].get(m)
    lines += [f"### {m}" + (f" (chance {chance:.4f})" if chance is not None else ""), ""]
    picture = rep.get("pictures", {}).get(m)
    if picture:
      lines += [f"![{m}]({picture})", ""]
    head = "| group | n | mean | std | eval SE | " + pct + " CI |"
    rule = "|---|---|---|---|---|---|"
    if rep["baseline"]:
      head += (f" - {rep['baseline']}{' of its cell' if rep.get('axes') else ''} (paired) | "
               f"{pct} CI | pairs |")
      rule += "---|---|---|"
    lines += [head, rule]
    for g, info in rep["groups"].items():
      s = info["metrics"][m]
      row = (f"| {g} | {s['n']} | {_num(s['mean'])} | {_num(s['std'])} | "
             f"{_num(s.get('eval_se'))} | {_ci(s)} |")
      if rep["baseline"]:
        d = rep["differences"].get(g, {}).get(m)
        row += (" (baseline) | | |" if d is None else
                f" {_num(d['mean'])} | {_ci(d)}{' *' if d['excludes_zero'] else ''} | {d['n']} |")
      lines.append(row)
    lines.append("")
  if rep["baseline"]:
    lines += [f"`*`: the {pct} interval of the paired difference excludes 0.", ""]
  if rep.get("pictures", {}).get(LOSS_TAG):
    lines += ["## Training loss", "", f"Mean {LOSS_TAG} over each group's finished runs.", "",
              f"![{LOSS_TAG}]({rep['pictures'][LOSS_TAG]})", ""]
  lines += ["## Runs", "", "| run | group | seed | status |", "|---|---|---|---|"]
  lines += [f"| {r['name']} | {r['group']} | {r['seed']} | {r['status']} |" for r in rep["runs"]]
  return "\n".join(lines) + "\n"


def side_by_side(rep: dict[str, Any]) -> str:
  """A report's finished runs next to each other, one column per run, its headline metrics first
  and the chance levels beside them: what a sweep of a few runs prints at its end, e.g. CLIP
  against RankCLIP."""
  runs = [r for r in rep["runs"] if r["status"] == "finished"]
  if not runs:
    return ""
  lines = ["| metric | " + " | ".join(r["name"] for r in runs) + " | chance |",
           "|---|" + "---|" * (len(runs) + 1)]
  for m in _ordered_metrics(rep):
    values = [rep["groups"][r["group"]]["metrics"][m]["values"].get(r["seed"]) for r in runs]
    lines.append(f"| {m} | " + " | ".join(map(_num, values)) + f" | {_num(rep['chance'].get(m))} |")
  return "\n".join(lines)


def write_report(workdir: str) -> dict[str, Any]:
  """Builds the report and writes report.json, report.md and the pictures; returns the report."""
  rep = build(workdir)
  folder = os.path.join(rep["workdir"], PICTURES)
  for key, pictures in (("pictures", plots.write_pictures(rep, folder, LOSS_TAG)),
                        ("axis_pictures", plots.write_axis_pictures(rep, folder))):
    rep[key] = {k: os.path.relpath(v, rep["workdir"]) for k, v in pictures.items()}
  for name, text in ((REPORT_JSON, json.dumps(rep, indent=2)), (REPORT_MD, markdown(rep))):
    path = os.path.join(rep["workdir"], name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  return rep
