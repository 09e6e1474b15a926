"""The runs of a sweep, written as override dicts over dotted config fields and combined with four
helpers (in the spirit of flax examples' `get_hyper`):

  values("seed", range(5))                          5 runs: seed=0 ... seed=4
  values(("loss.cross_weight", "loss.inmodal_weight"), [1/32, 1/16], name="w")
                                                    2 runs, both fields set to each value: w=0.03125
  variants({"clip": {"loss.cross_weight": 0.0, "loss.inmodal_weight": 0.0}, "rankclip": {}})
                                                    2 runs named by their labels
  fixed({"loss.weight_schedule": "constant"})       1 run, no name of its own
  product(a, b, ...)   every run of a with every run of b (a's parts first)
  zip(a, b, ...)       the i-th run of each, side by side (the same number of runs each)
  chain(a, b, ...)     a's runs, then b's

A run is a list of parts; each part has a label (`seed=3`, `clip`, or none for `fixed`) and its
overrides. The run's name is its labels joined by ',' (`clip,seed=3`): short, readable, and stable
(it depends only on the run's own parts, in the order the sweep combines them). A field's label
is the last component of its dotted path (`loss.cross_weight` -> `cross_weight`), longer when two
swept fields end alike. Two runs with one name, or one run setting a field twice with two values,
are errors (`SweepError`).

A name is a folder of the sweep's workdir, so labels and names are checked (check_name): letters,
digits and '._+-' (and the ',' and '=' that join them), not empty, not starting with '.' (`.` and
`..` would make the run's folder the sweep's own or its parent; hidden names are the sweep's own
files, .sweep.lock and .xla_cache).
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import math
import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from rankclip_jax.errors import UserError

SEED_FIELD = "seed"
NAME_SEPARATOR = ","
MAX_NAME_LENGTH = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_NAME = re.compile(r"[A-Za-z0-9_+=,-][A-Za-z0-9._+=,-]*")  # a run's folder: see check_name


class SweepError(UserError, ValueError):
  """A sweep file or one of its runs cannot work; the message names the run and the field."""


@dataclasses.dataclass(frozen=True)
class Part:
  """One factor of a run: its overrides ({dotted field: value}) and how it shows in the name:
  `label` as given (variants), or `fields` (values: the key is derived from the fields) = `value`;
  neither: no name (fixed)."""
  overrides: Mapping[str, Any]
  label: Optional[str] = None
  fields: tuple[str, ...] = ()
  value: Any = None


Run = tuple[Part, ...]


def values(field: Union[str, Sequence[str]], vals: Iterable[Any], name: Optional[str] = None
           ) -> list[Run]:
  """One run per value of `field` (or of several fields set to the same value); `name` replaces
  the field in the run names."""
  fields = (field,) if isinstance(field, str) else tuple(field)
  if not fields or not all(isinstance(f, str) and f for f in fields):
    raise SweepError(f"values({field!r}, ...): give a dotted config field, or a tuple of them.")
  if name is not None:
    check_name(f"{name}=x", f"values(..., name={name!r})")
  out = []
  for v in vals:
    overrides = {f: v for f in fields}
    label = None if name is None else f"{name}={format_value(v)}"
    out.append((Part(overrides, label=label, fields=fields, value=v),))
  return out


def variants(named: Mapping[str, Mapping[str, Any]]) -> list[Run]:
  """One run per entry {label: {dotted field: value}}, named by its label."""
  out = []
  for label, overrides in named.items():
    if not isinstance(overrides, Mapping):
      raise SweepError(f"variants: {label!r} must map to a dict of overrides, not {overrides!r}.")
    if not isinstance(label, str) or _UNSAFE.search(label):
      raise SweepError(f"variants: the label {label!r} must be made of letters, digits and "
                       "'._+-' (it names the run's folder).")
    check_name(label, f"variants: the label {label!r}")
    out.append((Part(dict(overrides), label=label),))
  return out


def fixed(overrides: Mapping[str, Any]) -> list[Run]:
  """One run with these overrides and no name of its own (to combine with product)."""
  return [(Part(dict(overrides)),)]


def product(*axes: Sequence[Run]) -> list[Run]:
  return [tuple(itertools.chain.from_iterable(runs)) for runs in itertools.product(*axes)]


def zip(*axes: Sequence[Run]) -> list[Run]:  # pylint: disable=redefined-builtin
  lengths = [len(a) for a in axes]
  if len(set(lengths)) > 1:
    raise SweepError(f"zip: the axes have {lengths} runs; zip needs the same number in each.")
  return [tuple(itertools.chain.from_iterable(runs)) for runs in builtins.zip(*axes)]


def chain(*axes: Sequence[Run]) -> list[Run]:
  return [run for axis in axes for run in axis]


@dataclasses.dataclass
class Sweep:
  """What a sweep file's get_sweep() returns: the runs, the group the others are compared with
  (a group is the runs that differ only in `seed`; its name is theirs without the seed), and the
  headline metrics pictured in the report (default: every `*/top1` and `*_r1` metric).

  `axes` ({axis: [(axis value, cell), ...]}, in the order the axis is drawn) compares within
  cells: each group's name is then a method label and a cell (its other labels, e.g.
  `rankclip,objects5`: method `rankclip`, cell `objects5`), `baseline` names the method label (e.g.
  `clip`), and every group is compared with the baseline's group of its own cell (the group's name
  with its method label replaced by the baseline's: `clip,objects5`). The report then gives, per
  axis, each method's difference from the baseline at each axis value (see `cells`)."""
  runs: Sequence[Run]
  baseline: str = ""
  headline: Sequence[str] = ()
  axes: Mapping[str, Sequence[tuple[Any, str]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class NamedRun:
  name: str
  group: str  # the name without its seed parts ("base" when only the seed varies)
  overrides: dict[str, Any]  # dotted field -> value, in the order the parts give them


def check_name(name: Any, what: str) -> None:
  """SweepError unless `name` can be a folder of the sweep's workdir and nothing else: not empty,
  not `.` or `..` (the sweep's folder or its parent), no path separator, no leading '.'."""
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise SweepError(f"{what} cannot name a run's folder: use letters, digits and '._+-' "
                     "(',' and '=' join labels), not empty and not starting with '.' (so never "
                     "'.' or '..', which are the sweep's folder and its parent).")


def format_value(v: Any) -> str:
  """A value as it shows in a run name: repr for floats (exact and short: 0.015625, 1e-05), str
  otherwise, characters other than letters, digits and '._+-' replaced by '_'."""
  text = repr(v) if isinstance(v, float) else str(v)
  return _UNSAFE.sub("_", text).strip("_") or "_"


def _field_keys(runs: Sequence[Run]) -> dict[str, str]:
  """{dotted field: its key in names}: the shortest ending of the field's path that no other
  named field of the sweep shares."""
  fields = sorted({p.fields[0] for run in runs for p in run if p.label is None and p.fields})
  keys = {}
  for f in fields:
    parts = f.split(".")
    for n in range(1, len(parts) + 1):
      key = ".".join(parts[-n:])
      if not any(g != f and (g == key or g.endswith("." + key)) for g in fields):
        break
    keys[f] = key
  return keys


def _label(part: Part, keys: dict[str, str]) -> Optional[str]:
  if part.label is not None:
    return part.label
  if part.fields:
    return f"{keys[part.fields[0]]}={format_value(part.value)}"
  return None


def _is_seed_only(part: Part) -> bool:
  return set(part.overrides) == {SEED_FIELD}


def name_runs(runs: Sequence[Run]) -> list[NamedRun]:
  """The runs with their names, groups and merged overrides; SweepError on a clash."""
  if not runs:
    raise SweepError("the sweep has no runs.")
  keys = _field_keys(runs)
  out, seen, group_overrides = [], {}, {}
  for i, run in enumerate(runs):
    labels = [_label(p, keys) for p in run]
    name = NAME_SEPARATOR.join(l for l in labels if l) or "base"
    group = NAME_SEPARATOR.join(l for l, p in builtins.zip(labels, run)
                                if l and not _is_seed_only(p)) or "base"
    overrides, setter = {}, {}
    for label, part in builtins.zip(labels, run):
      for field, value in part.overrides.items():
        if field in overrides and overrides[field] != value:
          raise SweepError(f"run {name!r} (run {i + 1}): field {field!r} is set to "
                           f"{overrides[field]!r} by {setter[field]!r} and to {value!r} by "
                           f"{label or 'fixed(...)'!r}; set it once.")
        overrides[field], setter[field] = value, label or "fixed(...)"
    if name in seen:
      raise SweepError(f"runs {seen[name] + 1} and {i + 1} are both named {name!r} (their "
                       "overrides differ only in what the name does not show, or the sweep "
                       "lists the run twice); give values() a name= or variants() distinct labels.")
    check_name(name, f"run {i + 1}'s name {name!r}")
    if len(name) > MAX_NAME_LENGTH:
      raise SweepError(f"run {name!r} (run {i + 1}): its name is longer than {MAX_NAME_LENGTH} "
                       "characters; name its parts with variants() or values(..., name=...).")
    seen[name] = i
    rest = {k: v for k, v in overrides.items() if k != SEED_FIELD}
    first = group_overrides.setdefault(group, (name, rest))
    if first[1] != rest:
      raise SweepError(f"runs {first[0]!r} and {name!r} form group {group!r} (their names differ "
                       "only in the seed) but their overrides differ in more than the seed; "
                       "name what differs (variants() labels, values(..., name=...)).")
    out.append(NamedRun(name, group, overrides))
  return out


def check_axes(axes: Any) -> dict[str, list[list]]:
  """The sweep's axes as sweep.json keeps them, {axis: [[value, cell], ...]}; SweepError unless
  every axis is a non-empty list of (value, cell) pairs with distinct values and distinct cells,
  each value a string, a number or a bool (JSON keeps it as it is)."""
  if not isinstance(axes, Mapping):
    raise SweepError(f"axes must be a dict {{axis: [(value, cell), ...]}}, not {axes!r}.")
  out = {}
  for axis, pairs in axes.items():
    where = f"axes[{axis!r}]"
    if not isinstance(axis, str) or not axis.strip():
      raise SweepError(f"{where}: an axis is named by a non-empty string.")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
      raise SweepError(f"{where} must be a non-empty list of (value, cell) pairs, not {pairs!r}.")
    out[axis] = []
    for pair in pairs:
      if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise SweepError(f"{where}: {pair!r} is not a (value, cell) pair, e.g. (5, 'objects5').")
      value, cell = pair
      if not isinstance(value, (str, int, float)) or (
          isinstance(value, float) and not math.isfinite(value)):
        raise SweepError(f"{where}: the value {value!r} must be a string, a finite number or a "
                         "bool (sweep.json keeps it).")
      if not isinstance(cell, str) or not cell:
        raise SweepError(f"{where}: the cell of value {value!r} must be a group's cell label "
                         f"(e.g. 'base'), not {cell!r}.")
      for earlier, earlier_cell in out[axis]:
        if earlier == value:
          raise SweepError(f"{where}: the value {value!r} is given twice (cells {earlier_cell!r} "
                           f"and {cell!r}); an axis's values are distinct.")
        if earlier_cell == cell:
          raise SweepError(f"{where}: the cell {cell!r} is given twice (values {earlier!r} and "
                           f"{value!r}); each value of an axis is its own cell.")
      out[axis].append([value, cell])
  return out


def cells(groups: Sequence[str], baseline: str, axes: Mapping[str, Sequence[Sequence[Any]]]
          ) -> dict[str, dict[str, str]]:
  """{cell: {method label: group}} of a sweep with axes, cells and methods in the order of
  `groups`. A group's labels are its name split at ','; its method label is the one at the
  position where `baseline`'s label stands, its cell the other labels joined (`rankclip,objects5`
  -> method `rankclip`, cell `objects5`; the cell may hold several labels, `lr=0.001,w=0.5`).
  SweepError unless the baseline label stands at one position, every group has a method label and
  a cell, every cell named in `axes` is a cell of the groups, and every cell has its baseline's
  group (to compare the cell's other groups with)."""
  if not baseline:
    raise SweepError("a sweep with axes compares each cell's groups with the baseline's group of "
                     "that cell: give baseline= the method label (e.g. baseline='clip').")
  labels = {g: g.split(NAME_SEPARATOR) for g in groups}
  positions = sorted({i for parts in labels.values() for i, l in enumerate(parts) if l == baseline})
  if not positions:
    raise SweepError(f"baseline={baseline!r} is a label of none of the sweep's groups "
                     f"({', '.join(groups)}); with axes, baseline names the method label "
                     "compared within each cell (e.g. 'clip' for the groups 'clip,base', "
                     "'rankclip,base').")
  if len(positions) > 1:
    raise SweepError(f"baseline={baseline!r} stands at positions {[p + 1 for p in positions]} of "
                     "the groups' names; with axes the method label has one position in every "
                     "group's name.")
  at = positions[0]
  out: dict[str, dict[str, str]] = {}
  for g, parts in labels.items():
    if len(parts) < 2 or at >= len(parts):
      raise SweepError(f"group {g!r} has no method label at position {at + 1} (where "
                       f"{baseline!r} stands) and a cell besides; with axes every group is a "
                       f"method label and a cell, e.g. '{baseline},base'.")
    cell = NAME_SEPARATOR.join(parts[:at] + parts[at + 1:])
    out.setdefault(cell, {})[parts[at]] = g
  for axis, pairs in axes.items():
    for value, cell in pairs:
      if cell not in out:
        raise SweepError(f"axes[{axis!r}]: the cell {cell!r} (value {value!r}) is none of the "
                         f"cells of the sweep's groups: {', '.join(out)}.")
  for cell, methods in out.items():
    if baseline not in methods:
      want = NAME_SEPARATOR.join(cell.split(NAME_SEPARATOR)[:at] + [baseline]
                                 + cell.split(NAME_SEPARATOR)[at:])
      raise SweepError(f"cell {cell!r} has no baseline group {want!r} to compare its groups "
                       f"({', '.join(methods.values())}) with; add the {baseline!r} runs of that "
                       "cell or leave the cell out of the sweep.")
  return out
