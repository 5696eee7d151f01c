"""Accuracy and efficiency probes against independent computations; the probe contract."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compaudit.compress import METHODS, CompressContext, make_permanent
from compaudit.data import DataBundle, load_dataset
from compaudit.probes import PROBES, Probe, ProbeContext, ProbeResult
from compaudit.variant import Variant

FAST_EFFICIENCY = {"batch_sizes": [1, 4], "repeats": 2, "warmup": 1}


def probe(name: str, **params: object) -> Probe:
    return PROBES.get(name).from_spec(name, dict(params))


def metric(res: ProbeResult, name: str, **params: object) -> float:
    found = [
        m.value
        for m in res.metrics
        if m.name == name and all(m.params.get(k) == v for k, v in params.items())
    ]
    assert len(found) == 1, (name, params, res.metrics)
    return found[0]


def setup(model: nn.Module, data: DataBundle) -> tuple[Variant, ProbeContext]:
    base = Variant("baseline", "base-key", model)
    return base, ProbeContext(data=data, baseline=base, device=torch.device("cpu"), seed=0)


def child(name: str, model: nn.Module) -> Variant:
    return Variant(name, f"{name}-key", model, lineage=[{"method": "test", "params": {}}], parent="base-key")


def pruned(model: nn.Module, data: DataBundle, sparsity: float) -> nn.Module:
    method = METHODS.get("prune_unstructured").from_spec("prune_unstructured", {"sparsity": sparsity})
    ctx = CompressContext(data=data, seed=0, device=torch.device("cpu"))
    return make_permanent(method.apply(model, ctx))


def logits_of(model: nn.Module, data: DataBundle, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = data.split(split)
    model.eval()
    with torch.no_grad():
        return model(ds.x), ds.y  # type: ignore[attr-defined]


# ---------------------------------------------------------------- accuracy


def test_accuracy_metrics_match_an_independent_computation(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    base, ctx = setup(trained_cnn, digits16)
    variant = child("pruned", pruned(trained_cnn, digits16, 0.5))
    res = probe("accuracy").run(variant, ctx)
    for split in ("test", "val"):
        logits, y = logits_of(variant.model, digits16, split)
        base_logits, _ = logits_of(base.model, digits16, split)
        acc = (logits.argmax(1) == y).double().mean().item()
        base_acc = (base_logits.argmax(1) == y).double().mean().item()
        assert metric(res, "accuracy", split=split) == pytest.approx(acc, abs=1e-9)
        assert metric(res, "nll", split=split) == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).double().mean().item()
        assert metric(res, "top5_accuracy", split=split) == pytest.approx(top5, abs=1e-9)
        conf = logits.softmax(1).max(1).values.mean().item()
        assert metric(res, "mean_confidence", split=split) == pytest.approx(conf, rel=1e-5)
        assert metric(res, "accuracy_delta", split=split) == pytest.approx(acc - base_acc, abs=1e-9)
        agree = (logits.argmax(1) == base_logits.argmax(1)).double().mean().item()
        assert metric(res, "agreement", split=split) == pytest.approx(agree, abs=1e-9)
        assert metric(res, "nonfinite_output_share", split=split) == 0.0
    assert 0.0 < metric(res, "agreement", split="test") < 1.0  # 50% pruning changes some predictions
    assert metric(res, "top5_accuracy", split="test") >= metric(res, "accuracy", split="test")


def test_a_copy_of_the_baseline_agrees_fully(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    _, ctx = setup(trained_cnn, digits16)
    res = probe("accuracy", splits=["test"]).run(child("copy", copy.deepcopy(trained_cnn)), ctx)
    assert metric(res, "agreement", split="test") == 1.0
    assert metric(res, "accuracy_delta", split="test") == 0.0
    assert metric(res, "accuracy", split="test") > 0.5
    assert res.warnings == []
    assert not any(m.params.get("split") == "val" for m in res.metrics)


def test_the_baseline_has_no_comparison_metrics(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base, ctx = setup(trained_cnn, digits16)
    res = probe("accuracy").run(base, ctx)
    names = {m.name for m in res.metrics}
    assert "accuracy" in names and "agreement" not in names and "accuracy_delta" not in names


def test_a_collapsed_model_is_flagged(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    _, ctx = setup(trained_cnn, digits16)
    dead = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        dead.fc.weight.zero_()
        dead.fc.bias.zero_()
    res = probe("accuracy", splits=["test"]).run(child("dead", dead), ctx)
    assert metric(res, "accuracy", split="test") == pytest.approx(0.1, abs=0.02)
    assert any(
        "collapsed to chance" in w.text and w.text.startswith("dead:") and w.invalidates for w in res.warnings
    )
    healthy = probe("accuracy", splits=["test"]).run(child("alive", copy.deepcopy(trained_cnn)), ctx)
    assert not any("collapsed" in w.text for w in healthy.warnings)


class NaNForEvenPredictions(nn.Module):
    """Passes logits through, replacing with NaN every row whose predicted class is even."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where((x.argmax(1) % 2 == 0)[:, None], float("nan"), x)


