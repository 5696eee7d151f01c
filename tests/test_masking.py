"""BPDA that is BPDA, a gradient-masking verdict made of measured contradictions, the per-sample
worst case per (norm, eps), and the time to fool (issue 14, parts 1-3)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compaudit.attacks import ATTACKS
from compaudit.compress import METHODS, CompressContext
from compaudit.data import DataBundle
from compaudit.probes import PROBES, ProbeContext, ProbeResult
from compaudit.probes.adversarial import BPDA, Adversarial, AttackSpec, _Run
from compaudit.variant import Variant
from tests.conftest import tiny_cnn

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def baseline(trained_state: dict[str, Tensor]) -> Variant:
    model = tiny_cnn(0)
    model.load_state_dict(trained_state)
    return Variant(name="baseline", key="base", model=model.eval())


@pytest.fixture(scope="module")
def int8(baseline: Variant, digits16: DataBundle) -> Variant:
    """The trained tiny CNN through ``quantize_int8``: fake-quant surrogate + deployed int8 model."""
    method = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 8})
    ctx = CompressContext(data=digits16, seed=0, device=CPU)
    fake = method.apply(baseline.model, ctx).eval()
    deployment = method.deploy(fake, ctx)
    assert deployment is not None
    deployed = deployment.model
    return Variant(
        name="int8",
        key="int8",
        model=fake,
        parent="baseline",
        deployed=deployed.eval(),
        surrogate=fake,
        gradient_path=False,
        graph=deployed.quantized,
    )


def probe(**params: Any) -> Adversarial:
    params.setdefault("attacks", [{"attack": "pgd", "eps": [0.1]}])
    p = PROBES.get("adversarial").from_spec("adversarial", params)
    assert isinstance(p, Adversarial)
    return p


def context(data: DataBundle, base: Variant) -> ProbeContext:
    return ProbeContext(data=data, baseline=base, device=CPU, seed=0)


def correct(model: nn.Module, data: DataBundle, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` test images ``model`` classifies correctly."""
    x, y = data.test.x[:n], data.test.y[:n]  # type: ignore[attr-defined]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok], y[ok]


# ---------------------------------------------------------------- 1. BPDA


def test_bpda_forward_is_the_deployed_models_logits_bit_for_bit(int8: Variant, digits16: DataBundle) -> None:
    assert int8.deployed is not None and int8.surrogate is not None
    bpda = BPDA(int8.deployed, int8.surrogate)
    x = digits16.test.x[:64].clone().requires_grad_(True)  # type: ignore[attr-defined]
    out = bpda(x)
    with torch.no_grad():
        deployed = int8.deployed(x.detach())
    assert torch.equal(out.detach(), deployed)  # exactly, not up to rounding
    # ...and the gradient is the surrogate's
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (g_bpda,) = torch.autograd.grad((out * w).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g_sur,) = torch.autograd.grad((int8.surrogate(x2) * w).sum(), x2)
    assert torch.allclose(g_bpda, g_sur)
    assert float(g_bpda.abs().sum()) > 0


MIN_NORM = [
    ("ddn", {"steps": 60}),
    ("deepfool", {}),
    ("cw", {"steps": 50, "binary_search_steps": 5, "lr": 0.05}),
]


@pytest.mark.parametrize(("attack", "params"), MIN_NORM, ids=[a for a, _ in MIN_NORM])
def test_minimum_norm_attacks_on_the_bpda_route_fool_the_deployed_model(
    int8: Variant, baseline: Variant, digits16: DataBundle, attack: str, params: dict[str, Any]
) -> None:
    """Every sample an attack on the ``bpda`` route reports as fooled is misclassified by the deployed
    int8 model (its success checks saw the deployed logits), and it fools at least half."""
    assert int8.deployed is not None
    route = {r.name: r for r in probe()._routes(int8, context(digits16, baseline), gradient_free=False)}[
        "bpda"
    ]
    x, y = correct(int8.deployed, digits16, 48)
    res = ATTACKS.get(attack).from_spec(attack, params).run(route.source, x, y, bounds=digits16.bounds)
    assert float(res.success.double().mean()) >= 0.5, attack
    with torch.no_grad():
        pred = int8.deployed(res.adv).argmax(1)
    assert bool((pred[res.success] != y[res.success]).all()), (
        f"{attack}: {int((pred[res.success] == y[res.success]).sum())} of {int(res.success.sum())} "
        "reported successes do not fool the deployed model"
    )


