"""The adversarial probe end to end: routes, worst case, and the gradient-masking verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compaudit import Experiment, run_experiment
from compaudit.cli import export_rows
from compaudit.errors import ConfigError
from compaudit.run.validate import experiment_from_dict
from tests.conftest import tiny_config

PGD = {"attack": "pgd", "eps": [0.05, 0.15], "params": {"steps": 7}}
SQUARE = {"attack": "square", "eps": [0.15], "params": {"n_queries": 200}}
#: the convergence check runs at the headline strength (PGD-7 converges at 0.15, not at 0.05)
ADV = {
    "name": "adversarial",
    "params": {
        "samples": 128,
        "attacks": [PGD, SQUARE],
        "sanity_steps": 5,
        "headline": {"norm": "linf", "eps": 0.15},
    },
}


def rows(out: Path, probe: str = "adversarial") -> list[dict[str, Any]]:
    return [r for r in export_rows(out) if r["probe"] == probe]


def pick(rs: list[dict[str, Any]], variant: str, metric: str, **params: Any) -> float:
    hits = [
        r["value"]
        for r in rs
        if r["variant"] == variant and r["metric"] == metric and all(r.get(k) == v for k, v in params.items())
    ]
    assert len(hits) == 1, (variant, metric, params, hits)
    return float(hits[0])


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adv") / "run"
    cfg = tiny_config(
        variants=[
            {"name": "int8", "steps": [{"method": "quantize_int8", "params": {"calibration_batches": 4}}]},
            {"name": "pruned", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.3}}]},
        ],
        probes=[{"name": "accuracy", "params": {"splits": ["test"]}}, ADV],
    )
    run_experiment(Experiment.from_dict(cfg), out)
    return out


def test_int8_naive_route_is_flagged_as_gradient_masking(audited: Path) -> None:
    rs = rows(audited)
    naive = pick(rs, "int8", "robust_accuracy", attack="pgd", eps=0.15, route="naive")
    bpda = pick(rs, "int8", "robust_accuracy", attack="pgd", eps=0.15, route="bpda")
    transfer = pick(rs, "int8", "robust_accuracy", attack="pgd", eps=0.15, route="transfer")
    clean = pick(rs, "int8", "clean_accuracy")
    assert naive > max(bpda, transfer) + 0.3  # the seeds' route: the int8 model looks robust...
    assert naive >= clean - 0.05  # ...because the attack cannot move from its random start
    worst = pick(rs, "int8", "robust_accuracy", attack="pgd", eps=0.15, route="worst")
    assert worst <= min(naive, bpda, transfer)
    assert pick(rs, "int8", "gradient_masking") == 1.0
    assert pick(rs, "int8", "zero_or_nan_gradient_share") == 1.0  # information, shown as such
    assert pick(rs, "int8", "no_gradient_path") == 1.0
    html = (audited / "report.html").read_text()
    # the flag lists the measured contradictions behind it
    assert "int8: GRADIENT MASKING" in html and "bpda beats naive" in html and "transfer beats naive" in html


def test_float_baseline_gets_no_masking_verdict(audited: Path) -> None:
    rs = rows(audited)
    assert pick(rs, "baseline", "gradient_masking") == 0.0
    assert pick(rs, "baseline", "zero_or_nan_gradient_share") == 0.0
    base_lo = pick(rs, "baseline", "robust_accuracy", attack="pgd", eps=0.05, route="white-box")
    base_hi = pick(rs, "baseline", "robust_accuracy", attack="pgd", eps=0.15, route="white-box")
    assert base_hi <= base_lo < pick(rs, "baseline", "clean_accuracy")  # stronger attack, lower accuracy
    assert (
        pick(rs, "baseline", "robust_accuracy", attack="pgd", eps=1.0, route="white-box (unbounded)") <= 0.1
    )
    assert pick(rs, "baseline", "no_gradient_path") == 0.0
    html = (audited / "report.html").read_text()
    assert "baseline: GRADIENT MASKING" not in html
    # the robustness-vs-eps curve of PGD (two strengths) is in the page, inline
    assert 'alt="pgd: robust accuracy vs eps"' in html and "data:image/png;base64," in html


def test_pruned_float_variant_has_white_box_and_transfer_and_a_worst_case(audited: Path) -> None:
    rs = rows(audited)
    wb = pick(rs, "pruned", "robust_accuracy", attack="pgd", eps=0.05, route="white-box")
    tr = pick(rs, "pruned", "robust_accuracy", attack="pgd", eps=0.05, route="transfer")
    worst = pick(rs, "pruned", "robust_accuracy", attack="pgd", eps=0.05, route="worst")
    assert worst <= min(wb, tr)
    assert pick(rs, "pruned", "robust_accuracy_worst", norm="linf", eps=0.05) <= worst
    # across attacks: PGD and Square at L-inf 0.15, per sample
    hi = [pick(rs, "pruned", "robust_accuracy", attack=a, eps=0.15, route="worst") for a in ("pgd",)]
    hi.append(pick(rs, "pruned", "robust_accuracy", attack="square", eps=0.15, route="black-box"))
    assert pick(rs, "pruned", "robust_accuracy_worst", norm="linf", eps=0.15) <= min(hi)
    sq = pick(rs, "pruned", "robust_accuracy", attack="square", eps=0.15, route="black-box")
    assert sq < pick(rs, "pruned", "clean_accuracy")  # the gradient-free attack works too


def test_gradient_free_attack_reaches_the_int8_model(audited: Path) -> None:
    rs = rows(audited)
    sq = pick(rs, "int8", "robust_accuracy", attack="square", eps=0.15, route="black-box")
    assert sq < pick(rs, "int8", "clean_accuracy") - 0.1


def test_attack_suite_is_validated_with_the_experiment() -> None:
    bad = tiny_config(
        probes=[{"name": "adversarial", "params": {"attacks": [{"attack": "pgd-x", "eps": [0.1]}]}}]
    )
    with pytest.raises(
        ConfigError, match=r"probes\[0\]\.params\.attacks\[0\]\.attack: unknown attack 'pgd-x'"
    ):
        experiment_from_dict(bad)
    none = tiny_config(probes=[{"name": "adversarial", "params": {}}])
    with pytest.raises(ConfigError, match="give attacks, a preset, or both"):
        experiment_from_dict(none)
    ok = tiny_config(probes=[{"name": "adversarial", "params": {"preset": "seed002_fmnist"}}])
    experiment_from_dict(ok)
    # every preset names registered attacks with valid parameters
    from compaudit.probes.adversarial import PRESETS, AdversarialParams, runs_once

    for preset in PRESETS:
        assert AdversarialParams.model_validate({"preset": preset}).suite()
    # a minimum-norm attack that needs eps (FAB) runs per strength; one that does not (C&W) runs once
    from compaudit.attacks import ATTACKS

    assert not runs_once(ATTACKS.get("fab")) and runs_once(ATTACKS.get("cw"))
    fab = tiny_config(
        probes=[{"name": "adversarial", "params": {"attacks": [{"attack": "fab", "eps": [0.05]}]}}]
    )
    experiment_from_dict(fab)


def test_adversarial_fine_tuning_of_a_pruned_model_beats_standard_fine_tuning(tmp_path: Path) -> None:
    """Seed 002's central finding on digits: after 50% filter pruning, 3 epochs of adversarial
    (PGD) fine-tuning give far higher PGD accuracy than 3 epochs of standard fine-tuning."""
    pgd_train = {"eps": 0.1, "step_size": 0.025, "steps": 5}
    step = [{"method": "prune_filters", "params": {"ratio": 0.5}}]
    cfg = tiny_config(
        variants=[
            {"name": "st-ft", "steps": step, "finetune": {"epochs": 3, "lr": 0.02}},
            {
                "name": "adv-ft",
                "steps": step,
                "finetune": {"epochs": 3, "lr": 0.02, "objective": "adversarial", "pgd": pgd_train},
            },
        ],
        probes=[
            {
                "name": "adversarial",
                "params": {
                    "samples": 200,
                    "attacks": [{"attack": "pgd", "eps": [0.1], "params": {"steps": 10, "step_size": 0.025}}],
                    "sanity_eps": None,
                },
            }
        ],
    )
    run_experiment(Experiment.from_dict(cfg), tmp_path / "x")
    rs = rows(tmp_path / "x")
    st = pick(rs, "st-ft", "robust_accuracy", attack="pgd", eps=0.1, route="white-box")
    adv = pick(rs, "adv-ft", "robust_accuracy", attack="pgd", eps=0.1, route="white-box")
    assert adv > st + 0.25, (st, adv)
    assert pick(rs, "adv-ft", "clean_accuracy") > 0.8
