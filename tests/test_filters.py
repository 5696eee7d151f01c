"""Structured L1 filter pruning: a smaller dense model, the right filters, the baseline untouched.

Kept-filter counts: Torch-Pruning's own MetaPruner keeps ``int(out * (1 - ratio))`` filters (a
floor, with float error: at ratio 0.9 a layer of 10 keeps ``int(0.999...) = 0``, which it then
refuses, so the layer is not pruned at all). ``prune_filters`` keeps ``round(out * (1 - ratio))``
(halves up) and at least one: within half a filter of the exact share, every layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn

import compaudit
from compaudit.cli import export_rows
from compaudit.compress import METHODS, CompressContext
from compaudit.compress.filters import kept_filters
from compaudit.config import TrainSpec
from compaudit.data import DataBundle
from compaudit.errors import MethodError
from compaudit.inference import predict
from compaudit.probes.efficiency import count_macs
from compaudit.train import fit
from tests.conftest import tiny_config
from tests.test_arch_contracts import ARCHS

#: small widths so every built-in model prunes in well under a second
SMALL: dict[str, dict[str, Any]] = {
    "vgg6": {"width": 0.25},
    "cnn8": {"width": 0.25},
    "resnet18": {"width": 8},
    "resnet34": {"width": 4},
    "resnet50": {"width": 4},
    "wrn": {"depth": 10, "widen_factor": 1},
    "student_cnn": {"width": 0.5},
    "mobile_cnn": {"width": 0.25},
}
SLOW = {"wrn28_10"}  # no width parameter: 36 M parameters
#: torchvision's ImageNet layouts (ResNet-18...152, VGG-16, SqueezeNet: 11-138 M parameters, and
#: VGG-16 and SqueezeNet need more than 16x16 pixels) are pruned at 64x64 by
#: tests/test_arch_contracts.py, with the same checks
SLOW |= set(ARCHS)


@pytest.fixture(autouse=True)
def _threads() -> None:
    """One thread: these models are tiny, and two OpenMP threads on two busy cores spend far more
    time waiting for each other than computing (a pruning call goes from 0.06 s to 3 s)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rgb16() -> DataBundle:
    return compaudit.load_dataset("digits", params={"size": 16, "channels": 3})


def context(data: DataBundle, *, restoring: bool = False) -> CompressContext:
    return CompressContext(data=data, seed=0, device=torch.device("cpu"), restoring=restoring)


def prune(model: nn.Module, ctx: CompressContext, **params: Any) -> nn.Module:
    return METHODS.get("prune_filters").from_spec("prune_filters", params).apply(model, ctx)


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return compaudit.build_model(name, input_shape=(3, 16, 16), num_classes=10, params=SMALL.get(name, {}))


def convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batch(data: DataBundle, n: int = 4) -> torch.Tensor:
    return torch.stack([data.test[i][0] for i in range(n)])


@pytest.mark.parametrize("name", [n for n in compaudit.MODELS.names() if n not in SLOW])
def test_every_builtin_model_shrinks_at_half_and_still_classifies(name: str, rgb16: DataBundle) -> None:
    model = build(name)
    pruned = prune(model, context(rgb16), ratio=0.5)
    x = batch(rgb16)
    assert pruned(x).shape == (4, 10)
    assert n_params(pruned) < n_params(model)  # vgg6: mostly its (unpruned) FC layers
    assert count_macs(pruned, x[:1]) < 0.8 * count_macs(model, x[:1])
    # every conv keeps round(out / 2) filters (coupled residual/depthwise channels included) ...
    for n, conv in convs(model).items():
        assert convs(pruned)[n].out_channels == kept_filters(conv.out_channels, 0.5), n
    # ... the classifier keeps its outputs, hidden linear layers are untouched by default
    for n, lin in model.named_modules():
        if isinstance(lin, nn.Linear):
            assert pruned.get_submodule(n).out_features == lin.out_features
    # a plain dense model: no masks, hooks or re-parametrisations left behind
    for m in pruned.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), m
        assert not hasattr(m, "parametrizations")
    assert all(not n.endswith(("_orig", "_mask")) for n in pruned.state_dict())


