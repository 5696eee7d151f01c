"""The contract every registered attack keeps, checked on the tiny trained CNN (64 digits at 16x16).

A new attack must add its smallest useful parameters to ``FAST``: the first test fails otherwise.
Each attack runs once per property group on the plain model and, if it claims ``gradient_free``,
once on a wrapper whose forward detaches its input (no gradient path at all, like a deployed int8
model): an attack that still works there is an honest test of a quantized model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compaudit.attacks import (
    ATTACKS,
    Attack,
    AttackError,
    AttackResult,
    BoundedParams,
    FixedEpsilonAttack,
    MinimizationAttack,
    MinNormParams,
    perturbation_norm,
)
from compaudit.attacks.ensemble import Ensemble
from compaudit.data import DataBundle

FAST: dict[str, dict[str, Any]] = {
    # gradient.py
    "fgsm": {"eps": 0.1},
    "pgd": {"eps": 0.1, "steps": 10},
    "pgd_l2": {"eps": 1.5, "steps": 10},
    # minimum_norm.py
    "deepfool": {"steps": 20},
    "deepfool_linf": {"steps": 20},
    "cw": {"steps": 20, "c": 1.0},
    "ddn": {"steps": 20},
    # library.py
    "salt_pepper": {"steps": 50, "eps": 4.0},
    "ead": {"binary_search_steps": 3, "steps": 50, "initial_const": 0.1},
    "square": {"eps": 0.1, "n_queries": 100},
    "square_torchattacks": {"eps": 0.1, "n_queries": 100},
    "square_l2": {"eps": 1.5, "n_queries": 100},
    "apgd_ce": {"eps": 0.05, "steps": 10},
    "apgd_ce_l2": {"eps": 1.0, "steps": 10},
    "apgd_t": {"eps": 0.05, "steps": 10, "n_target_classes": 3},
    "apgd_t_l2": {"eps": 1.0, "steps": 10, "n_target_classes": 3},
    "fab": {"eps": 0.05, "steps": 10, "n_target_classes": 3},
    "fab_l2": {"eps": 1.0, "steps": 10, "n_target_classes": 3},
    # ensemble.py
    "autoattack": {"eps": 0.05, "version": "fast"},
    "autoattack_l2": {"eps": 1.0, "version": "fast"},
}

#: every attack must cut the clean accuracy (about 0.86) by at least this much
MIN_DROP = 0.25
NAMES = sorted(set(ATTACKS.names()) | set(FAST))


class Detached(nn.Module):
    """The wrapped model behind a detached input: forward passes only, no gradient reaches the input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x.detach())
        return out.detach()


