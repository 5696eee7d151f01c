"""Quantization: real int8 kernels, simulated k-bit, QAT; restoring a cached step; end to end."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from compaudit import Experiment, Store, run_experiment
from compaudit.compress import METHODS, CompressContext, Method
from compaudit.compress.fakequant import QuantConv2d, QuantLinear, quantize_minmax, quantize_symmetric
from compaudit.compress.quantize import Int8Model, weight_error
from compaudit.config import TrainSpec
from compaudit.data import DataBundle
from compaudit.errors import MethodError
from compaudit.inference import predict
from compaudit.models import build_model, load_state_strict
from compaudit.train import fit
from tests.conftest import tiny_cnn, tiny_config

FAST = {"calibration_batches": 8}


def context(data: DataBundle, *, restoring: bool = False, **kw: Any) -> CompressContext:
    return CompressContext(data=data, seed=0, device=torch.device("cpu"), restoring=restoring, **kw)


def method(name: str, **params: Any) -> Method[Any]:
    return METHODS.get(name).from_spec(name, params)


def file_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def agreement(a: nn.Module, b: nn.Module, data: DataBundle) -> float:
    return float((predict(a, data.test).predicted == predict(b, data.test).predicted).double().mean())


def input_grad(model: nn.Module, data: DataBundle) -> torch.Tensor:
    x = data.test.x[:16].clone().requires_grad_(True)  # type: ignore[attr-defined]
    loss = nn.functional.cross_entropy(model(x), data.test.y[:16])  # type: ignore[attr-defined]
    loss.backward()
    assert x.grad is not None
    return x.grad


@pytest.fixture(scope="module")
def int8(
    trained_state: dict[str, torch.Tensor], digits16: DataBundle
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(float model, calibrated fake-quant model, deployed int8 model), built once."""
    model = tiny_cnn(0)
    model.load_state_dict(trained_state)
    model.eval()
    m = method("quantize_int8", **FAST)
    ctx = context(digits16)
    fake = m.apply(model, ctx).eval()
    deployment = m.deploy(fake, ctx)
    assert deployment is not None
    # capabilities, not a class to check: no gradient path, the FX graph is what computes
    assert not deployment.gradient_path and deployment.graph is deployment.model.quantized
    assert not m.simulated()
    return model, fake, deployment.model


# ---------------------------------------------------------------- int8: real kernels


def test_int8_deployed_agrees_with_float_and_runs_int8_kernels(
    int8: tuple[nn.Module, nn.Module, nn.Module], digits16: DataBundle
) -> None:
    model, fake, deployed = int8
    assert agreement(model, deployed, digits16) >= 0.95
    # the fake-quant surrogate rounds where the int8 kernels round: they (almost) always agree
    assert agreement(fake, deployed, digits16) >= 0.99
    assert isinstance(deployed, Int8Model)
    kinds = {type(m).__module__ for m in deployed.modules()}
    assert any(k.startswith("torch.ao.nn.intrinsic.quantized") for k in kinds)  # fused conv+relu int8
    dtypes = {v.dtype for v in deployed.state_dict().values() if isinstance(v, torch.Tensor)}
    assert torch.qint8 in dtypes
    out = deployed(digits16.test.x[:3])  # type: ignore[attr-defined]
    assert out.dtype == torch.float32 and out.shape == (3, 10)


@pytest.mark.parametrize("params", [{"per_channel": False}, {"reduce_range": False}])
def test_int8_options_deploy_and_agree(
    trained_cnn: nn.Module, digits16: DataBundle, params: dict[str, Any]
) -> None:
    m = method("quantize_int8", calibration_batches=4, **params)
    ctx = context(digits16)
    deployment = m.deploy(m.apply(trained_cnn, ctx).eval(), ctx)
    assert deployment is not None and agreement(trained_cnn, deployment.model, digits16) >= 0.95


def activation_ranges(fake: nn.Module) -> set[tuple[int, int]]:
    """(quant_min, quant_max) of every activation fake-quantizer of an int8 surrogate and its observer."""
    from torch.ao.quantization import FakeQuantizeBase

    ranges: set[tuple[int, int]] = set()
    for name, m in fake.named_modules():
        if isinstance(m, FakeQuantizeBase) and not name.endswith("weight_fake_quant"):
            obs = m.activation_post_process
            ranges |= {(int(m.quant_min), int(m.quant_max)), (int(obs.quant_min), int(obs.quant_max))}
    return ranges