def test_vgg6_at_half_width_in_numbers(rgb16: DataBundle) -> None:
    """Conv MACs scale with out x in channels: halving both quarters every conv but the first."""
    model = build("vgg6")
    pruned = prune(model, context(rgb16), ratio=0.5)
    x = batch(rgb16, 1)
    conv_macs = [
        (m.out_channels * m.in_channels, convs(pruned)[n].out_channels * convs(pruned)[n].in_channels)
        for n, m in convs(model).items()
    ]
    assert [round(b / a, 3) for a, b in conv_macs] == [0.5, 0.25, 0.25, 0.25, 0.25, 0.25]
    assert count_macs(pruned, x) < 0.7 * count_macs(model, x)
    # the first FC layer reads half the channels; the model's own bookkeeping follows
    assert pruned.classifier[0].in_features == model.classifier[0].in_features // 2
    assert pruned.flatten_dim() == pruned.classifier[0].in_features
    assert pruned.conv_channels == (4, 4, 8, 8, 16, 16)


def test_linear_hidden_layers_prune_when_asked(rgb16: DataBundle) -> None:
    model = build("vgg6")
    pruned = prune(model, context(rgb16), ratio=0.5, layers=["conv", "linear"])
    assert [m.out_features for m in pruned.classifier if isinstance(m, nn.Linear)] == [512, 256, 10]
    flat = model.classifier[0].in_features // 2
    assert [m.in_features for m in pruned.classifier if isinstance(m, nn.Linear)] == [flat, 512, 256]
    only_fc = prune(model, context(rgb16), ratio=0.5, layers=["linear"])
    assert [m.out_channels for m in convs(only_fc).values()] == [
        m.out_channels for m in convs(model).values()
    ]
    assert only_fc.classifier[0].out_features == 512
    assert only_fc(batch(rgb16)).shape == (4, 10)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_each_layer_keeps_its_share_within_half_a_filter(
    trained_cnn: nn.Module, digits16: DataBundle, ratio: float
) -> None:
    pruned = prune(trained_cnn, context(digits16), ratio=ratio)
    for n, conv in convs(trained_cnn).items():
        out, kept = conv.out_channels, convs(pruned)[n].out_channels
        assert kept == kept_filters(out, ratio)
        assert 1 <= kept < out
        assert abs(kept - out * (1 - ratio)) <= 0.5 or kept == 1, (n, out, kept)


def test_kept_counts_round_to_nearest_and_keep_one() -> None:
    assert [kept_filters(8, r) for r in (0.0, 0.1, 0.5, 0.7, 0.9, 0.99)] == [8, 7, 4, 2, 1, 1]
    assert kept_filters(10, 0.9) == 1  # int(10 * (1 - 0.9)) == 0 in floating point
    assert kept_filters(5, 0.5) == 3  # halves round up
    assert [kept_filters(64, r, 8) for r in (0.5, 0.7, 0.75, 0.95)] == [32, 16, 16, 8]  # 19.2, 16, 3.2
    assert kept_filters(64, 0.6, 8) == 24  # 25.6 is nearer 24 than 32
    assert kept_filters(6, 0.5, 8) == 6  # never more than there are


def test_round_to_keeps_multiples(rgb16: DataBundle) -> None:
    model = build("resnet18")  # widths 8, 16, 32, 64
    pruned = prune(model, context(rgb16), ratio=0.6, round_to=4)
    widths = [m.out_channels for m in convs(pruned).values()]
    assert all(w % 4 == 0 for w in widths)
    assert sorted(set(widths)) == [4, 8, 12, 24]  # 0.4 x (8, 16, 32, 64) = 3.2, 6.4, 12.8, 25.6
    assert pruned(batch(rgb16)).shape == (4, 10)