# ---------------------------------------------------------------- 2. masking, measured


class RoundedInput(nn.Module):
    """Genuine gradient masking: the input is rounded to a coarse grid first (gradient zero a.e.)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(torch.round(x * 4) / 4)
        return out


class Saturated(nn.Module):
    """Genuine gradient masking: logits x 1e4, so the cross-entropy saturates (gradient exactly 0)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x) * 1e4
        return out


SUITE: dict[str, Any] = {
    "samples": 128,
    "sanity_steps": 10,
    "attacks": [
        {"attack": "pgd", "eps": [0.1, 0.2], "params": {"steps": 10}},
        {"attack": "square", "eps": [0.2], "params": {"n_queries": 300}},
    ],
}


def audit(model: nn.Module, data: DataBundle) -> ProbeResult:
    variant = Variant(name="m", key="m", model=model.eval())
    return probe(**SUITE).run(variant, context(data, variant))


def failed_checks(res: ProbeResult) -> list[str]:
    return [r["check"] for r in res.tables["masking_checks"] if not r["passed"]]


def metric(res: ProbeResult, name: str, **params: Any) -> float:
    hits = [
        m.value
        for m in res.metrics
        if m.name == name and all(m.params.get(k) == v for k, v in params.items())
    ]
    assert len(hits) == 1, (name, params, hits)
    return hits[0]


@pytest.mark.parametrize("wrapper", [RoundedInput, Saturated])
def test_genuine_gradient_masking_of_a_float_model_is_flagged_by_evidence(
    trained_cnn: nn.Module, digits16: DataBundle, wrapper: type[nn.Module]
) -> None:
    res = audit(wrapper(trained_cnn), digits16)
    assert metric(res, "gradient_masking") == 1.0
    failed = failed_checks(res)
    assert "unbounded attack above chance" in failed
    # every failed check carries its numbers, and the warning lists them
    for row in res.tables["masking_checks"]:
        assert {"check", "route", "value", "reference", "margin", "passed", "detail"} <= set(row)
    assert any(
        w.code == "gradient_masking" and "unbounded attack above chance" in w.text and w.invalidates
        for w in res.warnings
    )
    assert metric(res, "masking_checks_failed") == len(failed)


