"""Contracts generated over the plugin registries (Captum-style): every registered name is checked,
so a new plugin is covered the moment it registers.

What each family promises here (attacks and compression methods run on tiny real models in
``test_attacks_contract.py`` and ``test_methods_contract.py``; this file adds what holds for every
family and the data sets):

- a plugin's ``Params`` is (a subclass of) the type argument of its generic base, so the typed
  ``self.params`` is what validation produced;
- an attack is exactly one kind (fixed-eps or minimum-norm), by type, and its parameters agree with
  its kind; a fixed-eps attack stays within eps of the input and a minimum-norm one reports only
  successes the model really misclassifies;
- an optional dependency is declared as import name -> extra, and :meth:`Registry.missing` is one
  line naming the extra;
- every data set keeps its bounds and shapes, splits deterministically, and refuses a missing folder
  in one line naming it.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compaudit.attacks import (
    ATTACKS,
    BoundedParams,
    FixedEpsilonAttack,
    MinimizationAttack,
    MinNormParams,
    perturbation_norm,
)
from compaudit.compress import METHODS
from compaudit.data import DATASETS, ArrayDataset, DataBundle, load_dataset
from compaudit.errors import DataError
from compaudit.registry import Registry

#: the registries whose plugins are generic in their params type
BASES: dict[str, Registry[Any]] = {"attack": ATTACKS, "method": METHODS, "data set": DATASETS}


def type_argument(cls: type) -> type | None:
    """The concrete params type a class passed to its generic plugin base, walking up the MRO."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            for arg in typing.get_args(base):
                if isinstance(arg, type):
                    return arg
    return None


@pytest.mark.parametrize(
    ("family", "name"),
    [(f, n) for f, reg in BASES.items() for n in reg.names()],
)
def test_params_class_is_the_generic_argument(family: str, name: str) -> None:
    """``Params`` validates into the type the class is generic in: no ``isinstance`` needed."""
    cls = BASES[family].get(name)
    arg = type_argument(cls)
    assert arg is not None, f"{family} {name!r} does not say which params type it takes"
    assert issubclass(cls.Params, arg), f"{name}: Params {cls.Params.__name__} is not a {arg.__name__}"


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_kind_is_a_type_and_agrees_with_its_params(name: str) -> None:
    cls = ATTACKS.get(name)
    fixed, minimum = issubclass(cls, FixedEpsilonAttack), issubclass(cls, MinimizationAttack)
    assert fixed != minimum, f"{name} must be exactly one kind"
    eps = cls.Params.model_fields.get("eps")
    assert eps is not None, f"{name}: every attack has an eps (a radius or a cap)"
    if fixed:
        assert cls.kind == "fixed_eps" and issubclass(cls.Params, BoundedParams) and eps.is_required()
    else:
        assert issubclass(cls, MinimizationAttack)  # for the type checker
        assert cls.kind == "minimum_norm" and issubclass(cls.Params, MinNormParams)
        assert cls.eps_required == eps.is_required()


@pytest.mark.parametrize(
    ("family", "name"),
    [(f, n) for f, reg in BASES.items() for n in reg.names()],
)
def test_optional_dependencies_are_declared_as_extras(family: str, name: str) -> None:
    registry = BASES[family]
    for module, extra in registry.requirements(name).items():
        assert module.isidentifier() and extra.isidentifier()
    msg = registry.missing(name)
    if msg is not None:
        assert "\n" not in msg and f"{registry.kind} {name!r}" in msg and "pip install 'compaudit[" in msg


def test_demo_attacks_need_no_extra() -> None:
    """The demo's suite (fgsm, pgd, square) comes with a plain install."""
    for name in ("fgsm", "pgd", "square"):
        assert ATTACKS.requirements(name) == {}


# ---------------------------------------------------------------- attacks by kind, on a tiny model


@pytest.fixture(scope="module")
def small_batch(digits16: DataBundle) -> tuple[Tensor, Tensor]:
    test = digits16.test
    assert isinstance(test, ArrayDataset)
    return test.x[:24], test.y[:24]