def test_kept_filters_are_those_of_largest_l1_norm(rgb16: DataBundle) -> None:
    """Li et al.'s score is the L1 norm of the filter alone. The BatchNorm scales and the next
    layer's kernels are set to rank the channels the other way round, so a group score (Torch-
    Pruning's default magnitude importance) would keep different filters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        scale = torch.tensor([0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4])
        model[0].weight.copy_(torch.randn(8, 3, 3, 3).sign() * scale.view(8, 1, 1, 1))
        model[1].weight.copy_(2.0 - 2 * scale)
        model[1].running_mean.copy_(torch.arange(8.0))
        model[3].weight.copy_(torch.randn(4, 8, 1, 1).sign() * (20.0 - 20 * scale).view(1, 8, 1, 1))
    model.eval()
    l1 = model[0].weight.detach().abs().sum(dim=(1, 2, 3))
    kept = sorted(torch.topk(l1, 4).indices.tolist())
    assert kept == [0, 2, 4, 6]

    group_default = tp.importance.MagnitudeImportance(p=1)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, 3, 16, 16), verbose=False)
    group = dg.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(8)))
    assert sorted(torch.topk(group_default(group), 4).indices.tolist()) != kept  # the test can fail

    pruned = prune(model, context(rgb16), ratio=0.5)
    assert pruned[0].out_channels == 4 and pruned[3].out_channels == 4
    assert torch.equal(pruned[0].weight, model[0].weight[kept])
    assert torch.equal(pruned[0].bias, model[0].bias[kept])
    assert torch.equal(pruned[1].running_mean, model[1].running_mean[kept])
    assert torch.equal(pruned[3].weight, model[3].weight[:, kept])  # the next layer's kernels go too
    x = batch(rgb16)
    with torch.no_grad():
        assert torch.allclose(pruned[0](x), model[0](x)[:, kept], atol=1e-6)
        assert torch.allclose(pruned[:3](x), model[:3](x)[:, kept], atol=1e-6)


def test_skip_first_conv_keeps_its_filters(rgb16: DataBundle) -> None:
    model = build("cnn8")
    pruned = prune(model, context(rgb16), ratio=0.5, skip_first_conv=True)
    before, after = list(convs(model).values()), list(convs(pruned).values())
    assert after[0].out_channels == before[0].out_channels
    assert after[1].in_channels == before[1].in_channels
    assert all(
        a.out_channels == kept_filters(b.out_channels, 0.5)
        for a, b in zip(after[1:], before[1:], strict=True)
    )


def test_layer_ratios_and_ignore_override_the_ratio(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    widths = {n: m.out_channels for n, m in convs(trained_cnn).items()}  # 8, 16, 32, 32
    pruned = prune(
        trained_cnn,
        context(digits16),
        ratio=0.25,
        layer_ratios={"features.1.0": 0.75, "features.2": 0.5},  # a block applies to the layers inside
        ignore=["features.3"],
    )
    got = {n: m.out_channels for n, m in convs(pruned).items()}
    assert got == {
        "features.0.0": kept_filters(widths["features.0.0"], 0.25),
        "features.1.0": kept_filters(widths["features.1.0"], 0.75),
        "features.2.0": kept_filters(widths["features.2.0"], 0.5),
        "features.3.0": widths["features.3.0"],
    }
    only = prune(trained_cnn, context(digits16), ratio=0.0, layer_ratios={"features.1.0": 0.5})
    assert [m.out_channels for m in convs(only).values()] == [8, 8, 32, 32]


def test_residual_layers_are_pruned_together_at_the_smallest_ratio(rgb16: DataBundle) -> None:
    model = build("resnet18")
    pruned = prune(model, context(rgb16), ratio=0.0, layer_ratios={"layer1.0.conv2": 0.75, "conv1": 0.5})
    # the stem and every layer1 block output share one residual stream: all pruned at 0.5
    for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2"):
        assert pruned.get_submodule(n).out_channels == 4, n
    assert pruned.get_submodule("layer1.0.conv1").out_channels == 8  # inside the block: not coupled
    assert pruned.get_submodule("layer2.0.conv1").in_channels == 4
    assert pruned.get_submodule("layer2.0.shortcut.0").in_channels == 4
    assert pruned(batch(rgb16)).shape == (4, 10)


def test_depthwise_convs_follow_their_pointwise_conv(rgb16: DataBundle) -> None:
    model = build("mobile_cnn")
    pruned = prune(model, context(rgb16), ratio=0.5)
    for n, m in convs(pruned).items():
        if convs(model)[n].groups > 1:  # depthwise: still one filter per channel
            assert m.groups == m.in_channels == m.out_channels, n


def test_global_scope_ranks_all_layers_and_keeps_one_filter_each(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    pruned = prune(trained_cnn, context(digits16), ratio=0.5, scope="global")
    before = [m.out_channels for m in convs(trained_cnn).values()]
    after = [m.out_channels for m in convs(pruned).values()]
    total = sum(before)
    assert abs((total - sum(after)) / total - 0.5) <= 1 / total
    assert len({a / b for a, b in zip(after, before, strict=True)}) > 1  # uneven shares across layers
    # a layer whose filters all score alike sits wholly under a high global threshold: it keeps
    # one filter (Torch-Pruning's own global step would skip that layer and leave it whole)
    flat = trained_cnn
    with torch.no_grad():
        w = flat.features[0][0].weight
        w.copy_(w.sign() * w.abs().mean())
    squeezed = prune(flat, context(digits16), ratio=0.8, scope="global")
    assert next(iter(convs(squeezed).values())).out_channels == 1
    assert squeezed(batch(digits16)).shape == (4, 10)


def test_the_baseline_is_left_exactly_as_it_was(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    trained_cnn.train()
    trained_cnn.features[1].eval()
    trained_cnn.fc.weight.requires_grad_(False)
    modes = {n: m.training for n, m in trained_cnn.named_modules()}
    state = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    pruned = prune(trained_cnn, context(digits16), ratio=0.5)
    assert {n: m.training for n, m in trained_cnn.named_modules()} == modes
    after = trained_cnn.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in trained_cnn.modules())
    # the result keeps every module's mode and every parameter's requires_grad ...
    assert {n: m.training for n, m in pruned.named_modules()} == modes
    assert not pruned.fc.weight.requires_grad
    assert all(p.requires_grad for n, p in pruned.named_parameters() if n != "fc.weight")
    # ... and shares no storage with the baseline
    base = {p.untyped_storage().data_ptr() for p in trained_cnn.state_dict().values()}
    assert not base & {p.untyped_storage().data_ptr() for p in pruned.state_dict().values()}


@pytest.mark.parametrize(("name", "scope"), [("resnet18", "layer"), ("mobile_cnn", "global")])
def test_restoring_replays_the_same_architecture(name: str, scope: str, rgb16: DataBundle) -> None:
    model = build(name)
    first = prune(model, context(rgb16), ratio=0.5, scope=scope)
    with torch.no_grad():  # what recovery fine-tuning would do before the result is saved
        for p in first.parameters():
            p.add_(0.01 * torch.randn_like(p))
    saved = first.state_dict()
    restored = prune(model, context(rgb16, restoring=True), ratio=0.5, scope=scope)
    assert {k: v.shape for k, v in restored.state_dict().items()} == {k: v.shape for k, v in saved.items()}
    restored.load_state_dict(saved, strict=True)
    x = batch(rgb16)
    first.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(x), first(x))


def test_ratio_zero_is_a_no_op(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    out = prune(trained_cnn, context(digits16), ratio=0.0, layer_ratios={"features.0.0": 0.0})
    assert out is not trained_cnn
    a, b = out.state_dict(), trained_cnn.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_heavy_pruning_costs_accuracy(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    ctx = context(digits16)
    base = predict(trained_cnn, digits16.test).accuracy
    acc = {r: predict(prune(trained_cnn, ctx, ratio=r), digits16.test).accuracy for r in (0.0, 0.9)}
    assert acc[0.0] == base > 0.5
    assert acc[0.9] < acc[0.0] - 0.1


def test_a_pruned_model_fine_tunes(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    pruned = prune(trained_cnn, context(digits16), ratio=0.7)
    low = predict(pruned, digits16.test).accuracy
    fit(pruned, digits16, TrainSpec(epochs=2, batch_size=64, lr=0.05), seed=0)
    assert predict(pruned, digits16.test).accuracy > low


class RawConv(nn.Module):
    """A conv-like layer holding its weight as a bare parameter, unknown to Torch-Pruning."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, padding=1)


