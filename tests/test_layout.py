"""The package's shape: imports go one way (no cycles; the layers below never import the ones
above; the library never imports the repository's configs/), every user error is a UserError, and
the names the docs' tables and validation list come from the registries."""

import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "rankclip_jax")


def _module_names() -> dict[str, str]:
  """{dotted module name: file} of every module of the package (packages as their __init__)."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join(rel)] = os.path.join(root, f)
  return out


MODULES = _module_names()


def _ancestors(name: str) -> list[str]:
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str) -> set[str]:
  """Every module of the package (or top-level name outside it) that importing `name` runs, read
  from its import statements, at the top or inside functions: `import a.b.c` and `from a.b import
  c` import a, a.b and a.b.c. The importer's own packages are left out (they are being imported)."""
  tree = ast.parse(open(MODULES[name]).read())
  is_package = MODULES[name].endswith("__init__.py")
  targets = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from this module's package
        base = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module
      targets.add(module)
      targets.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
  out = set()
  own = set(_ancestors(name)) | ({name} if is_package else set())
  for t in targets:
    for m in _ancestors(t) + [t]:
      if m.startswith("rankclip_jax") and m not in MODULES:
        continue  # an attribute, not a module
      if m not in own and m != name:
        out.add(m if m.startswith("rankclip_jax") else m.split(".")[0])
  return out


GRAPH = {name: {m for m in imports_of(name) if m in MODULES} for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), and self-loops."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph[v]:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder_finds_a_planted_cycle():
  graph = {k: set(v) for k, v in GRAPH.items()}
  graph["rankclip_jax.models.vit"].add("rankclip_jax.train")
  assert any("rankclip_jax.train" in c and "rankclip_jax.models.vit" in c for c in _cycles(graph))


def test_no_import_cycles_in_the_package():
  assert len(GRAPH) > 40 and "rankclip_jax.data.pipeline" in GRAPH["rankclip_jax.data.pairs"]
  assert _cycles(GRAPH) == []


# What each layer may import from the package: models, losses and data are the bottom, with the
# errors and registry modules under everything.
BASE = {"rankclip_jax", "rankclip_jax.errors", "rankclip_jax.registry"}
LAYERS = {
    # The text tower's vocabulary and end-of-text id are the tokenizer's (one definition).
    "rankclip_jax.models": BASE | {"rankclip_jax.models", "rankclip_jax.data.tokenizer"},
    "rankclip_jax.losses": BASE | {"rankclip_jax.losses"},
    "rankclip_jax.data": BASE | {"rankclip_jax.data"},
    "rankclip_jax.evaluation": BASE | {"rankclip_jax.evaluation", "rankclip_jax.data",
                                       "rankclip_jax.sharding"},
}


def _allowed(module: str, allowed: set[str]) -> bool:
  """`module` is allowed, inside an allowed package, or a package above an allowed module."""
  return any(module == a or module.startswith(a + ".") or a.startswith(module + ".")
             for a in allowed)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_lower_layers_never_import_the_ones_above(layer):
  bad = {name: sorted(m for m in GRAPH[name] if not _allowed(m, LAYERS[layer]))
         for name in GRAPH if name == layer or name.startswith(layer + ".")}
  assert {k: v for k, v in bad.items() if v} == {}


def test_the_library_never_imports_the_repository_configs_or_its_trainer_from_below():
  for name in MODULES:
    assert "configs" not in imports_of(name), name
  importers_of_train = sorted(n for n, deps in GRAPH.items() if "rankclip_jax.train" in deps)
  assert importers_of_train == ["rankclip_jax.main"]


def test_every_user_error_is_a_user_error():
  """Each error class the package defines for bad input derives from errors.UserError, so the entry
  points' `except USER_ERRORS` turns it into one line (a new one cannot be forgotten there)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from rankclip_jax import errors  # pylint: disable=g-import-not-at-top
  # Skipped and counted, never shown to the user: an unreadable image, a shard path that is not a
  # regular file.
  internal = {"BadImage", "NotRegularFile"}
  found = []
  for name in MODULES:
    module = importlib.import_module(name)
    for attr, value in vars(module).items():
      if (isinstance(value, type) and issubclass(value, Exception)
          and value.__module__ == name and attr not in internal):
        found.append(attr)
        assert issubclass(value, errors.UserError), f"{name}.{attr}"
  assert {"ConfigError", "CsvFormatError", "DataPathError", "ShardError", "EvalDataNotFound",
          "ConversionError", "WeightFileError", "KarpathyFormatError"} <= set(found)
  assert errors.USER_ERRORS == (errors.UserError,)


def _doc_lines(doc: str) -> list[str]:
  """The lines of the Markdown file `doc` (a path relative to the repository root)."""
  return open(os.path.join(REPO, doc)).read().split("\n")


def _first_column(doc: str, table_header: str) -> list[str]:
  """The `names` in the first column of the table of `doc` whose header row starts with
  `table_header`."""
  lines = _doc_lines(doc)
  start = next(i for i, line in enumerate(lines) if line.startswith(table_header))
  names = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    names += re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])
  return names


def test_the_docs_tables_name_exactly_the_registered_kinds():
  from rankclip_jax.data.sources import SOURCES  # pylint: disable=g-import-not-at-top
  from rankclip_jax.evaluation.evaluators import EVALUATORS  # pylint: disable=g-import-not-at-top
  assert sorted(_first_column("docs/data.md", "| kind | path |")) == sorted(SOURCES.names())
  assert (sorted(_first_column("docs/evaluation.md", "| kind | what |"))
          == sorted(EVALUATORS.names()))


@pytest.mark.parametrize("field,registry", [
    ("`loss.name`", "rankclip_jax.losses:LOSSES"),
    ("`loss.strategy`", "rankclip_jax.objective:STRATEGIES"),
    ("`loss.weight_schedule`", "rankclip_jax.losses:SCHEDULES"),
])
def test_the_training_field_table_names_each_registered_choice(field, registry):
  """The `meaning` column of the field's row in docs/training.md names the registry's choices, all
  of them, in the registry's order, and nothing else in backquotes."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, name = registry.split(":")
  names = getattr(importlib.import_module(module), name).names()
  line = next(l for l in _doc_lines("docs/training.md") if l.startswith(f"| {field}"))
  meaning = line.split("|")[2]
  assert re.findall(r"`([a-z_]+)`", meaning) == list(names), line


def test_the_loss_name_comment_in_the_defaults_names_every_loss():
  """defaults.py's comment above `c.loss.name` is where a user reading the config learns the names:
  it lists every name of the LOSSES registry, in the registry's order."""
  from rankclip_jax.losses import LOSSES  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO, "rankclip_jax", "defaults.py"), encoding="utf-8") as f:
    lines = f.read().split("\n")
  at = next(i for i, l in enumerate(lines) if l.strip().startswith("c.loss.name ="))
  start = at
  while lines[start - 1].strip().startswith("#"):
    start -= 1
  comment = " ".join(l.strip().lstrip("#") for l in lines[start:at])
  named = re.findall(r"(?:: |\| )([a-z]+)\s*\(", comment)
  assert named == list(LOSSES.names()), comment
