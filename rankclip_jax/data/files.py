"""Data paths from a config: brace patterns, globs, directories and lists, expanded to files.

    expand_paths("/data/cc3m/{00000..00331}.tar", suffixes=(".tar",), field="config.data.train.path")

- `{00000..00331}`: a numeric range, zero-padded to the width of its first bound (img2dataset's
  shard names); `{a,b,c}`: alternatives. Braces may repeat and nest left to right.
- glob characters (`*`, `?`, `[...]`) are matched after brace expansion.
- a directory stands for the files directly inside it that end in one of `suffixes`.
- several paths may be given as a list/tuple, or in one string separated by commas outside braces.

Anything that matches nothing is an error before training starts, naming the field and what was
looked for.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Sequence

from rankclip_jax.errors import UserError

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class DataPathError(UserError, FileNotFoundError):
  """A configured data path matches no usable file; the message names the field and the fix."""


def _split_top_level(text: str, sep: str = ",") -> list[str]:
  """Splits on `sep` outside braces."""
  parts, depth, current = [], 0, []
  for ch in text:
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth = max(0, depth - 1)
    if ch == sep and depth == 0:
      parts.append("".join(current))
      current = []
    else:
      current.append(ch)
  parts.append("".join(current))
  return [p.strip() for p in parts if p.strip()]


def expand_braces(pattern: str) -> list[str]:
  """'a{1..3}b' -> ['a1b', 'a2b', 'a3b']; 'x{a,b}' -> ['xa', 'xb']; no braces -> [pattern]."""
  start = pattern.find("{")
  if start < 0:
    return [pattern]
  depth = 0
  for end in range(start, len(pattern)):
    if pattern[end] == "{":
      depth += 1
    elif pattern[end] == "}":
      depth -= 1
      if depth == 0:
        break
  else:
    raise ValueError(f"Unbalanced '{{' in data path pattern {pattern!r}.")
  head, body, tail = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
  m = _RANGE.match(body)
  if m:
    lo_text, hi_text = m.groups()
    lo, hi = int(lo_text), int(hi_text)
    width = len(lo_text.lstrip("-")) if lo_text.lstrip("-").startswith("0") else 0
    step = 1 if hi >= lo else -1
    options = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
  else:
    options = [o for alt in _split_top_level(body) for o in expand_braces(alt)] if body else [""]
  return [head + opt + rest for opt in options for rest in expand_braces(tail)]


def expand_paths(paths: str | Sequence[str], *, suffixes: Sequence[str],
                 field: str = "path") -> list[str]:
  """Every file named by `paths` (see the module docstring), in the order given, without repeats.

  Raises DataPathError when `paths` is empty or any of its entries matches no file.
  """
  if isinstance(paths, str):
    entries = _split_top_level(paths)
  else:
    entries = [str(p) for p in paths if str(p).strip()]
  if not entries:
    raise DataPathError(
        f"{field} is empty: give a file, directory, glob or brace pattern of {'/'.join(suffixes)} "
        f"files, e.g. --{field}='/data/cc3m/{{00000..00331}}.tar'.")
  out, seen = [], set()
  for entry in entries:
    found = []
    for pattern in expand_braces(os.path.expanduser(entry)):
      if glob.has_magic(pattern):
        found.extend(sorted(glob.glob(pattern)))
      elif os.path.isdir(pattern):
        found.extend(sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                            if f.endswith(tuple(suffixes))
                            and os.path.isfile(os.path.join(pattern, f))))
      elif os.path.exists(pattern):
        found.append(pattern)
      elif "{" in entry:
        # One missing member of a range is as much an error as an empty glob: a silently smaller
        # dataset is worse than a stop.
        raise DataPathError(f"{field}={entry!r}: {pattern} does not exist.")
    found = [f for f in found if os.path.isfile(f)]
    if not found:
      looked_for = (f"files ending in {'/'.join(suffixes)} in that directory"
                    if os.path.isdir(entry) else "that path, after brace and glob expansion")
      raise DataPathError(
          f"{field}={entry!r} matches no file (looked for {looked_for}). Check the path; "
          "patterns look like '/data/cc3m/{00000..00331}.tar' or '/data/*.tar'.")
    for f in found:
      f = os.path.abspath(f)
      if f not in seen:
        seen.add(f)
        out.append(f)
  return out
