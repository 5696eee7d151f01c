"""The adversarial probe's savings change its cost, never its numbers.

Savings on (the default): an attack stops on a sample once it is fooled or its input gradient is
exactly zero, and the transfer examples are crafted once per run and cached. Off: all of it is
redone. Every robust accuracy, success rate, fooled count, masking check and verdict must be
identical, and norms agree within 1e-5 relative, on small models with an int8 variant (naive, BPDA
and transfer routes) and minimum-norm attacks; the mean confidence on the adversarial images within
1e-3 (the last iterate of a sample never fooled can differ where kernels round differently on a
smaller batch).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compaudit import Experiment, run_experiment
from compaudit.attacks import ATTACKS, Attack
from compaudit.cli import export_rows
from compaudit.store import Store
from tests.conftest import tiny_config

ATTACK_SUITE = [
    {"attack": "fgsm", "eps": [0.05]},
    {"attack": "pgd", "eps": [0.05, 0.15], "params": {"steps": 7, "restarts": 2}},
    {"attack": "deepfool", "eps": [0.5, 1.0], "params": {"steps": 20}},
    {"attack": "cw", "eps": [0.5, 1.0], "params": {"steps": 20, "binary_search_steps": 3}},
    {"attack": "square", "eps": [0.15], "params": {"n_queries": 50}},
]
NOISY = {"seconds_per_sample", "time_to_fool"}
INT8 = {"calibration_batches": 4}


def adversarial(savings: bool) -> dict[str, Any]:
    return {
        "name": "adversarial",
        "params": {"samples": 96, "attacks": ATTACK_SUITE, "sanity_steps": 4, "savings": savings},
    }


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    outs = {}
    for savings in (True, False):
        out = tmp_path_factory.mktemp(f"savings-{savings}") / "run"
        cfg = tiny_config(
            variants=[
                {
                    "name": "int8",
                    "steps": [{"method": "quantize_int8", "params": {"calibration_batches": 4}}],
                },
                {"name": "pruned", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]},
            ],
            probes=[{"name": "accuracy", "params": {"splits": ["test"]}}, adversarial(savings)],
        )
        run_experiment(Experiment.from_dict(cfg), out)
        outs[savings] = out
    return outs


def numbers(out: Path) -> dict[tuple[Any, ...], float]:
    got = {}
    for r in export_rows(out):
        if r["probe"] != "adversarial" or r["metric"] in NOISY:
            continue
        tags = tuple(sorted((k, str(v)) for k, v in r.items() if k not in ("value", "unit")))
        got[tags] = math.nan if r["value"] is None else float(r["value"])
    return got


def test_savings_change_no_number(both_ways: dict[bool, Path]) -> None:
    on, off = numbers(both_ways[True]), numbers(both_ways[False])
    assert on.keys() == off.keys()
    metrics = {dict(k)["metric"] for k in on}
    # the suite covers what the savings touch: fixed-eps and minimum-norm attacks, every route, verdicts
    assert {"robust_accuracy", "success_rate", "median_norm", "gradient_masking"} <= metrics
    routes = {dict(k).get("route") for k in on}
    assert {"white-box", "naive", "bpda", "transfer", "black-box"} <= routes
    for key in on:
        a, b = on[key], off[key]
        if dict(key)["metric"] == "confidence_post":
            # a mean of softmax confidences on the adversarial images: a sample not fooled ends at an
            # iterate that kernels on a smaller batch can round differently (a gradient component
            # near zero may change sign), which moves its confidence, never its outcome
            assert abs(a - b) <= 1e-3, key
        elif dict(key)["metric"] == "median_norm":
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-5 * max(abs(a), abs(b)), key
        else:
            assert (math.isnan(a) and math.isnan(b)) or a == b, (key, a, b)
    # and the numbers are not trivially equal: attacks moved the models
    assert any(dict(k)["metric"] == "robust_accuracy" and v < 0.5 for k, v in on.items())


def test_masking_checks_are_the_same_both_ways(both_ways: dict[bool, Path]) -> None:
    def checks(out: Path) -> list[tuple[Any, ...]]:
        with Store(out) as store:
            rows = []
            for ref in store.plan_refs():
                res = store.result(ref.key)
                if res is not None and ref.probe == "adversarial":
                    for c in res.tables.get("masking_checks", []):
                        rows.append(
                            (c["variant"], c["check"], c["route"], c["attack"], c["passed"], c["value"])
                        )
            return sorted(rows, key=str)

    on, off = checks(both_ways[True]), checks(both_ways[False])
    assert on == off and any(not c[4] for c in on)  # the int8 naive route fails some check


def test_transfer_examples_are_crafted_once_per_run_and_kept(both_ways: dict[bool, Path]) -> None:
    # with savings: one file per gradient attack and strength (minimum-norm attacks: one run), in the
    # run folder's cache; without: none
    files = sorted((both_ways[True] / "cache").glob("*.pt"))
    assert len(files) == 1 + 2 + 1 + 1  # fgsm, pgd x 2, deepfool, cw
    assert not (both_ways[False] / "cache").exists()
    blob = torch.load(files[0], weights_only=True)
    assert set(blob) == {"adv", "norm", "seconds", "times"} and blob["adv"].shape[0] == 96


# ---------------------------------------------------------------- the attacks themselves


class Counting(nn.Module):
    """A model that counts the samples its forward passes see."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        self.seen += x.shape[0]
        out: Tensor = self.model(x)
        return out


