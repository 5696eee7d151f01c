"""The generic registry: the single source of plugin names, and its errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from compaudit.compress import METHODS
from compaudit.data import DATASETS
from compaudit.errors import CompauditError, DataError, MethodError, ModelError, ProbeError
from compaudit.models import MODELS
from compaudit.probes import PROBES
from compaudit.registry import Registry


class Widget:
    """A widget for tests.

    More text that doc() must not return.
    """


def undocumented() -> None:
    pass


def test_add_get_names_doc() -> None:
    reg: Registry[object] = Registry("widget")
    assert reg.add("zeta", Widget) is Widget
    reg.add("alpha", undocumented)
    reg.add("mid", Widget, doc="  Explicit doc.\nsecond line")
    assert reg.get("zeta") is Widget
    assert reg.get("alpha") is undocumented
    assert reg.names() == ["alpha", "mid", "zeta"]
    assert list(reg) == ["alpha", "mid", "zeta"]
    assert len(reg) == 3
    assert "alpha" in reg and "beta" not in reg
    assert reg.doc("zeta") == "A widget for tests."
    assert reg.doc("mid") == "Explicit doc."
    assert reg.doc("alpha") == ""


def test_duplicate_name_is_refused_and_keeps_the_first() -> None:
    reg: Registry[int] = Registry("number")
    reg.add("one", 1)
    with pytest.raises(ValueError, match="'one' is already registered"):
        reg.add("one", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("one")(3)
    assert reg.get("one") == 1
    assert len(reg) == 1


@pytest.mark.parametrize("name", ["", " padded", "padded "])
def test_invalid_names_are_refused(name: str) -> None:
    reg: Registry[int] = Registry("number")
    with pytest.raises(ValueError, match="invalid number name"):
        reg.add(name, 1)
    assert len(reg) == 0


def test_unknown_name_raises_the_family_error_with_sorted_choices() -> None:
    reg: Registry[int] = Registry("gadget", error=DataError)
    for name in ("pear", "apple", "mango"):
        reg.add(name, 0)
    with pytest.raises(DataError) as info:
        reg.get("banana")
    msg = str(info.value)
    assert "unknown gadget 'banana'" in msg
    assert msg.endswith("apple, mango, pear")
    assert "\n" not in msg
    with pytest.raises(DataError):
        reg.doc("banana")


def test_unknown_name_in_an_empty_registry_says_none_registered() -> None:
    reg: Registry[int] = Registry("gadget")
    with pytest.raises(CompauditError, match=r"\(none registered\)"):
        reg.get("x")


def test_decorator_form_registers_and_returns_the_object() -> None:
    reg: Registry[type[object]] = Registry("widget")

    @reg.register("decorated")
    class Decorated:
        """Registered by decorator."""

    assert reg.get("decorated") is Decorated
    assert Decorated.__name__ == "Decorated"  # the decorator returned the class itself
    assert reg.doc("decorated") == "Registered by decorator."
    assert reg.register("direct", Widget) is Widget
    assert reg.names() == ["decorated", "direct"]


@pytest.mark.parametrize(
    ("registry", "error"),
    [(DATASETS, DataError), (MODELS, ModelError), (METHODS, MethodError), (PROBES, ProbeError)],
    ids=["datasets", "models", "methods", "probes"],
)
def test_builtin_registries_raise_their_own_error(registry: Registry[object], error: type[Exception]) -> None:
    assert len(registry) > 0
    assert registry.names() == sorted(registry.names())
    with pytest.raises(error) as info:
        registry.get("no-such-plugin")
    assert str(info.value).endswith(", ".join(sorted(registry.names())))
    for name in registry.names():
        assert registry.doc(name), f"{registry.kind} {name!r} has no docstring"


# ---------------------------------------------------------------- one discovery rule


def test_package_modules_are_discovered_on_first_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry with ``package=`` imports every public module of it on its first lookup, once;
    creating the registry imports nothing."""
    pkg = tmp_path / "widgetpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from compaudit.registry import Registry\nREG = Registry('widget', package='widgetpkg')\n"
    )
    (pkg / "round.py").write_text("from widgetpkg import REG\nREG.add('round', 1)\n")
    (pkg / "square.py").write_text("from widgetpkg import REG\nREG.add('square', 2)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import widgetpkg

    assert "widgetpkg.round" not in sys.modules  # nothing imported before a lookup
    assert widgetpkg.REG.names() == ["round", "square"]
    assert "square" in widgetpkg.REG and widgetpkg.REG.get("round") == 1
    assert len(widgetpkg.REG) == 2  # discovered once: no duplicate registration
    for mod in ("widgetpkg", "widgetpkg.round", "widgetpkg.square"):
        sys.modules.pop(mod, None)


def test_an_entry_point_registers_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pip-installed package registers an attack through a ``compaudit.attacks`` entry point: a
    distribution on ``sys.path`` whose ``entry_points.txt`` names a module that registers it."""
    import importlib.metadata

    from compaudit.attacks import ATTACKS, FixedEpsilonAttack

    (tmp_path / "myattacks.py").write_text(
        textwrap.dedent(
            """
            from compaudit.attacks import ATTACKS, BoundedParams, FixedEpsilonAttack


            class Noop(FixedEpsilonAttack[BoundedParams]):
                \"\"\"Returns its inputs: a plugin from another distribution.\"\"\"

                def _run(self, model, x, y, *, bounds, generator):
                    return x.clone()


            ATTACKS.add("noop_plugin", Noop, requires={"no_such_module_xyz": "noop"})
            """
        )
    )
    info = tmp_path / "myattacks-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myattacks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[compaudit.attacks]\nnoop = myattacks\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = [ep.value for ep in importlib.metadata.entry_points(group="compaudit.attacks")]
    assert "myattacks" in group
    # a fresh discovery (the session's registry was filled before this distribution existed)
    monkeypatch.setattr(ATTACKS, "_discovered", False)
    try:
        assert "noop_plugin" in ATTACKS
        assert issubclass(ATTACKS.get("noop_plugin"), FixedEpsilonAttack)
        assert ATTACKS.doc("noop_plugin") == "Returns its inputs: a plugin from another distribution."
        assert ATTACKS.missing("noop_plugin") == (
            "attack 'noop_plugin' needs the optional package 'no_such_module_xyz': "
            "pip install 'compaudit[noop]'"
        )
        assert ATTACKS.missing("pgd") is None
    finally:
        for table in (ATTACKS._items, ATTACKS._docs, ATTACKS._requires):
            table.pop("noop_plugin", None)
        sys.modules.pop("myattacks", None)


def test_a_broken_entry_point_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[compaudit.testgroup]\nbad = no_such_package_abc.mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[int] = Registry("gadget", error=DataError, entry_point_group="compaudit.testgroup")
    with pytest.raises(DataError) as exc:
        reg.names()
    msg = str(exc.value)
    assert "\n" not in msg and "'bad'" in msg and "no_such_package_abc.mod" in msg


def test_missing_checks_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    reg: Registry[int] = Registry("gadget")
    reg.register("needs", 1, requires={"json": "base", "no_such_module_q": "extra"})
    reg.register("plain", 2)
    assert reg.missing("plain") is None
    assert (
        reg.missing("needs")
        == "gadget 'needs' needs the optional package 'no_such_module_q': pip install 'compaudit[extra]'"
    )
    monkeypatch.setitem(sys.modules, "json", None)  # "import json" would fail now
    assert reg.missing("needs") is not None and "'json'" in str(reg.missing("needs"))
    with pytest.raises(CompauditError, match="unknown gadget 'nope'"):
        reg.missing("nope")
