"""One generic registry: the single source of names for every plugin family.

Data sets, models, compression methods, attacks, saliency methods, training objectives and probes
each have one :class:`Registry`. The CLI's choices, the config validation and the docs all read
names from here.

**One discovery rule.** A registry made with ``package=`` and/or ``entry_point_group=`` fills itself
on its first lookup (:meth:`~Registry.get`, :meth:`~Registry.names`, ``in``, iteration, ``len``),
once: it imports every module of ``package`` (``pkgutil``; modules whose name starts with ``_``
are private and skipped) and loads every entry point of ``entry_point_group``
(``importlib.metadata``). Importing a module registers what it defines, so a new plugin is one new
file in the package, or, for a pip-installed package, one entry point naming a module or object
whose import registers it (``[project.entry-points."compaudit.attacks"] mine = "mypkg.attacks"``).
Nothing is imported at registry creation, so defining a registry never creates an import circle.

**Optional dependencies** are declared where a plugin is registered:
``@ATTACKS.register("apgd_ce", requires={"torchattacks": "attacks"})`` (import name -> the extra of
compaudit that installs it). :meth:`Registry.missing` says, without importing anything, whether a
plugin can run here, as one line naming the extra to install; the experiment's validation calls it,
so a missing package is refused before any work starts.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
from collections.abc import Callable, Iterator, Mapping
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

    def __init__(
        self,
        kind: str,
        *,
        error: type[CompauditError] = CompauditError,
        package: str | None = None,
        entry_point_group: str | None = None,
    ) -> None:
        self.kind = kind
        self.package = package
        self.entry_point_group = entry_point_group
        self._error = error
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}
        self._requires: dict[str, dict[str, str]] = {}
        self._discovered = package is None and entry_point_group is None
        self._discovering = False

    # ---------------------------------------------------------------- discovery

    def discover(self) -> None:
        """Import every module of :attr:`package` and load every entry point of
        :attr:`entry_point_group` (once; a no-op afterwards and while it runs, so a module that looks
        a name up while it is imported sees what is registered so far)."""
        if self._discovered or self._discovering:
            return
        self._discovering = True
        try:
            if self.package is not None:
                pkg = importlib.import_module(self.package)
                for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
                    if not info.name.startswith("_"):
                        importlib.import_module(f"{self.package}.{info.name}")
            if self.entry_point_group is not None:
                for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                    try:
                        ep.load()
                    except Exception as exc:  # a broken third-party plugin: one line naming it
                        raise self._error(
                            f"{self.kind} plugin {ep.name!r} ({ep.value}, entry point group "
                            f"{self.entry_point_group!r}) failed to load: {type(exc).__name__}: {exc}"
                        ) from None
            self._discovered = True
        finally:
            self._discovering = False

    # ---------------------------------------------------------------- registering

    def add(
        self, name: str, item: T, *, doc: str | None = None, requires: Mapping[str, str] | None = None
    ) -> T:
        """Register ``item`` under ``name``; a name may be registered once. ``requires`` maps the
        import name of each optional package the plugin needs to the extra that installs it."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        own_doc = getattr(item, "__doc__", None) if callable(item) else None
        text = doc if doc is not None else (own_doc or "")
        self._docs[name] = text.strip().splitlines()[0] if text.strip() else ""
        self._requires[name] = dict(requires or {})
        return item

    @overload
    def register(self, name: str, *, requires: Mapping[str, str] | None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T, *, requires: Mapping[str, str] | None = None) -> T: ...

    def register(
        self, name: str, item: T | None = None, *, requires: Mapping[str, str] | None = None
    ) -> T | Callable[[T], T]:
        """Register ``item`` (or use as a decorator when ``item`` is omitted)."""
        if item is not None:
            return self.add(name, item, requires=requires)

        def deco(obj: T) -> T:
            return self.add(name, obj, requires=requires)

        return deco

    @contextlib.contextmanager
    def temporary(self, name: str, item: T, *, doc: str | None = None) -> Iterator[T]:
        """Register ``item`` under ``name`` for the ``with`` block only (the Python API registers the
        caller's in-memory model and data this way, so the run resolves them like any plugin)."""
        self.discover()  # a clash with a plugin not yet imported is refused now, not later
        self.add(name, item, doc=doc)
        try:
            yield item
        finally:
            self._items.pop(name, None)
            self._docs.pop(name, None)
            self._requires.pop(name, None)

    # ---------------------------------------------------------------- lookups

    def get(self, name: str) -> T:
        """The plugin called ``name``; an unknown name raises a one-line error listing the choices."""
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise self._error(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def requirements(self, name: str) -> dict[str, str]:
        """The optional packages the plugin ``name`` needs: import name -> extra."""
        self.get(name)
        return dict(self._requires[name])

    def missing(self, name: str) -> str | None:
        """None when every optional package the plugin ``name`` needs is importable (checked with
        :func:`importlib.util.find_spec`, nothing imported); else one line naming the first missing
        package and the extra that installs it."""
        for module, extra in self.requirements(name).items():
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package missing, or a module set to None
                found = False
            if not found:
                return (
                    f"{self.kind} {name!r} needs the optional package {module!r}: "
                    f"pip install 'compaudit[{extra}]'"
                )
        return None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self.discover()
        return sorted(self._items)

    def doc(self, name: str) -> str:
        """First line of the plugin's docstring."""
        self.get(name)
        return self._docs[name]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
