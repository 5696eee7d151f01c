"""Knowledge distillation (objective and method) and layer ablation, down to an end-to-end run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compaudit import Experiment, build_model, load_dataset, run_experiment
from compaudit.cli import export_rows
from compaudit.compress import METHODS, CompressContext
from compaudit.config import TrainSpec
from compaudit.data import DataBundle
from compaudit.data.base import ArrayDataset
from compaudit.errors import MethodError, ModelError
from compaudit.inference import predict
from compaudit.models import load_state_strict
from compaudit.train import OBJECTIVES, fit
from compaudit.train.distill import Distillation, distillation_loss
from tests.conftest import tiny_config


@pytest.fixture(autouse=True, scope="module")
def _threads() -> Iterator[None]:
    """One thread (overrides conftest's two, for this module and its module fixtures): these models
    are tiny, and two OpenMP threads on two busy cores wait for each other far more than they
    compute (training the teacher took 16 s with two threads and 2 s with one while other tests ran)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def context(data: DataBundle, *, seed: int = 0, restoring: bool = False) -> CompressContext:
    return CompressContext(data=data, seed=seed, device=torch.device("cpu"), restoring=restoring)


def apply(method: str, model: nn.Module, ctx: CompressContext, **params: Any) -> nn.Module:
    return METHODS.get(method).from_spec(method, params).apply(model, ctx)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


# ---------------------------------------------------------------- the objective


def test_distillation_loss_equals_a_hand_computation() -> None:
    s = [[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [0.5, 0.5, 2.0]]
    y = [1, 2]
    alpha, tau = 0.3, 2.0

    def softmax(row: list[float], temp: float) -> list[float]:
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    kl = ce = 0.0
    for si, ti, yi in zip(s, t, y, strict=True):
        p, q = softmax(ti, tau), softmax(si, tau)
        kl += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True))
        ce -= math.log(softmax(si, 1.0)[yi])
    expected = alpha * tau**2 * kl / 2 + (1 - alpha) * ce / 2
    got = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha=alpha, tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # alpha = 0 is plain cross-entropy; a student equal to its teacher has no soft loss
    s_t, t_t, y_t = torch.tensor(s), torch.tensor(t), torch.tensor(y)
    plain = distillation_loss(s_t, t_t, y_t, alpha=0.0, tau=10.0)
    assert plain.item() == pytest.approx(F.cross_entropy(s_t, y_t).item(), rel=1e-6)
    assert distillation_loss(t_t, t_t, y_t, alpha=1.0, tau=10.0).item() == pytest.approx(0.0, abs=1e-6)