#: small settings per attack (the same as test_attacks_contract's where they exist)
FAST: dict[str, dict[str, Any]] = {
    "fgsm": {"eps": 0.1},
    "pgd": {"eps": 0.1, "steps": 5},
    "pgd_l2": {"eps": 1.5, "steps": 5},
    "deepfool": {"steps": 10},
    "deepfool_linf": {"steps": 10},
    "cw": {"steps": 10, "c": 1.0, "binary_search_steps": 2},
    "ddn": {"steps": 10},
    "salt_pepper": {"steps": 20},
    "ead": {"binary_search_steps": 2, "steps": 20, "initial_const": 0.1},
    "square": {"eps": 0.1, "n_queries": 30},
    "square_torchattacks": {"eps": 0.1, "n_queries": 30},
    "square_l2": {"eps": 1.5, "n_queries": 30},
    "apgd_ce": {"eps": 0.05, "steps": 5},
    "apgd_ce_l2": {"eps": 1.0, "steps": 5},
    "apgd_t": {"eps": 0.05, "steps": 5, "n_target_classes": 2},
    "apgd_t_l2": {"eps": 1.0, "steps": 5, "n_target_classes": 2},
    "fab": {"eps": 0.05, "steps": 5, "n_target_classes": 2},
    "fab_l2": {"eps": 1.0, "steps": 5, "n_target_classes": 2},
    "autoattack": {"eps": 0.05, "version": "fast"},
    "autoattack_l2": {"eps": 1.0, "version": "fast"},
}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_keeps_its_kinds_promise(
    name: str, trained_cnn: nn.Module, small_batch: tuple[Tensor, Tensor]
) -> None:
    if ATTACKS.missing(name):
        pytest.skip(str(ATTACKS.missing(name)))
    if name.startswith("autoattack"):
        pytest.skip("an ensemble of the members checked here (tests/test_attacks_contract.py runs it)")
    assert name in FAST, f"attack {name!r} needs small settings in FAST"
    x, y = small_batch
    torch.set_num_threads(1)
    attack = ATTACKS.get(name).from_spec(name, FAST[name])
    res = attack.run(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    assert float(res.adv.min()) >= 0.0 and float(res.adv.max()) <= 1.0  # inside the bounds
    norms = perturbation_norm(res.adv - x, attack.norm)
    tol = 1e-6 if attack.norm == "linf" else 1e-4
    if isinstance(attack, FixedEpsilonAttack):
        assert float(norms.max()) <= attack.eps + tol
    else:
        assert isinstance(attack, MinimizationAttack)
        with torch.no_grad():
            wrong = trained_cnn(res.adv).argmax(dim=1) != y
        assert bool(wrong[res.success].all()), "a reported success is classified correctly"
        if attack.eps is not None and attack.norm in ("linf", "l2"):
            assert float(norms.max()) <= attack.eps + tol


# ---------------------------------------------------------------- data sets


def _bundle(name: str, root: Path | None) -> DataBundle:
    params = {"size": 16} if name == "digits" else {}
    return load_dataset(name, root, params)


@pytest.mark.parametrize("name", DATASETS.names())
def test_data_set_refuses_a_missing_folder_in_one_line(name: str, tmp_path: Path) -> None:
    cls = DATASETS.get(name)
    if not cls.needs_root:
        pytest.skip(f"{name} is embedded: it reads no folder")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        _bundle(name, missing)
    msg = str(info.value)
    assert "\n" not in msg and str(missing) in msg and name in msg
    # an existing but empty folder: a one-line error too (naming a file or folder it lacks)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        _bundle(name, empty)
    assert "\n" not in str(info.value) and str(empty) in str(info.value)


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if not DATASETS.get(n).needs_root])
def test_embedded_data_set_bounds_shapes_and_deterministic_splits(name: str) -> None:
    a, b = _bundle(name, None), _bundle(name, None)
    lo, hi = a.bounds
    shapes = set()
    for split in ("train", "val", "test"):
        ds = a.split(split)
        assert isinstance(ds, ArrayDataset) and len(ds) > 0
        assert float(ds.x.min()) >= lo and float(ds.x.max()) <= hi and torch.isfinite(ds.x).all()
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert int(ds.y.min()) >= 0 and int(ds.y.max()) < a.num_classes
        shapes.add(tuple(ds.x.shape[1:]))
        other = b.split(split)
        assert isinstance(other, ArrayDataset)
        assert torch.equal(ds.x, other.x) and torch.equal(ds.y, other.y)  # the same split every time
    assert shapes == {a.input_shape}