def custom_model(middle: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        middle,
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


@pytest.mark.parametrize(
    ("middle", "why"),
    [(RawConv(8), "parameters of its own"), (nn.Conv2d(8, 8, 3, padding=1, groups=2), "grouped convolution")],
)
def test_unsupported_layers_are_named_or_skipped(middle: nn.Module, why: str, rgb16: DataBundle) -> None:
    model = custom_model(middle)
    with pytest.raises(MethodError, match=rf"prune_filters: layer '2' \({type(middle).__name__}\) .*{why}"):
        prune(model, context(rgb16), ratio=0.5)
    ctx = context(rgb16)
    pruned = prune(model, ctx, ratio=0.5, on_unsupported="skip")
    assert len(ctx.skipped) == 1 and "'2'" in ctx.skipped[0]
    assert pruned[0].out_channels == 8  # feeds the unsupported layer: kept whole
    assert pruned[2].weight.shape == middle.weight.shape
    assert pruned[4].out_channels == 8 and pruned[9].in_features == 8  # the rest is pruned
    assert pruned(batch(rgb16)).shape == (4, 10)


def test_bad_names_and_params_are_refused(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    from pydantic import ValidationError

    with pytest.raises(MethodError, match="'nope'"):
        prune(trained_cnn, context(digits16), ratio=0.5, ignore=["nope"])
    with pytest.raises(MethodError, match=r"layer_ratios names 'features\.9'"):
        prune(trained_cnn, context(digits16), ratio=0.5, layer_ratios={"features.9": 0.5})
    with pytest.raises(MethodError, match="found no linear layer"):
        prune(nn.Sequential(nn.Conv2d(3, 4, 3)), context(digits16), ratio=0.5, layers=["linear"])
    for bad in (
        {"ratio": 1.0},
        {"ratio": -0.1},
        {},
        {"ratio": 0.5, "layer_ratios": {"fc": 1.0}},
        {"ratio": 0.5, "round_to": 0},
        {"ratio": 0.5, "scope": "net"},
        {"ratio": 0.5, "x": 1},
    ):
        with pytest.raises(ValidationError):
            METHODS.get("prune_filters").from_spec("prune_filters", bad)


def test_registered_with_its_lineage() -> None:
    method = METHODS.get("prune_filters").from_spec("prune_filters", {"ratio": 0.5})
    assert method.weight_bits() is None
    assert method.describe() == {
        "method": "prune_filters",
        "params": {
            "on_unsupported": "error",
            "ratio": 0.5,
            "scope": "layer",
            "layer_ratios": {},
            "layers": ["conv"],
            "skip_first_conv": False,
            "ignore": [],
            "round_to": None,
        },
    }


def test_end_to_end_run_shrinks_the_variant_and_restores_it_from_cache(tmp_path: Path) -> None:
    cfg = tiny_config(
        variants=[
            {
                "name": "filters50",
                "steps": [{"method": "prune_filters", "params": {"ratio": 0.5}}],
                "finetune": {"epochs": 1},
            }
        ]
    )
    out = tmp_path / "out"
    first = compaudit.run_experiment(compaudit.Experiment.from_dict(cfg), out)
    assert first.new == 4 and not first.failed
    assert first.trained == ["baseline", "filters50"]

    def metric(rows: list[dict[str, Any]], variant: str, name: str) -> float:
        (value,) = [r["value"] for r in rows if r["variant"] == variant and r["metric"] == name]
        return float(value)

    rows = export_rows(out)
    assert metric(rows, "filters50", "params") < 0.5 * metric(rows, "baseline", "params")
    assert metric(rows, "filters50", "macs") < 0.5 * metric(rows, "baseline", "macs")
    assert metric(rows, "filters50", "nonzero_params") == metric(rows, "filters50", "params")

    again = compaudit.run_experiment(compaudit.Experiment.from_dict(cfg), out)
    assert again.new == 0 and again.cached == 4 and again.trained == []
    # a new probe setting rebuilds the variant from its cached step: the pruning is replayed
    # (restoring) and the saved, fine-tuned weights load strictly into it; nothing trains
    cfg["probes"][1]["params"]["repeats"] = 2
    third = compaudit.run_experiment(compaudit.Experiment.from_dict(cfg), out)
    assert third.new == 2 and not third.failed and third.trained == []
    rows = export_rows(out)
    assert metric(rows, "filters50", "params") < 0.5 * metric(rows, "baseline", "params")