def test_nan_outputs_are_flagged(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    _, ctx = setup(trained_cnn, digits16)
    broken = nn.Sequential(copy.deepcopy(trained_cnn), NaNForEvenPredictions())
    res = probe("accuracy", splits=["test"]).run(child("broken", broken), ctx)
    logits, _ = logits_of(trained_cnn, digits16, "test")
    expected = (logits.argmax(1) % 2 == 0).double().mean().item()
    assert 0.0 < expected < 1.0
    assert metric(res, "nonfinite_output_share", split="test") == pytest.approx(expected)
    assert any("NaN or infinity" in w.text and w.invalidates for w in res.warnings)
    assert math.isnan(metric(res, "nll", split="test"))  # stored as NaN, shown as "-", the warning names why


# ---------------------------------------------------------------- efficiency


def test_param_counts_and_file_size(trained_cnn: nn.Module, digits16: DataBundle, tmp_path: Path) -> None:
    base, ctx = setup(trained_cnn, digits16)
    eff = probe("efficiency", **FAST_EFFICIENCY)
    res = eff.run(base, ctx)
    total = sum(p.numel() for p in trained_cnn.parameters())
    assert metric(res, "params") == total
    assert metric(res, "nonzero_params") == total
    torch.save(trained_cnn.state_dict(), tmp_path / "m.pt")
    size = (tmp_path / "m.pt").stat().st_size
    assert abs(metric(res, "file_bytes") - size) <= 0.1 * size

    sparse = pruned(trained_cnn, digits16, 0.6)
    prunable = sum(m.weight.numel() for m in sparse.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    res2 = eff.run(child("sparse", sparse), ctx)
    assert metric(res2, "params") == total
    assert metric(res2, "nonzero_params") == total - round(0.6 * prunable)
    # sparsity is measured over the conv and linear weights (biases and BatchNorm are never pruned)
    assert metric(res2, "sparsity") == pytest.approx(round(0.6 * prunable) / prunable)
    assert metric(res2, "sparse_file_bytes") < 0.6 * metric(res2, "file_bytes")
    assert metric(res2, "bits") == 32.0


def test_sparsity_counts_the_weights_a_quantized_variant_computes_with(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    _, ctx = setup(trained_cnn, digits16)
    eff = probe("efficiency", **FAST_EFFICIENCY)
    compress = CompressContext(data=digits16, seed=0, device=torch.device("cpu"))
    total = sum(p.numel() for p in trained_cnn.parameters())
    weights = sum(m.weight.numel() for m in trained_cnn.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    half = pruned(trained_cnn, digits16, 0.5)  # float: 50% zero weights (tested above)

    def quantized(params: dict[str, object]) -> Variant:
        m = METHODS.get("quantize_kbit").from_spec("quantize_kbit", {"calibration_batches": 2, **params})
        v = child(str(params), m.apply(copy.deepcopy(half), compress).eval())
        v.bits = 8.0
        return v

    # seed 000's min-max quantization (Algorithm 1): 0 is not on its grid (mu is not an integer), so a
    # pruned weight computes as +-sigma/2 or so, not 0: the model it runs has (almost) no zero weight
    minmax = eff.run(quantized({"scheme": "minmax", "weight_bits": 8}), ctx)
    assert metric(minmax, "sparsity") < 0.01
    latent_nonzero = total - round(0.5 * weights)
    assert metric(minmax, "nonzero_params") > latent_nonzero + 0.49 * weights
    # symmetric (seed 002): 0 is a code, pruned weights stay 0 (and tiny ones may round to it)
    symmetric = eff.run(quantized({"weight_bits": 8}), ctx)
    assert 0.5 <= metric(symmetric, "sparsity") < 0.52
    assert metric(symmetric, "nonzero_params") == total - round(metric(symmetric, "sparsity") * weights)
    # a deployed int8 model: its int8 weights equal to their zero point are its zeros
    m = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 2})
    fake = m.apply(copy.deepcopy(half), compress).eval()
    v = child("int8", fake)
    v.deploy(m.deploy(fake, compress))
    v.surrogate, v.bits = fake, 8.0
    int8 = eff.run(v, ctx)
    assert 0.5 <= metric(int8, "sparsity") < 0.52


def test_macs_of_a_hand_built_model_match_the_hand_count() -> None:
    data = load_dataset("digits", params={"size": 8, "channels": 3, "max_train": 64, "max_test": 16})
    assert data.input_shape == (3, 8, 8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    base, ctx = setup(model, data)
    res = probe("efficiency", **FAST_EFFICIENCY).run(base, ctx)
    conv = 8 * 3 * 9 * 64  # out channels x (in channels x kernel) x output positions
    linear = 8 * 8 * 8 * 10
    assert metric(res, "macs") == conv + linear


def test_latency_is_positive_per_batch_size(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base, ctx = setup(trained_cnn, digits16)
    res = probe("efficiency", batch_sizes=[1, 3, 16], repeats=2, warmup=0, threads=1).run(base, ctx)
    lat = [m for m in res.metrics if m.name == "latency"]
    assert sorted(m.params["batch_size"] for m in lat) == [1, 3, 16]
    assert all(m.value > 0 and m.noisy and m.unit == "ms" and m.params["threads"] == 1 for m in lat)
    assert torch.get_num_threads() == 2  # the probe restored the thread count


# ---------------------------------------------------------------- the probe contract


class FlagRecorder:
    """Forward hook that records whether each forward ran in training mode."""

    def __init__(self) -> None:
        self.calls = 0
        self.training: list[bool] = []

    def __call__(self, module: nn.Module, args: object, out: object) -> None:
        self.calls += 1
        self.training.append(module.training)


@pytest.mark.parametrize("name", ["accuracy", "efficiency"])
def test_run_restores_flags_and_leaves_weights_bit_identical(
    trained_cnn: nn.Module, digits16: DataBundle, name: str
) -> None:
    base, ctx = setup(trained_cnn, digits16)
    variant = child("v", pruned(trained_cnn, digits16, 0.5))
    for model in (base.model, variant.model):
        model.train()
        model.features[1].eval()
    flags = [[m.training for m in v.model.modules()] for v in (base, variant)]
    states = [{k: t.clone() for k, t in v.model.state_dict().items()} for v in (base, variant)]
    seen = FlagRecorder()
    handle = variant.model.features[1].register_forward_hook(seen)
    try:
        params = FAST_EFFICIENCY if name == "efficiency" else {}
        probe(name, **params).run(variant, ctx)
    finally:
        handle.remove()
    assert seen.calls > 0 and not any(seen.training)  # it measured in eval mode
    assert [[m.training for m in v.model.modules()] for v in (base, variant)] == flags
    for v, state in zip((base, variant), states, strict=True):
        after = v.model.state_dict()
        assert after.keys() == state.keys()
        assert all(torch.equal(after[k], state[k]) for k in state)  # BN running stats included


def test_context_caches_predictions_per_variant(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base, ctx = setup(trained_cnn, digits16)
    variant = child("v", copy.deepcopy(trained_cnn))
    counts = {"base": FlagRecorder(), "v": FlagRecorder()}
    trained_cnn.register_forward_hook(counts["base"])
    variant.model.register_forward_hook(counts["v"])
    batches = math.ceil(len(digits16.test) / 256)  # type: ignore[arg-type]

    first = ctx.predictions(variant, "test")
    assert ctx.predictions(variant, "test") is first
    assert counts["v"].calls == batches
    ctx.predictions(base, "test")
    ctx.predictions(base, "test")
    assert counts["base"].calls == batches
    ctx.predictions(base, "val")
    ctx.predictions(variant, "val")
    assert counts["v"].calls == batches + math.ceil(len(digits16.val) / 256)  # type: ignore[arg-type]

    # two probes on one variant share the cached predictions of the baseline and of the variant
    before = (counts["base"].calls, counts["v"].calls)
    probe("accuracy").run(variant, ctx)
    assert (counts["base"].calls, counts["v"].calls) == before

    ctx.forget(variant)
    ctx.forget(base)  # the baseline's predictions are kept
    again = ctx.predictions(variant, "test")
    assert again is not first and torch.equal(again.logits, first.logits)
    assert counts["v"].calls == before[1] + batches
    ctx.predictions(base, "test")
    ctx.predictions(base, "val")
    assert counts["base"].calls == before[0]


def test_count_macs_handles_stride_groups_and_transposed_convs() -> None:
    from compaudit.probes.efficiency import count_macs

    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),  # depthwise: 4x4x4 outputs x 9 terms
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 6, 1),  # pointwise: 6x4x4 outputs x 4 terms
        nn.ConvTranspose2d(6, 2, 2, stride=2),  # 6x4x4 inputs x (2 x 2x2) products
        nn.Flatten(),
        nn.Linear(2 * 8 * 8, 5, bias=False),
    )
    model.train()
    expected = 4 * 4 * 4 * 9 + 6 * 4 * 4 * 4 + 6 * 4 * 4 * 2 * 4 + 128 * 5
    assert count_macs(model, torch.rand(1, 4, 8, 8)) == expected
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