class _Recorder(nn.Module):
    """A linear teacher that records its mode and whether autograd was on at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        out: Tensor = self.lin(x)
        return out


def test_distillation_teacher_runs_in_eval_without_grad_and_gradient_reaches_only_the_student() -> None:
    torch.manual_seed(0)
    teacher, student = _Recorder().train(), nn.Linear(4, 3)
    objective = Distillation(teacher)  # seed 001's alpha 0.2, tau 10
    assert (objective.alpha, objective.tau) == (0.2, 10.0)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    objective.loss(student, x, y).backward()
    assert teacher.calls == [(False, False)]
    assert teacher.training and teacher.lin.training  # mode restored
    assert teacher.lin.weight.grad is None and teacher.lin.bias.grad is None
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert OBJECTIVES.get("distill") is Distillation
    with pytest.raises(ValueError, match="alpha"):
        Distillation(teacher, alpha=1.5)


# ---------------------------------------------------------------- the distill method


@pytest.fixture(scope="module")
def teacher(digits16: DataBundle) -> nn.Module:
    """``student_cnn`` (width 1, ~60k parameters) trained 5 epochs on all of digits16 (~98% test)."""
    torch.manual_seed(0)
    model = build_model("student_cnn", input_shape=digits16.input_shape, num_classes=10)
    fit(model, digits16, TrainSpec(epochs=5), seed=0)
    model.zero_grad(set_to_none=True)  # so the test can tell that distillation adds no gradient
    return model.eval()


@pytest.fixture(scope="module")
def digits100() -> DataBundle:
    """digits16 with only 100 training images (same validation and test splits)."""
    return load_dataset("digits", params={"size": 16, "max_train": 100})


def test_kd_student_beats_the_same_student_trained_without_a_teacher(
    teacher: nn.Module, digits16: DataBundle, digits100: DataBundle
) -> None:
    """A LeNet-5 student on 100 training images, 30 epochs, seed 001's alpha 0.2 and tau 10, against
    the same LeNet-5 with the same initialisation, data order and epochs but cross-entropy only.

    Measured while writing this test with one thread (seeds 0-7): KD won on 7 of 8 seeds, test
    accuracy 0.858 vs 0.823 on average (seeds 0-2, used here: 0.816/0.861/0.827 vs 0.766/0.825/0.802,
    +3.7 points; with two threads, whose float reductions differ, 8 of 8 and +5 points). With 200
    images and student_cnn width 0.25 KD won 6-8 of 8 by only +1.4 to +1.9 points, and with 10-15
    epochs the students are undertrained and KD did not win reliably (means within a point either
    way), so the test uses this setting and asks for +2 points on the mean of 3 seeds. The KD student
    also agrees with the teacher more often, which is what distillation optimises directly.
    """
    state = snapshot(teacher)
    teacher_pred = predict(teacher, digits100.test).predicted
    kd_acc, ce_acc, kd_agree, ce_agree = [], [], [], []
    spec = {"epochs": 30, "batch_size": 16}
    for seed in range(3):
        kd = apply("distill", teacher, context(digits100, seed=seed), student="lenet5", train=spec)
        torch.manual_seed(seed)
        plain = build_model("lenet5", input_shape=digits100.input_shape, num_classes=10)
        fit(plain, digits100, TrainSpec(**spec), seed=seed)
        for model, acc, agree in ((kd, kd_acc, kd_agree), (plain, ce_acc, ce_agree)):
            pred = predict(model, digits100.test)
            acc.append(pred.accuracy)
            agree.append(float((pred.predicted == teacher_pred).float().mean()))
    assert sum(kd_acc) / 3 > sum(ce_acc) / 3 + 0.02, (kd_acc, ce_acc)
    assert sum(kd_agree) > sum(ce_agree), (kd_agree, ce_agree)
    # the teacher was only read: same weights and buffers, same mode, no gradient
    assert same_state(snapshot(teacher), state)
    assert not any(m.training for m in teacher.modules())
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_restoring_builds_the_untrained_student_and_the_saved_weights_load(
    teacher: nn.Module, digits100: DataBundle
) -> None:
    params = {"student": "lenet5", "train": {"epochs": 1}}
    trained = apply("distill", teacher, context(digits100), **params)
    assert type(trained).__name__ == "LeNet5"
    restored = apply("distill", teacher, context(digits100, restoring=True), **params)
    again = apply("distill", teacher, context(digits100, restoring=True), **params)
    saved, fresh = snapshot(trained), snapshot(restored)
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in saved.items()}
    assert not same_state(fresh, saved)  # not trained...
    assert same_state(fresh, snapshot(again))  # ...but initialised from the step's seed
    load_state_strict(restored, saved, source="test")
    x = digits100.test[0][0].unsqueeze(0)
    assert torch.equal(restored.eval()(x), trained.eval()(x))
    # a user factory given as package.module:function
    user = apply(
        "distill", teacher, context(digits100, restoring=True), student="compaudit.models.plain:lenet5"
    )
    assert same_state(snapshot(user), fresh)


def test_distill_unknown_student_is_caught_when_the_experiment_is_validated() -> None:
    from compaudit.errors import ConfigError
    from compaudit.run.validate import experiment_from_dict
    from tests.conftest import tiny_config

    cfg = tiny_config(
        variants=[{"name": "kd", "steps": [{"method": "distill", "params": {"student": "no_such_net"}}]}]
    )
    with pytest.raises(
        ConfigError, match=r"variants\[0\]\.steps\[0\]\.params\.student: unknown model 'no_such_net'"
    ) as info:
        experiment_from_dict(cfg)
    assert "\n" not in str(info.value)


def test_distill_bad_user_factory_is_a_one_line_model_error(
    teacher: nn.Module, digits100: DataBundle
) -> None:
    with pytest.raises(ModelError, match="no_such_module") as info:
        apply("distill", teacher, context(digits100, restoring=True), student="no_such_module:fn")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the ablate method


@pytest.fixture(scope="module")
def vgg(digits16: DataBundle) -> nn.Module:
    """VGG-6 (width 0.25: conv widths 8-8-16-16-32-32) trained 3 epochs on digits16."""
    torch.manual_seed(0)
    model = build_model("vgg6", input_shape=digits16.input_shape, num_classes=10, params={"width": 0.25})
    fit(model, digits16, TrainSpec(epochs=3), seed=0)
    return model.eval()


def test_ablate_cuts_conv_blocks_and_resizes_the_first_fc_layer(vgg: nn.Module, digits16: DataBundle) -> None:
    # 16x16 input, pools after conv 2/4/6: M=1 keeps conv 1-5 -> 32 x 4 x 4; M=2 keeps conv 1-4 -> 16 x 4 x 4
    for m, n_in in ((1, 32 * 4 * 4), (2, 16 * 4 * 4)):
        out = apply("ablate", vgg, context(digits16, restoring=True), layers=m)
        assert convs(out) == 6 - m
        assert out.classifier[0].in_features == n_in == out.flatten_dim()
        x = digits16.test[0][0].unsqueeze(0)
        assert out.features(x).flatten(1).shape[1] == n_in and out.eval()(x).shape == (1, 10)
    assert convs(vgg) == 6  # the baseline keeps its layers
    # the paper's 32x32 RGB inputs: M=1 removes conv 6 and the pool after it -> 128 x 8 x 8
    big = DataBundle(
        "fake", *(ArrayDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2)),) * 3, ("0", "1"), (3, 32, 32)
    )
    model = build_model("vgg6", input_shape=(3, 32, 32), num_classes=2)
    assert model.classifier[0].in_features == 128 * 4 * 4
    assert apply("ablate", model, context(big, restoring=True)).classifier[0].in_features == 128 * 8 * 8
    # LeNet-5 (no BatchNorm) at 16x16, padded to 20: conv 1 + pool -> 6 x 8 x 8
    lenet = build_model("lenet5", input_shape=(1, 16, 16), num_classes=10)
    cut = apply("ablate", lenet, context(digits16, restoring=True))
    assert convs(cut) == 1 and cut.classifier[0].in_features == 6 * 8 * 8


def test_ablate_retrains_only_the_fc_layers_and_replays_from_its_saved_state(
    vgg: nn.Module, digits16: DataBundle
) -> None:
    base = snapshot(vgg)
    out = apply("ablate", vgg, context(digits16), layers=1, train={"epochs": 2})
    state = snapshot(out)
    # every kept conv/BN tensor (weights, running statistics, batch counters) is bit-identical
    kept = [k for k in state if k.startswith("features.")]
    assert kept and all(torch.equal(state[k], base[k]) for k in kept)
    assert not any(k.startswith("features.5.") for k in state)
    assert not torch.equal(state["classifier.3.weight"], base["classifier.3.weight"])  # the FC layers trained
    assert predict(out, digits16.test).accuracy > 0.5  # recovers far above chance (0.1)
    assert all(p.requires_grad for p in out.parameters())  # later fine-tuning trains normally
    assert same_state(snapshot(vgg), base)  # the baseline is untouched
    replay = apply("ablate", vgg, context(digits16, restoring=True), layers=1, train={"epochs": 2})
    load_state_strict(replay, state, source="test")
    assert torch.equal(predict(replay, digits16.test).predicted, predict(out, digits16.test).predicted)
    # freeze: false retrains the kept conv layers too
    loose = snapshot(apply("ablate", vgg, context(digits16), layers=1, freeze=False, train={"epochs": 1}))
    assert not torch.equal(loose["features.0.0.weight"], base["features.0.0.weight"])


def test_ablate_rejects_too_many_layers_and_other_architectures(vgg: nn.Module, digits16: DataBundle) -> None:
    with pytest.raises(MethodError, match="layers=6 but VGG6 has 6 conv block"):
        apply("ablate", vgg, context(digits16, restoring=True), layers=6)
    for name, cls in (("resnet18", "ResNet"), ("student_cnn", "StudentCNN")):
        model = build_model(name, input_shape=(1, 16, 16), num_classes=10)
        with pytest.raises(MethodError, match=f"cannot ablate {cls}: .*`features`.*`classifier`"):
            apply("ablate", model, context(digits16))


# ---------------------------------------------------------------- end to end


def test_experiment_with_distill_and_ablate_runs_caches_and_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(
        model={"name": "vgg6", "params": {"width": 0.25}, "train": {"epochs": 2}},
        variants=[
            {
                "name": "kd",
                "steps": [
                    {
                        "method": "distill",
                        "params": {
                            "student": "student_cnn",
                            "student_params": {"width": 0.5},
                            # 3 epochs: after 2, student_cnn's BatchNorm statistics still lag (~30%)
                            "train": {"epochs": 3},
                        },
                    }
                ],
            },
            {
                "name": "abl1",
                "steps": [{"method": "ablate", "params": {"layers": 1, "train": {"epochs": 1}}}],
            },
        ],
    )
    out = tmp_path / "x"
    first = run_experiment(Experiment.from_dict(cfg), out)
    assert first.new == 6 and not first.failed
    rows = export_rows(out)
    by = {(r["variant"], r["metric"], r.get("split")): r["value"] for r in rows if not r["noisy"]}
    assert by[("kd", "params", None)] < by[("baseline", "params", None)]
    assert by[("kd", "accuracy", "test")] > 0.5 and by[("abl1", "accuracy", "test")] > 0.5

    second = run_experiment(Experiment.from_dict(cfg), out)
    assert second.new == 0 and second.trained == []

    # new probe parameters: both variants are rebuilt from their cached steps (restoring), never trained
    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing may train when the steps are cached")

    monkeypatch.setattr("compaudit.run.build.fit", no_training)
    cfg["probes"] = [{"name": "accuracy", "params": {"collapse_margin": 0.04}}]
    third = run_experiment(Experiment.from_dict(cfg), out)
    assert third.new == 3 and not third.failed
    again = {
        (r["variant"], r["split"]): r["value"]
        for r in export_rows(out)
        if r["metric"] == "accuracy"  # the export lists the latest plan's results: the third run's
    }
    for variant in ("kd", "abl1"):
        assert again[(variant, "test")] == by[(variant, "accuracy", "test")]
