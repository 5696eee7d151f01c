"""The one training loop: it learns, keeps the best epoch, restores flags, is repeatable and resumable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from compaudit.config import TrainSpec
from compaudit.data import DataBundle
from compaudit.errors import CompauditError
from compaudit.inference import predict
from compaudit.train import CrossEntropy, Objective, fit
from tests.conftest import tiny_cnn

FAST = TrainSpec(epochs=2, batch_size=64, lr=0.05)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Counting(Objective):
    """Cross-entropy that counts its calls and can fail at a chosen call or, from a chosen call on,
    train on wrong labels (to make a late epoch worse than an earlier one)."""

    def __init__(self, *, fail_at: int | None = None, corrupt_from: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.corrupt_from = corrupt_from

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        if self.corrupt_from is not None and self.calls >= self.corrupt_from:
            y = (y + 1) % 10
        return CrossEntropy().loss(model, x, y)


def steps_per_epoch(data: DataBundle, spec: TrainSpec) -> int:
    return math.ceil(len(data.train) / spec.batch_size)  # type: ignore[arg-type]


def test_fit_learns_well_above_chance(digits16: DataBundle) -> None:
    model = tiny_cnn(0)
    before = predict(model, digits16.test).accuracy
    result = fit(model, digits16, TrainSpec(epochs=3, batch_size=64, lr=0.05), seed=0)
    after = predict(model, digits16.test).accuracy
    assert before < 0.3  # chance is 0.1
    assert after > 0.6
    assert len(result.history) == 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_fit_keeps_the_best_validation_epoch(digits16: DataBundle) -> None:
    spec = TrainSpec(epochs=3, batch_size=64, lr=0.05, schedule="constant")
    n = steps_per_epoch(digits16, spec)
    # epoch 3 trains on labels shifted by one, so its weights are much worse than epoch 2's
    model = tiny_cnn(0)
    result = fit(model, digits16, spec, seed=0, objective=Counting(corrupt_from=2 * n + 1))
    accs = [h["val_accuracy"] for h in result.history]
    assert accs[2] < accs[1]
    assert result.best_epoch == 1 + accs.index(max(accs))
    assert result.best_epoch < 3
    assert result.best_val_accuracy == max(accs)
    assert predict(model, digits16.val).accuracy == result.best_val_accuracy


def test_fit_restores_each_modules_train_eval_flag(digits16: DataBundle) -> None:
    model = tiny_cnn(0)
    model.train()
    model.features[1].eval()
    model.fc.eval()
    before = [m.training for m in model.modules()]
    assert any(before) and not all(before)
    fit(model, digits16, TrainSpec(epochs=1, batch_size=128), seed=0)
    assert [m.training for m in model.modules()] == before


def test_fit_restores_flags_when_training_fails(digits16: DataBundle) -> None:
    model = tiny_cnn(0).eval()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(model, digits16, FAST, seed=0, objective=Counting(fail_at=3))
    assert not any(m.training for m in model.modules())


def test_same_seed_same_weights_different_seed_different(digits16: DataBundle) -> None:
    spec = TrainSpec(epochs=1, batch_size=64)
    a, b, c = tiny_cnn(0), tiny_cnn(0), tiny_cnn(0)
    assert same_weights(a, c)
    fit(a, digits16, spec, seed=1)
    fit(b, digits16, spec, seed=1)
    fit(c, digits16, spec, seed=2)
    assert same_weights(a, b)
    assert not same_weights(a, c)
    assert not same_weights(a, tiny_cnn(0))  # training changed the weights at all


def test_interrupted_then_resumed_equals_uninterrupted(digits16: DataBundle, tmp_path: Path) -> None:
    spec = TrainSpec(epochs=3, batch_size=64, lr=0.05)
    n = steps_per_epoch(digits16, spec)
    reference = tiny_cnn(0)
    ref_result = fit(reference, digits16, spec, seed=5)

    state = tmp_path / "state" / "train.pt"
    crashed = tiny_cnn(0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, digits16, spec, seed=5, objective=Counting(fail_at=n + 3), resume_path=state)
    assert state.is_file()  # saved after epoch 1, kept because training did not finish

    # a new process: the model is rebuilt (here even from another init); the saved state wins
    resumed = tiny_cnn(1)
    counter = Counting()
    result = fit(resumed, digits16, spec, seed=5, objective=counter, resume_path=state)
    assert counter.calls == 2 * n  # epochs 2 and 3 only
    assert same_weights(resumed, reference)
    assert result.history == ref_result.history
    assert result.best_epoch == ref_result.best_epoch
    assert not state.exists()
    assert list(state.parent.iterdir()) == []  # no temporary files left either


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_loss_raises_diverged(digits16: DataBundle, bad: float) -> None:
    class Broken(Objective):
        def __init__(self) -> None:
            self.calls = 0

        def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            self.calls += 1
            out = CrossEntropy().loss(model, x, y)
            return out * bad if self.calls == 4 else out

    model = tiny_cnn(0)
    with pytest.raises(CompauditError, match=r"diverged.*batch 4.*lower the learning rate"):
        fit(model, digits16, FAST, seed=0, objective=Broken())


def test_all_parameters_frozen_is_refused(digits16: DataBundle) -> None:
    model = tiny_cnn(0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(CompauditError, match="no trainable parameters"):
        fit(model, digits16, FAST, seed=0)


def test_frozen_parameters_stay_unchanged(digits16: DataBundle) -> None:
    model = tiny_cnn(0)
    frozen = model.features[0][0].weight
    frozen.requires_grad_(False)
    frozen_before = frozen.detach().clone()
    head_before = model.fc.weight.detach().clone()
    fit(model, digits16, TrainSpec(epochs=1, batch_size=64), seed=0)
    assert torch.equal(model.features[0][0].weight, frozen_before)
    assert not torch.equal(model.fc.weight, head_before)
