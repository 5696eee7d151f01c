"""One generic registry: the single source of names for every plugin family.

Data sets, models, compression methods and probes each have one :class:`Registry`.
The CLI's choices, the config validation and the docs all read names from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from compaudit.errors import CompauditError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to plugins of one kind.

    >>> colours: Registry[int] = Registry("colour")
    >>> colours.add("red", 1)
    1
    >>> colours.get("red")
    1
    """

    def __init__(self, kind: str, *, error: type[CompauditError] = CompauditError) -> None:
        self.kind = kind
        self._error = error
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def add(self, name: str, item: T, *, doc: str | None = None) -> T:
        """Register ``item`` under ``name``; a name may be registered once."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        own_doc = getattr(item, "__doc__", None) if callable(item) else None
        text = doc if doc is not None else (own_doc or "")
        self._docs[name] = text.strip().splitlines()[0] if text.strip() else ""
        return item

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T) -> T: ...

    def register(self, name: str, item: T | None = None) -> T | Callable[[T], T]:
        """Register ``item`` (or use as a decorator when ``item`` is omitted)."""
        if item is not None:
            return self.add(name, item)

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def get(self, name: str) -> T:
        """The plugin called ``name``; an unknown name raises a one-line error listing the choices."""
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise self._error(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    @contextlib.contextmanager
    def temporary(self, name: str, item: T, *, doc: str | None = None) -> Iterator[T]:
        """Register ``item`` under ``name`` for the ``with`` block only (the Python API registers the
        caller's in-memory model and data this way, so the run resolves them like any plugin)."""
        self.add(name, item, doc=doc)
        try:
            yield item
        finally:
            self._items.pop(name, None)
            self._docs.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def doc(self, name: str) -> str:
        """First line of the plugin's docstring."""
        self.get(name)
        return self._docs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
