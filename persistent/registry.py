"""A tiny name -> factory registry, shared by backbones, data sources and tasks."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
  """Maps names to callables; unknown names fail with the list of known ones."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def deco(fn: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} registered twice")
      self._items[name] = fn
      return fn
    return deco

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      known = ", ".join(sorted(self._items)) or "none"
      raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
