"""One registry per kind of component (data sources, losses, loss strategies, weight schedules,
evaluators, zero-shot tasks): the only list of a kind's names, and what each name builds.

    LOSSES = Registry("config.loss.name")
    LOSSES.add("rankclip", Loss(...))
    LOSSES.get(name)          # the entry, or a ConfigError naming the field and the choices

Config validation, error messages and the tables of docs/data.md, evaluation.md and training.md read the names from here.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from rankclip_jax.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """An ordered {name: entry} that is filled once, at import, by the module that owns the kind."""

  def __init__(self, field: str):
    self.field = field  # the config field that names an entry, for error messages
    self._entries: dict[str, T] = {}

  def add(self, name: str, entry: T) -> T:
    if name in self._entries:
      raise ValueError(f"{self.field}: {name!r} is registered twice.")
    self._entries[name] = entry
    return entry

  def register(self, name: str):
    """Decorator form of add: @REGISTRY.register("name") over a function or class."""
    return lambda entry: self.add(name, entry)

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def get(self, name: str, field: str | None = None) -> T:
    """The entry called `name`; else a ConfigError naming `field` (default: the registry's)."""
    if name not in self._entries:
      raise ConfigError(self.unknown(name, field))
    return self._entries[name]

  def unknown(self, name, field: str | None = None) -> str:
    return f"{field or self.field}={name!r}; choose one of {self.names()}."

  def __contains__(self, name) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def items(self):
    return self._entries.items()

  def __repr__(self):
    return f"Registry({self.field}: {', '.join(self._entries)})"