@pytest.fixture(autouse=True)
def _one_thread(trained_state: dict[str, Tensor]) -> Iterator[None]:
    """Attacks run many tiny ops: on shared cores, OpenMP threads waiting on each other cost up to
    100x (measured: fast AutoAttack 1.5 s on one thread, 50-400 s on two beside another job).
    Depends on ``trained_state`` so the shared model is trained first, with conftest's threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch(digits16: DataBundle) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*(digits16.test[i] for i in range(64)), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def make(name: str, **overrides: Any) -> Attack[Any]:
    if name not in ATTACKS:
        pytest.skip(f"attack {name!r} is not registered")
    if name not in FAST:
        pytest.fail(f"attack {name!r} has no entry in FAST")
    if ATTACKS.missing(name):
        pytest.skip(str(ATTACKS.missing(name)))
    return ATTACKS.get(name).from_spec(name, {**FAST[name], **overrides})


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def test_every_attack_has_fast_params() -> None:
    assert set(FAST) == set(ATTACKS.names())


@pytest.mark.parametrize("name", NAMES)
def test_documented_and_flagged(name: str) -> None:
    attack = make(name)
    assert ATTACKS.doc(name), f"{name} needs a one-line docstring"
    assert attack.norm in ("linf", "l2", "l1", "l0")
    assert attack.describe()["attack"] == name


@pytest.mark.parametrize("name", NAMES)
def test_attack_contract(name: str, trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    attack = make(name)
    model = trained_cnn
    clean = accuracy(model, x, y)

    # leave the model as found: a training-mode model with one frozen parameter stays so
    model.train()
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    first = attack.run(model, x, y, generator=torch.Generator().manual_seed(1))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG must be left as it was"
    model.eval()

    adv = first.adv
    assert adv.shape == x.shape and first.success.shape == y.shape == first.norm.shape
    # lowers accuracy by a clear margin
    robust = 1.0 - float(first.success.float().mean())
    assert robust <= clean - MIN_DROP, f"{name}: accuracy {clean:.3f} -> {robust:.3f}"
    # inside the input bounds and, for bounded attacks, the eps-ball
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    norms = perturbation_norm(adv - x, attack.norm)
    # the kind is the type: a fixed-eps attack always has its ball, a minimum-norm one an optional cap
    assert isinstance(attack, FixedEpsilonAttack) != isinstance(attack, MinimizationAttack)
    if isinstance(attack, FixedEpsilonAttack):
        assert attack.kind == "fixed_eps" and attack.eps >= 0
    if attack.eps is not None and attack.norm == "linf":
        assert float(norms.max()) <= attack.eps + 1e-6
    if attack.eps is not None and attack.norm == "l2":
        assert float(norms.max()) <= attack.eps + 1e-4
    # success and norms are what the model and the perturbation say
    with torch.no_grad():
        assert torch.equal(first.success, model(adv).argmax(dim=1) != y)
    torch.testing.assert_close(first.norm, norms)

    # same generator seed, same result
    again = attack.run(model, x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.adv, first.adv)
    assert torch.equal(again.success, first.success)


@pytest.mark.parametrize("name", [n for n in NAMES if n in ATTACKS and ATTACKS.get(n).gradient_free])
def test_gradient_free_attacks_need_no_gradient(
    name: str, trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    model = Detached(trained_cnn)
    clean = accuracy(model, x, y)
    result = make(name).run(model, x, y, generator=torch.Generator().manual_seed(1))
    robust = 1.0 - float(result.success.float().mean())
    assert robust <= clean - MIN_DROP, f"{name} on a gradient-free model: {clean:.3f} -> {robust:.3f}"


@pytest.fixture(scope="module")
def int8_model(trained_state: dict[str, Tensor], digits16: DataBundle) -> nn.Module:
    """The trained tiny CNN quantized to real int8 kernels: no parameters, no gradient (about 1 s)."""
    from compaudit.compress import METHODS, CompressContext
    from tests.conftest import tiny_cnn

    model = tiny_cnn(0)
    model.load_state_dict(trained_state)
    method = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 2})
    ctx = CompressContext(data=digits16, seed=0, device=torch.device("cpu"))
    deployment = method.deploy(method.apply(model.eval(), ctx).eval(), ctx)
    assert deployment is not None
    return deployment.model


@pytest.mark.parametrize("name", [n for n in NAMES if n in ATTACKS and ATTACKS.get(n).gradient_free])
def test_gradient_free_attacks_run_on_real_int8(
    name: str, int8_model: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    clean = accuracy(int8_model, x, y)
    result = make(name).run(int8_model, x, y, generator=torch.Generator().manual_seed(1))
    robust = 1.0 - float(result.success.float().mean())
    # quantized logits are flat in places, which slows random search at FAST's query budget: a
    # smaller margin than on the float model, but a clear one
    assert robust <= clean - 0.15, f"{name} on int8: {clean:.3f} -> {robust:.3f}"


def test_pgd_at_eps_zero_changes_nothing(trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    result = make("pgd", eps=0.0).run(trained_cnn, x, y)
    assert 1.0 - float(result.success.float().mean()) == pytest.approx(accuracy(trained_cnn, x, y))
    assert float(result.norm.max()) == 0.0


@pytest.mark.parametrize("name", ["apgd_ce", "square_torchattacks"])
def test_torchattacks_refuse_other_bounds(
    name: str, trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    if ATTACKS.missing(name):
        pytest.skip(str(ATTACKS.missing(name)))
    x, y = batch
    with pytest.raises(AttackError, match=name):
        make(name).run(trained_cnn, x[:4], y[:4], bounds=(-1.0, 1.0))


# ---------------------------------------------------------------- the generic ensemble


class Replace(MinimizationAttack[MinNormParams]):
    """Test stub: replaces every input by one fixed image and records the labels it was given."""

    norm = "l2"

    def __init__(self, image: Tensor) -> None:
        super().__init__("replace", MinNormParams())
        self.image = image
        self.seen: list[Tensor] = []

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> Tensor:
        self.seen.append(y.clone())
        return self.image.expand_as(x).clone()


class L2Ensemble(Ensemble[BoundedParams]):
    norm = "l2"


def test_ensemble_keeps_first_success_and_attacks_only_survivors(
    trained_cnn: nn.Module, batch: tuple[Tensor, Tensor]
) -> None:
    x, y = batch
    with torch.no_grad():
        pred = trained_cnn(x).argmax(dim=1)
    correct = pred == y
    # two donor images the model assigns to different classes a and b
    i = int(correct.nonzero()[0])
    j = int((correct & (pred != pred[i])).nonzero()[0])
    a, b = int(pred[i]), int(pred[j])
    first, second = Replace(x[i : i + 1]), Replace(x[j : j + 1])
    # a ball large enough to hold every replacement (the ensemble projects into it)
    ball = BoundedParams(eps=1e3)
    result: AttackResult = L2Ensemble("both", ball, [first, second]).run(trained_cnn, x, y)

    assert torch.equal(first.seen[0], y[correct])  # only the correctly classified are attacked
    assert torch.equal(second.seen[0], y[correct & (y == a)])  # only the survivors of the first
    expected = x.clone()
    expected[correct & (y != a)] = x[i]
    expected[correct & (y == a)] = x[j]  # all of class a, so class b != a fools them
    assert torch.allclose(result.adv, expected, atol=1e-6)  # projection into the ball: x + (adv - x)
    assert b != a
    assert bool(result.success.all())  # the correct are fooled, the rest were never right


def test_ensemble_members_share_its_norm() -> None:
    with pytest.raises(AttackError, match="measures linf"):
        L2Ensemble("mixed", BoundedParams(eps=1.0), [Replace(torch.zeros(1)), make("square")])
    with pytest.raises(AttackError, match="at least one"):
        L2Ensemble("empty", BoundedParams(eps=1.0), [])


def test_autoattack_is_built_from_registry_entries() -> None:
    attack = make("autoattack", version="standard")
    assert isinstance(attack, Ensemble)
    names = [member.name for member in attack.attacks]
    assert names == ["apgd_ce", "apgd_t", "fab", "square"]
    steps = [getattr(member.params, "steps", None) for member in attack.attacks]
    assert steps == [100, 100, 100, None]
    assert getattr(attack.attacks[3].params, "n_queries", None) == 5000
    assert all(member.eps == attack.eps for member in attack.attacks)