class NoGradient(nn.Module):
    """Outputs of ``model``, input gradient exactly zero (a deployed int8 model on the naive route)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x.detach())
        return out + (x * 0.0).flatten(1).sum(dim=1, keepdim=True)


def make(name: str, **params: Any) -> Attack[Any]:
    return ATTACKS.get(name).from_spec(name, params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("pgd", {"eps": 0.06, "steps": 15, "restarts": 3}),
        ("pgd_l2", {"eps": 0.8, "steps": 15, "restarts": 2}),
        ("fgsm", {"eps": 0.06}),
        ("deepfool", {"steps": 20}),
    ],
)
def test_early_exit_returns_the_same_tensors_for_less_work(
    trained_cnn: nn.Module, digits16: Any, name: str, params: dict[str, Any]
) -> None:
    x, y = digits16.test.x[:96], digits16.test.y[:96]
    results = {}
    work = {}
    for early in (True, False):
        model = Counting(trained_cnn)
        gen = torch.Generator().manual_seed(3)
        results[early] = make(name, **params).run(model, x, y, generator=gen, early_exit=early)
        work[early] = model.seen
    on, off = results[True], results[False]
    assert torch.equal(on.success, off.success)
    assert torch.allclose(on.adv, off.adv, rtol=0, atol=1e-6)
    assert torch.allclose(on.norm, off.norm, rtol=1e-5, atol=0)
    if name.startswith("pgd"):  # FGSM: one step; DeepFool drops fooled samples either way
        assert work[True] < work[False], work
    assert float(on.success.float().mean()) > 0.2
    if name.startswith("pgd"):  # some samples survive, so both kinds of result are compared
        assert not bool(on.success.all())


def test_fooled_at_any_iterate_is_at_least_as_strong_as_the_last_iterate(
    trained_cnn: nn.Module, digits16: Any
) -> None:
    x, y = digits16.test.x[:128], digits16.test.y[:128]
    pgd = make("pgd", eps=0.05, steps=10, step_size=0.03)  # a large step: iterates overshoot
    gen = {u: torch.Generator().manual_seed(0) for u in ("fooled", "end")}
    first = pgd.run(trained_cnn, x, y, generator=gen["fooled"], until="fooled")
    last = pgd.run(trained_cnn, x, y, generator=gen["end"], until="end")
    assert bool((first.success | ~last.success).all())  # fooled at the end implies fooled at some iterate
    assert int(first.success.sum()) >= int(last.success.sum())
    # a sample the model misclassifies to begin with comes back unchanged (the start point fools)
    with torch.no_grad():
        wrong = trained_cnn(x).argmax(1) != y
    if bool(wrong.any()):
        plain = make("pgd", eps=0.05, steps=5, random_start=False).run(trained_cnn, x, y)
        assert torch.equal(plain.adv[wrong], x[wrong])


def test_a_zero_gradient_stops_the_attack_after_one_step(trained_cnn: nn.Module, digits16: Any) -> None:
    x, y = digits16.test.x[:64], digits16.test.y[:64]
    for name, params in [("pgd", {"eps": 0.1, "steps": 20}), ("deepfool", {"steps": 30})]:
        seen = {}
        out = {}
        for early in (True, False):
            model = Counting(NoGradient(trained_cnn))
            out[early] = make(name, **params).run(
                model, x, y, generator=torch.Generator().manual_seed(1), early_exit=early
            )
            seen[early] = model.seen
        assert torch.equal(out[True].success, out[False].success), name
        assert torch.allclose(out[True].adv, out[False].adv, rtol=0, atol=1e-6), name
        # one pass over the batch (and the base's final check), not one per step
        assert seen[True] <= 3 * len(x) < seen[False], (name, seen)


# ---------------------------------------------------------------- deterministic attacks run once

SMALL = {
    "deepfool": {"steps": 10},
    "deepfool_linf": {"steps": 10},
    "cw": {"steps": 10, "binary_search_steps": 2},
    "ddn": {"steps": 10},
}


def test_attacks_marked_deterministic_ignore_the_seed_and_until(
    trained_cnn: nn.Module, digits16: Any
) -> None:
    # the probe lets one run of such an attack stand for another: that must hold for every one
    names = [n for n in ATTACKS.names() if ATTACKS.get(n).deterministic]
    assert set(SMALL) <= set(names)
    x, y = digits16.test.x[:48], digits16.test.y[:48]
    for name in names:
        runs = [
            make(name, **SMALL.get(name, {})).run(
                trained_cnn, x, y, generator=torch.Generator().manual_seed(seed), until=until
            )
            for seed, until in ((0, "fooled"), (12345, "end"))
        ]
        assert torch.equal(runs[0].adv, runs[1].adv), name
        assert bool(runs[0].success.any()), name  # it did something to compare


def test_the_baseline_runs_a_deterministic_attack_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the baseline's white-box C&W is the run that made its transfer examples, not a second run
    cls = ATTACKS.get("cw")
    calls: list[int] = []
    original = cls._run

    def counted(self: Any, model: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        calls.append(x.shape[0])
        return original(self, model, x, *args, **kwargs)

    monkeypatch.setattr(cls, "_run", counted)
    suite = [{"attack": "cw", "eps": [0.5], "params": {"steps": 5, "binary_search_steps": 2}}]
    seen = {}
    for savings in (True, False):
        calls.clear()
        cfg = tiny_config(
            variants=[],
            probes=[{"name": "adversarial", "params": {"samples": 32, "attacks": suite, "savings": savings}}],
        )
        run_experiment(Experiment.from_dict(cfg), tmp_path / f"savings-{savings}")
        seen[savings] = list(calls)
    assert seen[True] == seen[False] == [32]  # one batch of 32, once, both ways
