"""Chains, per-step caching, fine-tuning objectives, sweeps with level selection, sparse saving."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

from compaudit import Experiment, run_experiment
from compaudit.cli import export_rows
from compaudit.config import PGDSpec
from compaudit.errors import ConfigError
from compaudit.inference import predict
from compaudit.run.validate import experiment_from_dict
from compaudit.serialize import from_sparse_state, load_sparse, save_sparse, saved_size, to_sparse_state
from compaudit.train import PGDAdversarial, pgd_linf
from tests.conftest import tiny_config

ACC = [{"name": "accuracy"}]


def rows_by(out: Path) -> dict[tuple[Any, ...], float]:
    return {(r["variant"], r["probe"], r["metric"], r.get("split")): r["value"] for r in export_rows(out)}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_sparse_save_round_trips_exactly_and_shrinks_with_sparsity(sparsity: float) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 128, 3, 3, generator=g)
    w[torch.rand(w.shape, generator=g) < sparsity] = 0.0
    state = {
        "conv.weight": w,
        "conv.bias": torch.randn(128, generator=g),
        "bn.num_batches_tracked": torch.tensor(3),
    }
    buf = io.BytesIO()
    save_sparse(state, buf)
    buf.seek(0)
    back = load_sparse(buf)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)
    ratio = saved_size(state, sparse=True) / saved_size(state)
    if sparsity == 0.0:
        assert ratio == pytest.approx(1.0, abs=0.02)  # dense tensors are stored as they are
    else:
        # values (1 - s) * 4 bytes + 1 bit of mask per weight, over 4 bytes dense
        expected = (1 - sparsity) + 1 / 32
        assert ratio == pytest.approx(expected, abs=0.03)
    assert from_sparse_state(to_sparse_state(state)).keys() == state.keys()


def test_pgd_stays_in_the_ball_and_lowers_accuracy(trained_cnn: torch.nn.Module, digits16: Any) -> None:
    x, y = digits16.test.x[:128], digits16.test.y[:128]
    trained_cnn.eval()
    adv = pgd_linf(
        trained_cnn, x, y, eps=0.1, step_size=0.02, steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    clean = (trained_cnn(x).argmax(1) == y).float().mean()
    robust = (trained_cnn(adv).argmax(1) == y).float().mean()
    assert robust < clean - 0.2
    assert all(p.requires_grad for p in trained_cnn.parameters())  # left as found
    zero = pgd_linf(trained_cnn, x, y, eps=1e-12, step_size=0.02, steps=3, random_start=False)
    assert torch.allclose(zero, x, atol=1e-6)


def test_adversarial_objective_restores_modes(trained_cnn: torch.nn.Module, digits16: Any) -> None:
    obj = PGDAdversarial(PGDSpec(eps=0.05, steps=2))
    trained_cnn.train()
    loss = obj.loss(trained_cnn, digits16.train.x[:16], digits16.train.y[:16])
    assert loss.requires_grad and torch.isfinite(loss)
    assert all(m.training for m in trained_cnn.modules())


def test_variants_sharing_a_prefix_build_it_once(tmp_path: Path) -> None:
    step = {"method": "prune_unstructured", "params": {"sparsity": 0.5}, "finetune": {"epochs": 1}}
    cfg = tiny_config(
        variants=[
            {"name": "a", "steps": [step]},
            {"name": "b", "steps": [step, {"method": "prune_unstructured", "params": {"sparsity": 0.5}}]},
        ],
        probes=ACC,
    )
    summary = run_experiment(Experiment.from_dict(cfg), tmp_path / "x")
    assert summary.trained == ["baseline", "a"]  # b reuses a's fine-tuned first step
    rows = rows_by(tmp_path / "x")
    assert rows[("b", "accuracy", "accuracy", "test")] != rows[("a", "accuracy", "accuracy", "test")]
    models = sorted(p.name for p in (tmp_path / "x" / "models").glob("*.pt"))
    assert len(models) == 3  # baseline, a's step, b's second step


def test_chain_applies_in_order_and_masks_survive_later_fine_tuning(tmp_path: Path) -> None:
    cfg = tiny_config(
        variants=[
            {
                "name": "c",
                "steps": [
                    {"method": "prune_unstructured", "params": {"sparsity": 0.5, "scope": "layer"}},
                    {"method": "prune_unstructured", "params": {"sparsity": 0.5, "scope": "layer"}},
                ],
                "finetune": {"epochs": 1},
            }
        ],
        probes=[{"name": "efficiency", "params": {"batch_sizes": [1], "repeats": 1, "warmup": 0}}],
    )
    run_experiment(Experiment.from_dict(cfg), tmp_path / "x")
    rows = rows_by(tmp_path / "x")
    # the second step prunes half of what the first left: 75% zeros, kept through fine-tuning
    assert rows[("c", "efficiency", "sparsity", None)] == pytest.approx(0.75, abs=0.01)


def test_sweep_expands_and_selects_the_most_compressed_level_within_tolerance(tmp_path: Path) -> None:
    cfg = tiny_config(
        variants=[
            {
                "name": "p",
                "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.1}}],
                "sweep": {"param": "sparsity", "values": [0.2, 0.95, 0.5]},
                "select": {"within": 0.03},
            }
        ],
        probes=ACC,
    )
    run_experiment(Experiment.from_dict(cfg), tmp_path / "x")
    rows = rows_by(tmp_path / "x")
    val = {lv: rows[(f"p@{lv}", "accuracy", "accuracy", "val")] for lv in (0.2, 0.5, 0.95)}
    base = rows[("baseline", "accuracy", "accuracy", "val")]
    ok = [lv for lv in (0.2, 0.5, 0.95) if val[lv] >= base - 0.03]
    selected = rows[("p", "selection", "selected_level", "val")]
    assert selected == max(ok)
    assert val[0.95] < base - 0.03  # the extreme level is really excluded


def test_select_needs_the_accuracy_probe_on_its_split() -> None:
    cfg = tiny_config(
        variants=[
            {
                "name": "p",
                "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.1}}],
                "sweep": {"param": "sparsity", "values": [0.2, 0.5]},
                "select": {"within": 0.03, "split": "val"},
            }
        ],
        probes=[{"name": "accuracy", "params": {"splits": ["test"]}}],
    )
    with pytest.raises(ConfigError, match=r"variants\[0\].select"):
        experiment_from_dict(cfg)


def test_bad_sweep_value_names_the_sweep() -> None:
    cfg = tiny_config(
        variants=[
            {
                "name": "p",
                "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.1}}],
                "sweep": {"param": "sparsity", "values": [0.2, 1.5]},
            }
        ]
    )
    with pytest.raises(ConfigError, match=r"variants\[0\].sweep \(value 1.5\)"):
        experiment_from_dict(cfg)


def test_adversarial_fine_tuning_raises_robust_accuracy(trained_cnn: torch.nn.Module, digits16: Any) -> None:
    """Seed 002's central finding in miniature: a few epochs of PGD fine-tuning make a model far more
    robust to the same PGD than standard fine-tuning does."""
    import copy

    from compaudit.config import TrainSpec
    from compaudit.train import fit

    spec = PGDSpec(eps=0.1, step_size=0.02, steps=5)
    std, adv = copy.deepcopy(trained_cnn), copy.deepcopy(trained_cnn)
    ft = TrainSpec(epochs=2, lr=0.02, schedule="constant")
    fit(std, digits16, ft, seed=0)
    fit(adv, digits16, ft, seed=0, objective=PGDAdversarial(spec, seed=0))
    x, y = digits16.test.x, digits16.test.y

    def robust(m: torch.nn.Module) -> float:
        m.eval()
        a = pgd_linf(m, x, y, eps=0.1, step_size=0.02, steps=10, generator=torch.Generator().manual_seed(1))
        return float((m(a).argmax(1) == y).float().mean())

    assert robust(adv) > robust(std) + 0.2
    assert predict(adv, digits16.test).accuracy > 0.5


def test_select_can_match_another_variant_instead_of_the_baseline(tmp_path: Path) -> None:
    """Seed 002 matches the pruning level to the INT8 variant's accuracy; here to a 70% pruned one."""
    cfg = tiny_config(
        variants=[
            {"name": "ref", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.7}}]},
            {
                "name": "p",
                "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.1}}],
                "sweep": {"param": "sparsity", "values": [0.2, 0.5, 0.8, 0.95]},
                "select": {"within": 0.0, "match": "ref"},
            },
        ],
        probes=ACC,
    )
    run_experiment(Experiment.from_dict(cfg), tmp_path / "x")
    rows = rows_by(tmp_path / "x")
    ref = rows[("ref", "accuracy", "accuracy", "val")]
    ok = [lv for lv in (0.2, 0.5, 0.8, 0.95) if rows[(f"p@{lv}", "accuracy", "accuracy", "val")] >= ref]
    assert rows[("p", "selection", "selected_level", "val")] == max(ok)
    assert rows[("p", "selection", "reference_accuracy", "val")] == ref
    bad = tiny_config(variants=[{**cfg["variants"][1], "select": {"match": "nope"}}], probes=ACC)
    with pytest.raises(ConfigError, match=r"select\.match: no variant named 'nope'"):
        experiment_from_dict(bad)