def test_int8_is_w8a8_8_bit_activations_by_default(
    int8: tuple[nn.Module, nn.Module, nn.Module], trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    # seed 003's W8A8: quint8 activations over all 256 codes (PyTorch's x86 default, reduce_range,
    # would use 0..127: 7-bit activations)
    _, fake, deployed = int8
    assert activation_ranges(fake) == {(0, 255)}
    assert method("quantize_int8").describe()["params"]["reduce_range"] is False
    # the int8 model's input is quantized with the calibrated range over 255 steps
    with torch.no_grad():
        deployed(digits16.test.x[:2])  # type: ignore[attr-defined]
    graph = deployed.quantized  # type: ignore[union-attr]
    scale = float(graph.get_buffer(next(n for n, _ in graph.named_buffers() if n.endswith("scale_0"))))
    first = next(m for n, m in fake.named_modules() if n.startswith("activation_post_process"))
    lo, hi = float(first.activation_post_process.min_val), float(first.activation_post_process.max_val)
    assert scale == pytest.approx((max(hi, 0.0) - min(lo, 0.0)) / 255, rel=1e-5)
    # reduce_range: true is there for CPUs whose int8 kernels would overflow (no VNNI): 7-bit
    seven = method("quantize_int8", calibration_batches=2, reduce_range=True).apply(
        trained_cnn, context(digits16)
    )
    assert activation_ranges(seven) == {(0, 127)}


def test_int8_saved_file_is_under_030_of_float(digits16: DataBundle) -> None:
    # VGG-6 at width 0.25: weights dominate its file, as in any real model (a model of a few thousand
    # weights has a file dominated by per-tensor overhead, which int8 cannot shrink)
    torch.manual_seed(0)
    model = build_model("vgg6", input_shape=(1, 16, 16), num_classes=10, params={"width": 0.25}).eval()
    m = method("quantize_int8", calibration_batches=2)
    ctx = context(digits16)
    deployment = m.deploy(m.apply(model, ctx).eval(), ctx)
    assert deployment is not None
    assert file_bytes(deployment.model) <= 0.3 * file_bytes(model)
    assert m.weight_bits() == 8 and type(m).terminal


def test_int8_deployed_has_no_gradient_path(
    int8: tuple[nn.Module, nn.Module, nn.Module], digits16: DataBundle
) -> None:
    # int8 kernels are not differentiable: the deployed model detaches its input, so a gradient
    # attack on it finds no gradient at all (instead of a masked one); attack the surrogate instead
    _, _, deployed = int8
    x = digits16.test.x[:4].clone().requires_grad_(True)  # type: ignore[attr-defined]
    out = deployed(x)
    assert not out.requires_grad
    with pytest.raises(RuntimeError):
        out.sum().backward()


def test_int8_surrogate_gives_nonzero_finite_input_gradients(
    int8: tuple[nn.Module, nn.Module, nn.Module], digits16: DataBundle
) -> None:
    _, fake, _ = int8
    grad = input_grad(fake, digits16)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_int8_leaves_the_callers_model_unchanged(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    trained_cnn.train()
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    m = method("quantize_int8", calibration_batches=2)
    m.deploy(m.apply(trained_cnn, context(digits16)).eval(), context(digits16))
    after = trained_cnn.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(mod.training for mod in trained_cnn.modules())
    assert all(
        type(mod).__module__.startswith("torch.nn.") or mod is trained_cnn for mod in trained_cnn.modules()
    )


def test_int8_restoring_replay_loads_strictly_and_deploys_identically(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    m = method("quantize_int8", calibration_batches=2)
    fake = m.apply(trained_cnn, context(digits16))
    # a short fine-tuning (QAT) moves weights and BN statistics away from the calibrated state
    fit(fake, digits16, TrainSpec(epochs=1, batch_size=64, lr=0.01), seed=0)
    state = {k: v.clone() for k, v in fake.state_dict().items()}

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("restoring must not train or calibrate")

    replay_ctx = context(digits16, restoring=True, fit=no_training)
    replay = m.apply(trained_cnn, replay_ctx)
    load_state_strict(replay, state, source="test")
    first = m.deploy(fake.eval(), context(digits16))
    second = m.deploy(replay.eval(), replay_ctx)
    assert first is not None and second is not None
    assert torch.equal(
        predict(first.model, digits16.test).logits, predict(second.model, digits16.test).logits
    )


class _WithGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(torch.relu(self.norm(self.conv(x))), 1))
        return out


def test_int8_names_layers_without_int8_kernels(digits16: DataBundle) -> None:
    model = _WithGroupNorm().eval()
    with pytest.raises(MethodError, match=r"'norm' \(GroupNorm\)"):
        method("quantize_int8", calibration_batches=1).apply(model, context(digits16))
    ctx = context(digits16)
    m = method("quantize_int8", calibration_batches=1, on_unsupported="skip")
    deployment = m.deploy(m.apply(model, ctx).eval(), ctx)
    assert deployment is not None and len(ctx.skipped) == 1 and "'norm'" in ctx.skipped[0]
    assert agreement(model, deployment.model, digits16) > 0.9


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        out: torch.Tensor = self.fc(torch.flatten(x, 1))
        return out


def test_int8_untraceable_model_is_a_clear_error(digits16: DataBundle) -> None:
    with pytest.raises(MethodError, match=r"cannot be traced by torch\.fx"):
        method("quantize_int8").apply(_Untraceable(), context(digits16))


# ---------------------------------------------------------------- k-bit: simulated


def kbit(model: nn.Module, data: DataBundle, **params: Any) -> nn.Module:
    return method("quantize_kbit", **{**FAST, **params}).apply(model, context(data)).eval()


def test_kbit_16_bits_is_the_float_model(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    q = kbit(trained_cnn, digits16, weight_bits=16, act_bits=16)
    assert agreement(trained_cnn, q, digits16) >= 0.99
    assert {n for n, _ in trained_cnn.named_parameters()} == {n for n, _ in q.named_parameters()}


def test_kbit_weight_error_grows_as_bits_fall(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    errors = [weight_error(kbit(trained_cnn, digits16, weight_bits=b)) for b in (16, 8, 4, 2)]
    assert errors == sorted(errors) and len(set(errors)) == 4
    assert errors[0] < 1e-5 < errors[-1]
    minmax = [weight_error(kbit(trained_cnn, digits16, weight_bits=b, scheme="minmax")) for b in (8, 2)]
    assert minmax[0] < minmax[1]


@pytest.mark.parametrize("per_channel", [False, True])
def test_kbit_1_bit_weights_take_two_values_per_scale(
    trained_cnn: nn.Module, digits16: DataBundle, per_channel: bool
) -> None:
    q = kbit(trained_cnn, digits16, weight_bits=1, per_channel=per_channel)
    layers = [m for m in q.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    assert len(layers) == 5
    for layer in layers:
        with torch.no_grad():
            w = layer.weight_quantizer(layer.weight)
        groups = w.flatten(1) if per_channel else w.reshape(1, -1)
        latent = layer.weight.detach().flatten(1) if per_channel else layer.weight.detach().reshape(1, -1)
        for row, orig in zip(groups, latent, strict=True):
            alpha = orig.abs().mean()
            assert set(row.unique().tolist()) == {float(-alpha), float(alpha)}  # binarized: sign * mean|w|
            assert torch.equal(row > 0, orig >= 0)


def test_minmax_is_algorithm_1_of_seed_000() -> None:
    w = torch.tensor([-1.0, -0.5, 0.1, 0.3, 1.0])
    # by hand: sigma = (wMax - wMin) / (qMax - qMin) = 2 / 255, mu = (qMin - wMin) / sigma = 127.5
    sigma, mu = 2 / 255, 127.5
    # q = round(w / sigma + mu): 0, 63.75, 140.25, 165.75, 255 rounded
    q = [0, 64, 140, 166, 255]
    expected = torch.tensor([(qi - mu) * sigma for qi in q])  # dequantized: (q - mu) * sigma
    assert torch.allclose(quantize_minmax(w, 8), expected, atol=1e-6)
    assert torch.allclose(quantize_minmax(w, 8)[[0, -1]], torch.tensor([-1.0, 1.0]))  # wMin, wMax on the grid
    # 0 lies half-way between two levels (mu is not an integer): a pruned zero becomes +-sigma/2
    zero = quantize_minmax(torch.tensor([-1.0, 0.0, 1.0]), 8)[1]
    assert abs(abs(float(zero)) - sigma / 2) < 1e-6


def test_symmetric_is_the_formula_of_seed_002() -> None:
    # seed 002, §3.2: s = (beta - alpha) / (2^b - 1) with -alpha = beta = max(|min r|, |max r|),
    # q = round(r / s) (zero point 0), r^ = s q; codes are b-bit integers (-2^(b-1)..2^(b-1) - 1)
    w = torch.tensor([-0.9, -0.5, 0.0, 0.1, 0.3, 1.0])
    s = 2 * 1.0 / 255  # = max|w| / 127.5, not max|w| / 127
    # round(w / s): -114.75, -63.75, 0, 12.75, 38.25; max|w| is 127.5 steps from 0, past the largest
    # 8-bit code: clipped to 127 (as PyTorch's qint8 observers do)
    q = [-115, -64, 0, 13, 38, 127]
    assert torch.allclose(quantize_symmetric(w, 8), torch.tensor(q) * s, atol=1e-6)
    # per output channel: one such scale per row
    rows = torch.tensor([[0.2, -0.1], [4.0, 1.0]])
    scales = torch.tensor([[0.4 / 15], [8.0 / 15]])  # 4 bits: 2 max|row| / (2^4 - 1)
    expected = torch.clamp(torch.round(rows / scales), -8, 7) * scales
    assert torch.allclose(quantize_symmetric(rows, 4, per_channel=True), expected, atol=1e-6)
    # the same scale as the real int8 kernels' per-tensor symmetric qint8 weights
    from torch.ao.quantization import MinMaxObserver

    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    obs(w)
    assert float(obs.calculate_qparams()[0]) == pytest.approx(s)
    # the formula changed with the same parameters: the step's description (its key) says so
    for name in ("quantize_kbit", "qat"):
        assert method(name).describe()["version"] == 2
    assert "version" not in method("quantize_int8").describe()  # unchanged methods keep their keys


def test_symmetric_weights_keep_pruned_zeros(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    with torch.no_grad():
        trained_cnn.fc.weight[:, ::2] = 0.0  # type: ignore[index]
    q = kbit(trained_cnn, digits16, weight_bits=4)
    fc = q.fc
    assert isinstance(fc, QuantLinear)
    with torch.no_grad():
        assert (fc.weight_quantizer(fc.weight)[:, ::2] == 0).all()


@pytest.mark.parametrize(
    "params", [{"weight_bits": 2, "act_bits": 4}, {"weight_bits": 1}, {"scheme": "minmax"}]
)
def test_kbit_gradients_pass_straight_through(
    trained_cnn: nn.Module, digits16: DataBundle, params: dict[str, Any]
) -> None:
    q = kbit(trained_cnn, digits16, **params)
    grad = input_grad(q, digits16)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    for layer in q.modules():
        if isinstance(layer, QuantConv2d | QuantLinear):
            assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_kbit_presets_and_checks() -> None:
    params = METHODS.get("quantize_kbit").Params
    p = params.model_validate({"preset": "w4a8"})
    assert (p.weight_bits, p.act_bits) == (4, 8)  # type: ignore[attr-defined]
    assert method("quantize_kbit", preset="w4a8").weight_bits() == 4
    for bad in (
        {"preset": "w4a8", "weight_bits": 2},
        {"scheme": "minmax", "act_bits": 8},
        {"scheme": "minmax", "per_channel": True},
        {"weight_bits": 0},
        {"weight_bits": 17},
        {"preset": "w3a3"},
    ):
        with pytest.raises(ValidationError):
            params.model_validate(bad)
    # simulated quantization is a capability the method states (the variant carries it)
    assert method("quantize_kbit").simulated() and method("qat", epochs=0).simulated()
    assert not method("quantize_int8").simulated()
    assert not method("prune_unstructured", sparsity=0.5).simulated()


def test_kbit_restoring_replay_loads_strictly_and_predicts_identically(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    m = method("quantize_kbit", weight_bits=4, act_bits=8, per_channel=True, **FAST)
    q = m.apply(trained_cnn, context(digits16)).eval()
    replay = m.apply(trained_cnn, context(digits16, restoring=True)).eval()
    assert replay.state_dict().keys() == q.state_dict().keys()
    assert not torch.equal(predict(q, digits16.test).logits, predict(replay, digits16.test).logits)
    load_state_strict(replay, q.state_dict(), source="test")  # the activation ranges are buffers
    assert torch.equal(predict(q, digits16.test).logits, predict(replay, digits16.test).logits)
    assert m.deploy(q, context(digits16)) is None


def test_kbit_leaves_the_callers_model_unchanged(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    q = kbit(trained_cnn, digits16, weight_bits=2, act_bits=8)
    input_grad(q, digits16)
    assert all(torch.equal(before[k], v) for k, v in trained_cnn.state_dict().items())
    assert not any(isinstance(m, QuantConv2d | QuantLinear) for m in trained_cnn.modules())


class _WithConv1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.seq = nn.Conv1d(2, 2, 1)
        self.fc = nn.Linear(2 * 256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.seq(self.conv(x).flatten(2)), 1))
        return out


def test_kbit_names_layers_it_cannot_quantize(digits16: DataBundle) -> None:
    with pytest.raises(MethodError, match=r"'seq' \(Conv1d\)"):
        kbit(_WithConv1d(), digits16)
    ctx = context(digits16)
    q = method("quantize_kbit", on_unsupported="skip").apply(_WithConv1d(), ctx)
    assert len(ctx.skipped) == 1 and type(q.seq) is nn.Conv1d and isinstance(q.fc, QuantLinear)


@pytest.mark.parametrize("first", ["quantize_kbit", "quantize_int8"])
def test_quantizing_twice_is_a_clear_error(trained_cnn: nn.Module, digits16: DataBundle, first: str) -> None:
    once = method(first, calibration_batches=1).apply(trained_cnn, context(digits16))
    with pytest.raises(MethodError, match="already quantized"):
        method("quantize_kbit").apply(once, context(digits16))


# ---------------------------------------------------------------- QAT


def test_qat_recovers_accuracy_over_ptq_at_4_bits(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    bits = {"weight_bits": 4, "act_bits": 8, **FAST}
    ptq = kbit(trained_cnn, digits16, **bits)
    m = method("qat", epochs=3, **bits)
    qat = m.apply(trained_cnn, context(digits16)).eval()
    ptq_acc = predict(ptq, digits16.test).accuracy
    qat_acc = predict(qat, digits16.test).accuracy
    # 4-bit per-tensor weights cost this small model several points; three epochs of QAT win them back
    assert qat_acc > ptq_acc + 0.03, (ptq_acc, qat_acc)
    assert m.weight_bits() == 4 and not type(m).terminal


def test_qat_restoring_does_not_train_and_reproduces_the_keys(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    calls: list[str] = []

    def fake_fit(model: nn.Module, spec: TrainSpec, **kw: Any) -> Any:
        calls.append(f"{spec.epochs}:{spec.lr}:{spec.batch_size}")
        return None

    m = method("qat", weight_bits=2, epochs=2, lr=0.02, train={"batch_size": 16}, **FAST)
    trained = m.apply(trained_cnn, context(digits16, fit=fake_fit))
    assert calls == ["2:0.02:16"]
    replay = m.apply(trained_cnn, context(digits16, restoring=True, fit=fake_fit))
    assert calls == ["2:0.02:16"]
    load_state_strict(replay, trained.state_dict(), source="test")


def test_qat_params_take_epochs_and_lr_once() -> None:
    params = METHODS.get("qat").Params
    with pytest.raises(ValidationError, match="epochs"):
        params.model_validate({"train": {"epochs": 5}})
    p = params.model_validate({"train": {"optimizer": "adam"}})
    assert (p.weight_bits, p.act_bits, p.epochs, p.lr) == (8, 8, 3, 0.01)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- end to end


def test_experiment_with_every_quantization_runs_then_reruns_from_cache(tmp_path: Path) -> None:
    variants = [
        {"name": "int8", "steps": [{"method": "quantize_int8", "params": {"calibration_batches": 4}}]},
        {
            "name": "pruned-int8",
            "steps": [
                {"method": "prune_unstructured", "params": {"sparsity": 0.5}},
                {"method": "quantize_int8", "params": {"calibration_batches": 4}},
            ],
        },
        {"name": "w4a8", "steps": [{"method": "quantize_kbit", "params": {"preset": "w4a8", **FAST}}]},
        {"name": "qat2", "steps": [{"method": "qat", "params": {"weight_bits": 2, "epochs": 1, **FAST}}]},
    ]
    cfg = tiny_config(variants=variants)
    out = tmp_path / "x"
    first = run_experiment(Experiment.from_dict(cfg), out)
    assert not first.failed and first.new == 10 and first.trained == ["baseline", "qat2"]
    second = run_experiment(Experiment.from_dict(cfg), out)
    assert second.new == 0 and second.cached == 10
    # a new probe setting rebuilds every variant from its cached steps (restoring: no calibration,
    # no training) and must measure the very same models
    cfg["probes"] = [{"name": "accuracy", "params": {"splits": ["test"]}}]
    third = run_experiment(Experiment.from_dict(cfg), out)
    assert not third.failed and third.new == 5 and third.trained == []
    with Store(out) as store:
        rows = store.metric_rows()
    by: dict[str, set[float]] = {}
    for r in rows:
        if r["metric"] == "accuracy" and r.get("split") == "test":
            by.setdefault(r["variant"], set()).add(r["value"])
    assert set(by) == {"baseline", "int8", "pruned-int8", "w4a8", "qat2"}
    assert all(len(values) == 1 for values in by.values()), by  # identical before and after restoring
    assert all(not math.isnan(next(iter(v))) for v in by.values())
    size = {r["variant"]: r["value"] for r in rows if r["metric"] == "file_bytes"}
    macs = {r["variant"]: r["value"] for r in rows if r["metric"] == "macs"}
    bits = {r["variant"]: r["value"] for r in rows if r["metric"] == "bits"}
    assert len(set(macs.values())) == 1  # counted on variant.model: fake-quant layers are Conv2d/Linear
    assert bits == {"baseline": 32, "int8": 8, "pruned-int8": 8, "w4a8": 4, "qat2": 2}
    assert size["int8"] < 0.6 * size["baseline"]  # real int8 weights (small model: per-tensor overhead)
    assert size["w4a8"] >= size["baseline"]  # simulated: the file keeps float32 weights


# ---------------------------------------------------------------- fake-quant weights computed once


def forward_and_input_grad(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xa = x.clone().requires_grad_(True)
    out = model(xa)
    (grad,) = torch.autograd.grad(out.sum(), xa)
    return out.detach(), grad


def test_kbit_weights_are_quantized_once_while_fixed_and_again_when_they_change(
    trained_cnn: nn.Module, digits16: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compaudit.compress.fakequant import WeightQuantizer
    from compaudit.inference import frozen

    q = kbit(trained_cnn, digits16, weight_bits=4, act_bits=8)
    layers = [m for m in q.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    x = digits16.test.x[:8]  # type: ignore[attr-defined]
    with torch.no_grad():  # what every forward pass computed before: the weights quantized now
        fresh = [layer.weight_quantizer.quantize(layer.weight) for layer in layers]
        for layer in layers:  # same values, new version: what earlier passes kept is stale
            layer.weight.mul_(1.0)
    calls: list[int] = []
    quantize = WeightQuantizer.quantize

    def counted(self: WeightQuantizer, w: torch.Tensor) -> torch.Tensor:
        calls.append(id(self))
        return quantize(self, w)

    monkeypatch.setattr(WeightQuantizer, "quantize", counted)
    with frozen(q):
        first = [forward_and_input_grad(q, x) for _ in range(3)]
        with torch.inference_mode():  # made under inference mode, then used with gradients
            q(x)
        later = forward_and_input_grad(q, x)
    assert len(calls) == len(layers)  # once per layer over five passes
    for layer, w in zip(layers, fresh, strict=True):
        assert torch.equal(layer.weight_quantizer(layer.weight), w)
    for out, grad in [*first[1:], later]:
        assert torch.equal(out, first[0][0]) and torch.equal(grad, first[0][1])
    # an in-place change to the weights (an optimiser step) is seen: quantized again
    calls.clear()
    with torch.no_grad():
        layers[0].weight.mul_(0.5)
        q(x)
    assert calls == [id(layers[0].weight_quantizer)]
    # with a gradient to the weights (QAT), every call computes
    calls.clear()
    q.train()
    q(x).sum().backward()
    q(x).sum().backward()
    assert len(calls) == 2 * len(layers)
    assert all(layer.weight.grad is not None for layer in layers)


def test_the_int8_surrogates_weight_fake_quants_run_once_under_frozen_and_are_put_back(
    int8: tuple[nn.Module, nn.Module, nn.Module], digits16: DataBundle
) -> None:
    from torch.ao.quantization import FakeQuantizeBase

    from compaudit.inference import eval_mode, frozen

    _, fake, _ = int8
    x = digits16.test.x[:8]  # type: ignore[attr-defined]
    owners = {
        n: m for n, m in fake.named_modules() if isinstance(getattr(m, "weight_fake_quant", None), nn.Module)
    }
    assert owners
    originals = {n: m.weight_fake_quant for n, m in owners.items()}
    calls: list[str] = []
    handles = [fq.register_forward_hook(lambda *_, n=n: calls.append(n)) for n, fq in originals.items()]
    try:
        with eval_mode(fake):  # every pass quantizes every weight, as before
            params = [(p, p.requires_grad) for p in fake.parameters()]
            for p, _ in params:
                p.requires_grad_(False)
            expected = [forward_and_input_grad(fake, x) for _ in range(2)]
            for p, flag in params:
                p.requires_grad_(flag)
        assert len(calls) == 2 * len(owners)
        calls.clear()
        with frozen(fake):
            got = [forward_and_input_grad(fake, x) for _ in range(3)]
        assert sorted(calls) == sorted(owners)  # once each over three passes
    finally:
        for h in handles:
            h.remove()
    for out, grad in got:
        assert torch.equal(out, expected[0][0]) and torch.equal(grad, expected[0][1])
    assert {n: m.weight_fake_quant for n, m in owners.items()} == originals
    assert all(isinstance(fq, FakeQuantizeBase) for fq in originals.values())


def reference_affine(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Activation fake-quant as autograd composes it (the code before the fused node): the values and
    the gradient the fused node must give bit for bit."""
    qmax = 2**bits - 1
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=torch.finfo(x.dtype).tiny)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    clipped = torch.minimum(torch.maximum(x, lo), hi)
    with torch.no_grad():
        q = torch.clamp(torch.round(clipped / scale) + zero_point, 0, qmax)
        deq = (q - zero_point) * scale
    return deq.detach() + (clipped - clipped.detach())


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize(("lo", "hi"), [(-0.7, 1.3), (0.0, 2.5), (0.0, 0.0), (-1.0, 0.0)])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_activation_fake_quant_equals_the_autograd_composition_bit_for_bit(
    lo: float, hi: float, bits: int
) -> None:
    from compaudit.compress.fakequant import quantize_affine

    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 3, 8, 8, generator=g) * 1.5
    flat = x.view(-1)
    flat[::7] = lo  # ties: x == lo is common (ReLU outputs are exactly 0 = lo)
    flat[3::11] = hi
    flat[5::13] = 0.0
    up = torch.randn(x.shape, generator=g)
    up.view(-1)[::5] = 1e-39  # subnormal gradients: halving them rounds
    up.view(-1)[1::9] = -0.0
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    results = []
    for fn in (quantize_affine, reference_affine):
        xa = x.clone().requires_grad_(True)
        out = fn(xa, lo_t, hi_t, bits)
        (grad,) = torch.autograd.grad(out, xa, up)
        with torch.no_grad():
            plain = fn(x, lo_t, hi_t, bits)
        results.append((out.detach(), grad, plain))
    (out, grad, plain), (ref_out, ref_grad, ref_plain) = results
    assert torch.equal(bits_of(out), bits_of(ref_out))
    assert torch.equal(bits_of(plain), bits_of(ref_plain))
    assert torch.equal(bits_of(grad), bits_of(ref_grad))
    # the ties are there, and halved (twice where both bounds meet)
    tie = x == lo
    halved = up * 0.5 if lo < hi else up * 0.5 * 0.5
    assert tie.sum() > 10 and torch.equal(bits_of(grad[tie]), bits_of(halved[tie]))


def test_a_kbit_model_computes_what_the_autograd_composition_computed(
    trained_cnn: nn.Module, digits16: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compaudit.compress import fakequant
    from compaudit.inference import frozen

    q = kbit(trained_cnn, digits16, weight_bits=4, act_bits=8)
    x = digits16.test.x[:16]  # type: ignore[attr-defined]
    with frozen(q):
        fused = forward_and_input_grad(q, x)
        monkeypatch.setattr(fakequant, "quantize_affine", reference_affine)
        composed = forward_and_input_grad(q, x)
    assert torch.equal(fused[0], composed[0]) and torch.equal(fused[1], composed[1])
    assert fused[1].abs().sum() > 0
