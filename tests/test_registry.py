"""The generic registry: the single source of plugin names, and its errors."""

from __future__ import annotations

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