def test_the_same_model_without_masking_is_not_flagged(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    res = audit(trained_cnn, digits16)
    assert failed_checks(res) == [], res.tables["masking_checks"]
    assert metric(res, "gradient_masking") == 0.0
    checks = {r["check"] for r in res.tables["masking_checks"]}
    # every kind of evidence was looked for
    assert {
        "gradient-free beats iterative",
        "accuracy rises with eps",
        "unbounded attack above chance",
        "more iterations lower accuracy",
    } <= checks
    assert not res.warnings


def test_an_unconverged_attack_is_caught(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    """PGD with 2 steps of eps/4 cannot reach the boundary; 4x the steps lowers accuracy a lot."""
    variant = Variant(name="m", key="m", model=trained_cnn)
    params = {"samples": 128, "attacks": [{"attack": "pgd", "eps": [0.05], "params": {"steps": 2}}]}
    res = probe(**params).run(variant, context(digits16, variant))
    (row,) = [r for r in res.tables["masking_checks"] if r["check"] == "more iterations lower accuracy"]
    assert not row["passed"] and row["value"] < row["reference"] - row["margin"]
    # its own verdict: the attack is too short; nothing says the model's gradients are masked
    assert row["verdict"] == "attack not converged"
    assert metric(res, "attack_not_converged") == 1.0 and metric(res, "gradient_masking") == 0.0
    assert any(w.code == "attack_not_converged" and not w.invalidates for w in res.warnings)
    assert not any(w.code == "gradient_masking" for w in res.warnings)


def test_int8_naive_route_is_flagged_by_measured_contradictions_not_by_construction(
    int8: Variant, baseline: Variant, digits16: DataBundle
) -> None:
    res = probe(**SUITE).run(int8, context(digits16, baseline))
    assert metric(res, "gradient_masking") == 1.0
    assert metric(res, "no_gradient_path") == 1.0  # information about the model...
    rows = res.tables["masking_checks"]
    assert all("gradient" not in r["check"] or r["check"] == "gradient-free beats iterative" for r in rows)
    failed = [r for r in rows if not r["passed"]]
    # ...while the verdict rests on measured gaps: naive far above BPDA at the same attack and strength
    gap = [r for r in failed if r["check"] == "bpda beats naive"]
    assert gap and all(r["value"] >= r["reference"] + r["margin"] for r in gap)
    assert {r["route"] for r in failed} == {"naive"}, failed  # BPDA itself is sound
    assert metric(res, "gradient_masking") == float(bool(failed))


# ---------------------------------------------------------------- 3. worst case and time to fool


def test_worst_case_is_per_sample_across_attacks_of_one_norm_and_strength() -> None:
    a = AttackSpec(attack="fgsm", eps=[0.1])
    b = AttackSpec(attack="pgd", eps=[0.1])
    c = AttackSpec(attack="pgd_l2", eps=[0.1])
    right = torch.ones(8, dtype=torch.bool)

    def run(spec: AttackSpec, fooled: list[int], route: str = "white-box") -> _Run:
        ok = right.clone()
        ok[fooled] = False
        return _Run(spec, 0.1, route, ok, ~ok)

    runs = [run(a, [0, 1]), run(b, [2, 3]), run(b, [4], "transfer"), run(c, [5, 6, 7])]
    res = ProbeResult()
    probe(attacks=[a.model_dump(), b.model_dump(), c.model_dump()])._worst_case(runs, res)
    # robust only where every L-inf attack and route failed: samples 5, 6, 7
    assert metric(res, "robust_accuracy_worst", norm="linf", eps=0.1) == 3 / 8
    assert metric(res, "robust_accuracy_worst", norm="l2", eps=0.1) == 5 / 8  # norms are not mixed
    assert metric(res, "robust_accuracy_headline", norm="linf", eps=0.1) == 3 / 8  # the first attack's


def test_headline_names_the_norm_and_strength_the_overview_shows() -> None:
    spec = {"attacks": [{"attack": "pgd", "eps": [0.1]}, {"attack": "pgd_l2", "eps": [0.5]}]}
    assert probe(**spec, headline={"norm": "l2", "eps": 0.5}).params.headline_key() == ("l2", 0.5)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"no attack of the suite measures linf at eps 0\.3"):
        probe(**spec, headline={"norm": "linf", "eps": 0.3})


def test_time_to_fool_is_per_sample_until_first_fooled(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    x, y = correct(trained_cnn, digits16, 128)
    attack = ATTACKS.get("pgd").from_spec("pgd", {"eps": 0.3, "steps": 60})
    res = attack.run(trained_cnn, x, y, bounds=digits16.bounds)
    t = res.fooled_seconds
    assert t.shape == y.shape
    assert bool(torch.isinf(t[~res.success]).all())
    hit = t[res.success]
    assert len(hit) > 0.9 * len(y)
    assert bool((hit > 0).all()) and bool((hit <= res.seconds).all())
    # most samples fall in the first steps of 60: their time is a fraction of the whole call's
    assert float(hit.mean()) < 0.5 * res.seconds


def test_seed000_preset_keeps_the_papers_fixed_c_settings_under_its_own_name() -> None:
    (spec,) = probe(preset="seed000", attacks=[]).params.suite()  # type: ignore[attr-defined]
    assert spec.name == "C&W, fixed c"
    assert spec.params == {"steps": 40, "lr": 5e-5, "c": 1.0, "binary_search_steps": 1, "abort_early": False}


def test_two_attacks_with_one_name_at_one_strength_are_refused() -> None:
    with pytest.raises(ValueError, match=r"two attacks named 'pgd' at eps 0\.1"):
        probe(
            attacks=[{"attack": "pgd", "eps": [0.1]}, {"attack": "pgd", "eps": [0.1], "params": {"steps": 5}}]
        )
    ok = probe(attacks=[{"attack": "pgd", "eps": [0.1]}, {"attack": "pgd", "eps": [0.1], "label": "pgd-5"}])
    assert [s.name for s in ok.params.suite()] == ["pgd", "pgd-5"]  # type: ignore[attr-defined]
