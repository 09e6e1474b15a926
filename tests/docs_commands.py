"""The check behind tests/test_docs.py: the commands and links of README.md and docs/*.md work.

A command that runs the project (`python main.py ...`, `python -m rankclip_jax.<entry> ...`,
`rankclip-*` console scripts, `launch/*` scripts, `python -m benchmarks.<script> ...`), in a shell
code block (```bash, ```sh, ```console, or an untyped ``` block) or an inline code span, is parsed
in this process by the entry point's own parser, without running the job:

- the rankclip_jax entry points: their absl flags (read from the module's source: DEFINE_* calls
  and cli.<name>_flag() at module level, `required=` of its cli.run) plus the flags every command
  has (absl's, rankclip_jax.distributed's, the libraries'), copied into a fresh FlagValues and
  parsed by cli.check_command_line, so a misspelt flag, a config file that does not exist or does
  not load, and an override naming no field or of the wrong type are reported with the command's
  own message. The training config is then checked by config_validation.validate_config (on one
  device), a sweep's runs by sweeps.build.build_plan (which writes nothing), an --evals config by
  validate_for_evaluation, and convert's --act against the activations;
- launch/ scripts: the script exists, and the main.py command it runs (config and workdir from the
  positions its usage line names, then the overrides) is checked as above;
- benchmarks: the module exists and the command line parses with the script's argparse parser,
  rebuilt from the `parser = argparse.ArgumentParser(...)` and `parser.add_argument(...)` lines of
  its main() (main() itself would start the benchmark), and the .py files it names exist;
- `pip install -r <file>`: the requirements file exists.

Commands are joined over `\\` line ends and split at `&&`, `||`, `;` and `|`; `# comments`,
leading `VAR=value` assignments and redirections are dropped. Placeholders are not required to
exist or parse: a value holding `...`, `<...>`, `$VAR` or `/path/to/`, or written in capitals
(`--config.seed=S`, `--remat POLICY`), only has its flag name checked (and for an override, that
the field exists), and a lone `...` (more flags) also lifts the check for missing required flags.
Inline code spans are fragments of prose, so missing required flags are only reported in code
blocks. `[--flag]` (optional) is checked as `--flag`.

Every relative link `[..](path)`, picture `![..](path)`, reference definition `[x]: path` and
HTML `src=`/`href=` must name an existing file or folder; `path#anchor` into a Markdown file (and
`#anchor` alone, into the same document) an existing heading by GitHub's rules (lower case,
punctuation dropped, spaces to '-', repeats suffixed -1, -2, ...) or an HTML `id=`/`name=`.

check_document returns every problem at once, each with the document, the line and what is wrong.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import sys
import tomllib
import urllib.parse
from typing import Optional

from absl import flags
from ml_collections import config_flags

from rankclip_jax import cli
from rankclip_jax.config_validation import validate_config, validate_for_evaluation
from rankclip_jax.errors import ConfigError
from rankclip_jax.models.transformer import ACTIVATIONS
from rankclip_jax.sweeps import build
from rankclip_jax.sweeps.grid import SweepError

SHELL_LANGUAGES = ("bash", "sh", "shell", "console", "zsh", "")


@dataclasses.dataclass(frozen=True)
class Problem:
  doc: str
  line: int
  message: str

  def __str__(self):
    return f"{self.doc}:{self.line}: {self.message}"


@dataclasses.dataclass
class Report:
  """What check_document found: its problems, and how many commands and links it checked (a
  document whose commands are no longer recognised would otherwise pass by checking nothing)."""
  problems: list[Problem]
  commands: int
  links: int


def documents(root: str) -> list[str]:
  """The documents checked, relative to root: README.md and docs/*.md."""
  docs = os.path.join(root, "docs")
  names = sorted(f for f in os.listdir(docs) if f.endswith(".md")) if os.path.isdir(docs) else []
  return ["README.md"] + [os.path.join("docs", n) for n in names]


def check_document(path: str, root: str) -> Report:
  """Every problem of the commands and links of the Markdown file at `path`. Commands run from
  `root` (the repository: config paths, modules and scripts are relative to it); links are
  relative to the document's folder."""
  path = os.path.abspath(path)
  root = os.path.abspath(root)
  rel = os.path.relpath(path, root)
  name = path if rel.startswith("..") else rel
  with open(path, encoding="utf-8") as f:
    text = f.read()
  doc = _parse_markdown(text)
  problems = []
  commands = 0
  with contextlib.chdir(root):
    for snippet in doc.snippets:
      found, messages = _check_snippet(snippet, root)
      commands += found
      problems += [Problem(name, snippet.line, m) for m in messages]
  links = 0
  for line, target in doc.links:
    links += 1
    message = _check_link(target, os.path.dirname(path), doc)
    if message:
      problems.append(Problem(name, line, message))
  return Report(problems, commands, links)


# Markdown: fenced blocks, inline code spans, links, headings.


@dataclasses.dataclass(frozen=True)
class Snippet:
  line: int      # where the command starts
  text: str      # one shell line (continuations joined)
  in_block: bool  # from a code block (else an inline code span)


@dataclasses.dataclass
class _Markdown:
  snippets: list[Snippet]
  links: list[tuple[int, str]]
  anchors: set[str]


_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")


def _parse_markdown(text: str) -> _Markdown:
  lines = text.split("\n")
  prose = list(lines)  # code blocks blanked, so that links and spans are looked for in prose only
  snippets = []
  i = 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    fence, language = m.group(1), m.group(2).lower()
    end = i + 1
    while end < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$",
                                            lines[end]):
      end += 1
    body = list(range(i + 1, min(end, len(lines))))
    if language in SHELL_LANGUAGES:
      snippets += _block_commands([(n + 1, lines[n]) for n in body], typed=bool(language))
    for n in range(i, min(end + 1, len(lines))):
      prose[n] = ""
    i = end + 1
  prose_text = "\n".join(prose)
  anchors = _anchors(prose_text)
  spans = []
  for start, end, content in _code_spans(prose_text):
    spans.append((prose_text.count("\n", 0, start) + 1, " ".join(content.split())))
  blanked = list(prose_text)
  for start, end, _ in _code_spans(prose_text):
    for k in range(start, end):
      if blanked[k] != "\n":
        blanked[k] = " "
  prose_text = "".join(blanked)
  snippets += [Snippet(line, content, False) for line, content in spans
               if _PROJECT_COMMAND.search(content)]
  return _Markdown(sorted(snippets, key=lambda s: s.line), _links(prose_text), anchors)


def _block_commands(numbered: list[tuple[int, str]], typed: bool) -> list[Snippet]:
  """The shell lines of a code block, `\\` continuations joined. An untyped block (often program
  output or a folder map) contributes only the lines that start with a project command."""
  out, start, parts = [], None, []
  for number, line in numbered:
    stripped = line.strip()
    if not parts:
      if stripped.startswith("$ "):
        stripped = stripped[2:]
      if not stripped or stripped.startswith("#"):
        continue
      start = number
    if stripped.endswith("\\"):
      parts.append(stripped[:-1])
      continue
    parts.append(stripped)
    joined = " ".join(parts)
    parts = []
    if typed or _PROJECT_COMMAND.match(joined):
      out.append(Snippet(start, joined, True))
  if parts:
    out.append(Snippet(start, " ".join(parts), True))
  return out


def _code_spans(text: str):
  """(start, end, content) of each inline code span: a run of backticks up to the next run of
  the same length (CommonMark's rule)."""
  out, i = [], 0
  for m in re.finditer(r"`+", text):
    if m.start() < i:
      continue
    close = re.compile(rf"(?<!`){re.escape(m.group())}(?!`)")
    c = close.search(text, m.end())
    if c is None:
      i = m.end()
      continue
    out.append((m.start(), c.end(), text[m.end():c.start()].strip()))
    i = c.end()
  return out


_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.M)
_HTML_TARGET = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']*)[\"']",
                          re.I)


def _links(prose: str) -> list[tuple[int, str]]:
  found = []
  for pattern, group in ((_LINK, 2), (_REFERENCE, 1), (_HTML_TARGET, 1)):
    for m in pattern.finditer(prose):
      target = m.group(group).strip()
      if target.startswith("<") and target.endswith(">"):
        target = target[1:-1]
      found.append((prose.count("\n", 0, m.start(group)) + 1, target))
  return sorted(found)


def _heading_texts(prose: str) -> list[str]:
  lines = prose.split("\n")
  out = []
  for i, line in enumerate(lines):
    m = re.match(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$", line)
    if m:
      out.append(m.group(1) or "")
    elif (re.match(r"^ {0,3}(=+|-+)[ \t]*$", line) and i > 0 and lines[i - 1].strip()
          and not re.match(r"^ {0,3}(#|[-*+] |\d+[.)] |>|\|)", lines[i - 1])):
      out.append(lines[i - 1].strip())  # a setext heading (the underlined line above)
  return out


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading: its text as rendered (links and pictures as their text,
  code without backticks, emphasis and HTML tags dropped), lower case, every character but
  letters, digits, '_', '-' and spaces dropped, each space a '-'."""
  text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)
  text = re.sub(r"<[^>]+>", "", text)
  text = text.replace("`", "").replace("*", "").replace("~~", "")
  text = re.sub(r"(?<![\w])_+(.+?)_+(?![\w])", r"\1", text)
  text = re.sub(r"[^\w\- ]", "", text.strip().lower())
  return text.replace(" ", "-")


def _anchors(prose: str) -> set[str]:
  anchors, seen = set(), {}
  for heading in _heading_texts(prose):
    slug = github_slug(heading)
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    anchors.add(slug if n == 0 else f"{slug}-{n}")
  anchors.update(re.findall(r"<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", prose,
                            re.I))
  return anchors


@functools.lru_cache(maxsize=None)
def _anchors_of_file(path: str, mtime: float) -> frozenset[str]:  # pylint: disable=unused-argument
  with open(path, encoding="utf-8") as f:
    return frozenset(_parse_markdown(f.read()).anchors)


def _check_link(target: str, folder: str, doc: _Markdown) -> Optional[str]:
  if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", target):
    return None  # a web address (http:, mailto:, ...)
  path, _, fragment = target.partition("#")
  path = urllib.parse.unquote(path.split("?")[0])
  fragment = urllib.parse.unquote(fragment)
  if not path:
    if fragment and fragment not in doc.anchors:
      return f"link {target!r}: no heading or anchor {fragment!r} in this document"
    return None
  base = _repo_of(folder) if path.startswith("/") else folder  # '/': the repository's root
  full = os.path.normpath(os.path.join(base, path.lstrip("/")))
  if not os.path.exists(full):
    return f"link {target!r}: no such file or folder ({os.path.relpath(full, folder)})"
  if fragment and full.endswith(".md") and os.path.isfile(full):
    if fragment not in _anchors_of_file(full, os.path.getmtime(full)):
      return f"link {target!r}: {path} has no heading or anchor {fragment!r}"
  return None


def _repo_of(folder: str) -> str:
  """The repository holding `folder` (where a link starting with '/' points on GitHub)."""
  here = os.path.abspath(folder)
  while here != os.path.dirname(here) and not os.path.exists(os.path.join(here, ".git")):
    here = os.path.dirname(here)
  return here if os.path.exists(os.path.join(here, ".git")) else os.path.abspath(folder)


# Shell: words, commands, placeholders.

_ASSIGNMENTS = r"(?:[A-Za-z_]\w*=\S*\s+)*"
_PROJECT_COMMAND = re.compile(
    rf"(?:^|&&|\|\||;|\|)\s*{_ASSIGNMENTS}(?:python[\d.]*\s+(?:-\S+\s+)*(?:\.?/?main\.py\b|"
    r"-m\s+(?:rankclip_jax|benchmarks)\b|benchmarks/)|rankclip-[a-z]+\b(?!-)|(?:bash\s+|sh\s+|"
    r"sbatch\s+(?:\S+\s+)*?)?\.?/?launch/)")
_PLACEHOLDER = re.compile(r"\.\.\.|…|<[^<>]*>|\$\{?[A-Za-z_]|(?:^|[=/\s])path/to\b|/path/to\b"
                          r"|^[A-Z][A-Z0-9_]*$|=[A-Z][A-Z0-9_]*$")  # ..., <file>, $VAR, N, --seed=S


def _strip_comment(line: str) -> str:
  """The line without a shell comment (a '#' outside quotes, at the start of a word)."""
  quote, escaped = None, False
  for i, ch in enumerate(line):
    if escaped:
      escaped = False
    elif ch == "\\" and quote != "'":
      escaped = True
    elif quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i]
  return line


def _commands(line: str) -> list[list[str]]:
  """The words of each command of a shell line, split at &&, ||, ;, | and &; assignments before
  a command and redirections dropped. `<...>` placeholders stay one word each."""
  line = re.sub(r"<([^<>\s][^<>]*?)>", lambda m: "<" + re.sub(r"\s+", "_", m.group(1)) + ">",
                _strip_comment(line))
  lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
  lexer.whitespace_split = True
  lexer.commenters = ""
  words = list(lexer)
  out, current, skip = [], [], 0
  for i, w in enumerate(words):
    if skip:
      skip -= 1
      continue
    if w and set(w) <= set(";&|"):
      out.append(current)
      current = []
      continue
    if re.fullmatch(r"\d*[<>]{1,2}", w):  # a redirection and its target (2>&1: '2>', '&', '1')
      skip = 2 if i + 1 < len(words) and words[i + 1] == "&" else 1
      continue
    if re.match(r"^\d*[<>]", w) and not re.fullmatch(r"<[^<>]+>", w):  # >file (not <placeholder>)
      continue
    if not current and re.fullmatch(r"[A-Za-z_]\w*=.*", w):
      continue  # VAR=value before the command
    current.append(w)
  out.append(current)
  return [c for c in out if c]


def _split_placeholders(args: list[str]) -> tuple[list[str], list[str], bool]:
  """(the arguments to parse, the flags whose value is a placeholder, whether the command is
  given in full: no lone `...` or placeholder argument)."""
  kept, held, complete = [], [], True
  for a in args:
    if len(a) > 1 and (a.startswith("[") or a.endswith("]")) and "[" not in a[1:-1]:
      a = a.removeprefix("[").removesuffix("]")  # [--flag], [--flag VALUE]: optional
    if a in ("...", "…"):
      complete = False
      continue
    if not _PLACEHOLDER.search(a):
      kept.append(a)
      continue
    if a.startswith("-"):
      name = a.split("=", 1)[0]
      if not _PLACEHOLDER.search(name):
        held.append(name)
    elif kept and kept[-1].startswith("--") and "=" not in kept[-1]:
      held.append(kept.pop())  # --name <value>
    else:
      complete = False
  return kept, held, complete


def _short(words: list[str], limit: int = 90) -> str:
  text = " ".join(shlex.quote(w) if w else "''" for w in words)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_snippet(snippet: Snippet, root: str) -> tuple[int, list[str]]:
  """(the project commands found, the problems) of one shell line."""
  try:
    commands = _commands(snippet.text)
  except ValueError as e:
    if _PROJECT_COMMAND.search(snippet.text):
      return 1, [f"cannot split `{snippet.text[:90]}` into words: {e}"]
    return 0, []
  found, problems = 0, []
  for words in commands:
    kind, target, args = _classify(words)
    if kind is None:
      continue
    if kind != "pip":
      found += 1
    args, held, complete = _split_placeholders(args)
    for message in _check_command(root, kind, target, tuple(args), tuple(held), snippet.in_block,
                                  complete):
      problems.append(f"`{_short(words)}`: {message}")
  return found, problems


def _classify(words: list[str]) -> tuple[Optional[str], str, list[str]]:
  """(kind, what it runs, its arguments): kind 'entry' (a rankclip_jax module), 'benchmark',
  'launch', 'script' (a file that must exist), 'script_name' (a console script), 'pip', or None
  (not the project's)."""
  if words[0] in ("exec", "time", "nohup"):
    words = words[1:]
  if not words:
    return None, "", []
  head = os.path.basename(words[0])
  if re.fullmatch(r"python[\d.]*", head):
    i = 1
    while i < len(words) and words[i].startswith("-") and words[i] not in ("-m", "-c"):
      i += 2 if words[i] in ("-X", "-W") else 1
    if i >= len(words) or words[i] == "-c":
      return None, "", []
    if words[i] == "-m" and i + 1 < len(words):
      module = words[i + 1]
      if module == "pip":
        return "pip", "", words[i + 2:]
      if module.split(".")[0] == "rankclip_jax":
        return "entry", module, words[i + 2:]
      if module.split(".")[0] == "benchmarks":
        return "benchmark", module, words[i + 2:]
      return None, "", []
    script = os.path.normpath(words[i])
    if script == "main.py":
      return "entry", "rankclip_jax.main", words[i + 1:]
    if script.split(os.sep)[0] in ("benchmarks", "rankclip_jax", "launch", "configs"):
      return "script", script, words[i + 1:]
    return None, "", []
  if re.fullmatch(r"rankclip-[a-z]+", head):  # (not a name like a TPU VM's rankclip-v4)
    return "script_name", head, words[1:]
  if head in ("pip", "pip3") and words[1:2] == ["install"]:
    return "pip", "", words[2:]
  if head in ("bash", "sh", "sbatch") or words[0].lstrip("./").startswith("launch/"):
    rest = words if words[0].lstrip("./").startswith("launch/") else words[1:]
    while rest and rest[0].startswith("-"):  # sbatch's own options
      rest = rest[1:]
    if rest and os.path.normpath(rest[0]).startswith("launch" + os.sep):
      return "launch", os.path.normpath(rest[0]), rest[1:]
  return None, "", []


# The checks of one command (cached: README and docs repeat commands).


@functools.lru_cache(maxsize=None)
def _check_command(root: str, kind: str, target: str, args: tuple[str, ...],
                   held: tuple[str, ...], block: bool, complete: bool) -> tuple[str, ...]:
  """The problems of one command. block: it comes from a code block (else an inline span);
  complete: no lone `...` or placeholder stands for some of its arguments. Missing required flags
  are reported only when both hold."""
  if kind == "pip":
    return tuple(_check_requirements(list(args)))
  if kind == "script":
    return () if os.path.isfile(target) else (f"{target}: no such file",)
  if kind == "script_name":
    scripts = _console_scripts(root)
    if target not in scripts:
      return (f"{target}: no such console script in pyproject.toml (it defines "
              f"{', '.join(sorted(scripts)) or 'none'})",)
    kind, target = "entry", scripts[target]
  if kind == "launch":
    return tuple(_check_launch(root, target, list(args), list(held), block, complete))
  if kind == "benchmark":
    return tuple(_check_benchmark(target, list(args), list(held), complete))
  return tuple(_check_entry(root, target, list(args), list(held), block and complete))


def _check_requirements(args: list[str]) -> list[str]:
  out = []
  for i, a in enumerate(args):
    name, eq, value = a.partition("=")
    if name in ("-r", "--requirement", "-c", "--constraint"):
      value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
    elif a.startswith("-r") and len(a) > 2:
      value = a[2:]
    else:
      continue
    if value and not _PLACEHOLDER.search(value) and not os.path.isfile(value):
      out.append(f"{a if eq or len(a) > 2 else a + ' ' + value}: no such file")
  return out


@functools.lru_cache(maxsize=None)
def _console_scripts(root: str) -> dict[str, str]:
  """{console script: its module} from pyproject.toml's [project.scripts]."""
  try:
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
      scripts = tomllib.load(f).get("project", {}).get("scripts", {})
  except FileNotFoundError:
    return {}
  return {name: spec.split(":")[0] for name, spec in scripts.items()}


def _module_exists(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


# rankclip_jax entry points (absl flags).


@dataclasses.dataclass(frozen=True)
class _EntryPoint:
  module: str
  config_flags: dict  # {name: lock_config} of its DEFINE_config_file flags
  other_flags: tuple  # the names of its other flags, theirs or shared through cli
  required: tuple
  runs: bool  # whether `python -m <module>` runs anything
  uses_cli: bool  # whether its command line goes through cli.run (else it is not parsed here)


def _literal(node, default=None):
  try:
    return ast.literal_eval(node)
  except ValueError:
    return default


def _import(module: str) -> None:
  """Imports an entry point, which defines its flags in absl's FLAGS. rankclip_jax.main first:
  it defines --config whether or not another module has (rankclip_jax.sweep defines it only
  if not), so it cannot be imported after rankclip_jax.sweep; if something else imported the
  sweep first, main's flags are there already."""
  for name in ("rankclip_jax.main", module):
    if name not in sys.modules:
      try:
        importlib.import_module(name)
      except flags.DuplicateFlagError:
        sys.modules.pop(name, None)


@functools.lru_cache(maxsize=None)
def _entry_point(module: str) -> _EntryPoint:
  """What the module's source says of its command line; importing it defines its flags."""
  _import(module)
  with open(importlib.util.find_spec(module).origin, encoding="utf-8") as f:
    source = f.read()
  tree = ast.parse(source)
  config, other, required = {}, [], ()

  def module_level(nodes):
    for node in nodes:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        continue
      yield node
      yield from module_level(ast.iter_child_nodes(node))

  for node in module_level(tree.body):
    if not isinstance(node, ast.Call):
      continue
    callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id",
                                                                               "")
    first = node.args[0] if node.args else None
    if callee.startswith("DEFINE_") and isinstance(first, ast.Constant):
      if callee == "DEFINE_config_file":
        lock = next((_literal(k.value, False) for k in node.keywords if k.arg == "lock_config"),
                    False)
        config[first.value] = lock
      else:
        other.append(first.value)
    elif (isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "cli"
          and callee.endswith("_flag")):
      other.append(callee[:-len("_flag")])  # cli.step_flag() -> --step
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "run" and getattr(node.func.value, "id", "") == "cli"):
      required = tuple(next((_literal(k.value, ()) for k in node.keywords if k.arg == "required"),
                            ()))
  runs = bool(re.search(r"""__name__\s*==\s*["']__main__["']""", source))
  uses_cli = bool(re.search(r"\bcli\.run\(", source))
  return _EntryPoint(module, config, tuple(other), required, runs, uses_cli)


def _common_flag_names(root: str) -> list[str]:
  """The flags every command has: those of the modules that are no entry point (absl's,
  rankclip_jax.distributed's, grain's, ...); rankclip_jax.cli's are shared by name."""
  entry_modules = set(_console_scripts(root).values()) | {"rankclip_jax.main", "rankclip_jax.cli"}
  names = []
  for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
    if module in entry_modules or module.startswith(("tests.", "__main__")):
      continue
    names += [f.name for f in module_flags]
  return names


def _flag_values(root: str, entry: _EntryPoint, argv: list[str]):
  """A fresh FlagValues holding the entry point's flags, as the command's process has them: the
  config file flags defined anew (they read their overrides from argv), the others copies of
  this process's (absl's standard kinds as they are, at their default; a kind of its own, like
  absl.logging's --verbosity, which sets logging levels when set, as a plain flag with its
  parser)."""
  fv = flags.FlagValues()
  for name in dict.fromkeys(list(entry.other_flags) + _common_flag_names(root)):
    if name in entry.config_flags or name in fv:
      continue
    if name not in flags.FLAGS:
      raise AssertionError(f"{entry.module} defines --{name}, which absl does not know: "
                           "tests/docs_commands.py reads the flags from the module's source")
    original = flags.FLAGS[name]
    if type(original).__module__.startswith("absl.flags"):
      flag = copy.deepcopy(original)
      flag.validators = []
      flag.unparse()  # its default, not a value parsed elsewhere in this process
    else:
      flag = flags.Flag(copy.deepcopy(original.parser), copy.deepcopy(original.serializer), name,
                        original.default_unparsed, original.help, boolean=original.boolean)
    fv[name] = flag
  for name in ("help", "helpshort", "helpfull", "helpxml"):  # app.run's (which print and exit)
    if name not in fv:
      flags.DEFINE_boolean(name, False, "", flag_values=fv)
  sys.modules.pop("config_config", None)  # ml_collections loads each config file as this module
  for name, lock in entry.config_flags.items():
    config_flags.DEFINE_config_file(name, None, "", flag_values=fv, lock_config=lock,
                                    sys_argv=argv)
  return fv


def _check_entry(root: str, module: str, args: list[str], held: list[str],
                 complete: bool) -> list[str]:
  """A rankclip_jax module run as a command; complete: report missing required flags."""
  if not _module_exists(module):
    return [f"no module {module}"]
  spec = importlib.util.find_spec(module)
  if spec.submodule_search_locations is not None:  # a package runs its __main__
    if not _module_exists(f"{module}.__main__"):
      return [f"{module} is a package without __main__.py: it runs nothing"]
    module = f"{module}.__main__"
  entry = _entry_point(module)
  if not entry.runs:
    return [f"{module} is no command (it has no `if __name__ == \"__main__\"`)"]
  if not entry.uses_cli:
    return []  # a command of its own kind: its existence is what can be checked here
  argv = [module] + args
  cli.put_config_packages_on_path(argv)
  fv = _flag_values(root, entry, argv)
  placeholders = {n.lstrip("-") for n in held}
  required = [n for n in entry.required if n not in placeholders] if complete else []
  if required:
    flags.mark_flags_as_required(list(required), flag_values=fv)
  _, problem = cli.check_command_line(argv, required, flag_values=fv)
  if problem is not None:
    return [problem]
  problems = []
  for name in held:  # --name=<placeholder>: the name must exist
    flag, _, path = name.lstrip("-").partition(".")
    if flag not in fv:
      problems.append(f"{name}: unknown flag")
    elif path and flag in entry.config_flags:
      if fv[flag].present:
        try:
          _get_path(fv[flag].value, path)
        except (KeyError, AttributeError):
          problems.append(f"{name}: {fv[flag].config_filename} has no field {path!r}")
    elif path:
      problems.append(f"{name}: --{flag} is no config file flag, so it takes no overrides")
  if problems:
    return problems
  return _ENTRY_CHECKS.get(module, lambda fv, argv, placeholders, complete: [])(
      fv, argv, placeholders, complete)


def _get_path(config, path: str):
  for part in path.split("."):
    config = config[part]
  return config


def _uncertain(config_flag: str, placeholders) -> bool:
  """Whether the config file or one of its fields is a placeholder (so it cannot be validated)."""
  return any(p == config_flag or p.startswith(config_flag + ".") for p in placeholders)


# The checks after parsing, by entry point: fv: the parsed flags; placeholders: the flags whose
# value is a placeholder (names without '--'); complete: report missing flags.


def _check_training(fv, argv, placeholders, complete) -> list[str]:
  """main.py: the config as validate_config sees it on one device (unless a field is a
  placeholder)."""
  del argv, complete
  if not fv["config"].present or _uncertain("config", placeholders):
    return []
  try:
    validate_config(fv["config"].value, num_devices=1, process_count=1)
  except ConfigError as e:
    return [str(e)]
  return []


def _check_sweep(fv, argv, placeholders, complete) -> list[str]:
  """rankclip-sweep: every run of the sweep built and checked (sweeps.build.build_plan, which
  writes nothing), or, without a config, the sweep file loaded."""
  sweep = sys.modules["rankclip_jax.sweep"]  # imported by _entry_point, after main (_import)
  if fv["report"].value:
    return []
  given = {n: fv[n].present for n in ("config", "sweep", "workdir")}
  missing = [f"--{n}" for n, present in given.items() if not present and n not in placeholders]
  if missing and complete:
    return [f"{' and '.join(missing)} required (or --report=<sweep workdir> alone)"]
  try:
    if all(given.values()) and not _uncertain("config", placeholders):
      build.build_plan(workdir=fv["workdir"].value, config=fv["config"].config_filename,
                       command_line=sweep.command_line_overrides(argv),
                       sweep_file=fv["sweep"].value, num_devices=None)
    elif given["sweep"]:
      build.load_sweep(fv["sweep"].value)
  except SweepError as e:
    return [str(e)]
  return []


def _check_evaluation(fv, argv, placeholders, complete) -> list[str]:
  """rankclip-evaluate --evals=<config>: a config with evals, valid for evaluation (the file's
  own model standing in for the run's)."""
  del argv, complete
  if not fv["evals"].present or _uncertain("evals", placeholders):
    return []
  config = fv["evals"].value
  if "evals" not in config:
    return [f"--evals={fv['evals'].config_filename}: its config has no field evals"]
  try:
    validate_for_evaluation(config)
  except ConfigError as e:
    return [str(e)]
  return []


def _check_conversion(fv, argv, placeholders, complete) -> list[str]:
  """rankclip-convert: --act names an activation."""
  del argv, placeholders, complete
  act = fv["act"].value
  if act and act not in ACTIVATIONS:
    return [f"--act={act}: choose one of {sorted(ACTIVATIONS)}"]
  return []


_ENTRY_CHECKS = {"rankclip_jax.main": _check_training, "rankclip_jax.sweep": _check_sweep,
                 "rankclip_jax.evaluate": _check_evaluation,
                 "rankclip_jax.convert": _check_conversion}


# launch/ scripts.


def _check_launch(root: str, script: str, args: list[str], held: list[str], block: bool,
                  complete: bool) -> list[str]:
  """The script exists; the main.py command it runs is checked (its usage line says which
  positional arguments are CONFIG and WORKDIR; the flags after them are main.py's)."""
  if not os.path.isfile(script):
    return [f"{script}: no such file"]
  with open(script, encoding="utf-8") as f:
    m = re.search(r"usage: (?:sbatch )?\S+ ((?:[A-Z_]+ )+)\[overrides", f.read())
  if m is None or "CONFIG" not in m.group(1).split():
    return []
  positions = m.group(1).split()
  positional, rest = [], []
  for a in args:
    (positional if len(positional) < len(positions) and not a.startswith("-") else rest).append(a)
  if len(positional) < len(positions):
    return [f"{script} takes {' '.join(positions)} [overrides...]; given {len(positional)} of "
            "them"] if block and complete else []
  given = dict(zip(positions, positional))
  main_args = [f"--config={given['CONFIG']}", f"--workdir={given.get('WORKDIR', 'runs/x')}"]
  return list(_check_command(root, "entry", "rankclip_jax.main", tuple(main_args + rest),
                             tuple(held), block, complete))


# benchmarks/ scripts (argparse).


class _ArgumentError(Exception):
  pass


@functools.lru_cache(maxsize=None)
def _benchmark_parser(module: str) -> Optional[argparse.ArgumentParser]:
  """The script's parser, built by the `parser = argparse.ArgumentParser(...)` and
  `parser.add_argument(...)` statements of its main() run in the module's namespace (main() would
  start the benchmark); None if main() builds it some other way."""
  environment = dict(os.environ)
  try:
    mod = importlib.import_module(module)
  finally:  # accelerator_check sets XLA_PYTHON_CLIENT_MEM_FRACTION, meant for its own process
    for name in set(os.environ) - set(environment):
      del os.environ[name]
    os.environ.update(environment)
  tree = ast.parse(inspect.getsource(mod))
  main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
  if main is None:
    return None
  body = []
  for stmt in main.body:
    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
        and getattr(stmt.targets[0], "id", "") == "parser"):
      body.append(stmt)
    elif (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
          and isinstance(stmt.value.func, ast.Attribute)
          and getattr(stmt.value.func.value, "id", "") == "parser"
          and stmt.value.func.attr == "add_argument"):
      body.append(stmt)
  if not body:
    return None
  template = ast.parse("def _build_parser():\n  return parser\n")
  template.body[0].body[:0] = body
  code = compile(ast.fix_missing_locations(template), mod.__file__, "exec")
  namespace = dict(vars(mod))
  try:
    exec(code, namespace)  # pylint: disable=exec-used
    parser = namespace["_build_parser"]()
  except Exception:  # pylint: disable=broad-except
    return None
  if not isinstance(parser, argparse.ArgumentParser):
    return None

  def error(message):
    raise _ArgumentError(message)

  parser.error = error
  return parser


def _check_benchmark(module: str, args: list[str], held: list[str], complete: bool) -> list[str]:
  if not _module_exists(module):
    return [f"no module {module} (benchmarks/{module.split('.', 1)[-1].replace('.', '/')}.py)"]
  problems = []
  for a in args:  # config files and other .py files it names
    path = re.sub(r"(?<=\.py):.*$", "", a.partition("=")[2] if a.startswith("-") else a)
    if path.endswith(".py") and not os.path.isfile(path):
      problems.append(f"{path}: no such file")
  parser = _benchmark_parser(module)
  if parser is None:  # the option names in its source, at least
    source = inspect.getsource(sys.modules[module])
    options = set(re.findall(r"""add_argument\(\s*["'](--?[\w-]+)""", source))
  else:
    options = set(parser._option_string_actions)  # pylint: disable=protected-access
  for name in [a.split("=", 1)[0] for a in args if a.startswith("-") and a != "-"] + held:
    if re.fullmatch(r"--?[A-Za-z][\w-]*", name) and name not in options:
      problems.append(f"{name}: {module} has no such option (its options: "
                      f"{', '.join(sorted(o for o in options if o.startswith('--')))})")
  if problems or parser is None or held or not complete:
    return problems
  try:
    parser.parse_args(args)
  except _ArgumentError as e:
    return [f"{module}: {e}"]
  return []
