"""Unstructured magnitude pruning: the asked sparsity, the right weights, the baseline untouched."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from compaudit.compress import METHODS, CompressContext, make_permanent
from compaudit.config import TrainSpec
from compaudit.data import DataBundle
from compaudit.errors import MethodError
from compaudit.inference import predict
from compaudit.train import fit
from tests.conftest import tiny_cnn


def context(data: DataBundle, *, restoring: bool = False) -> CompressContext:
    return CompressContext(data=data, seed=0, device=torch.device("cpu"), restoring=restoring)


def prune(model: nn.Module, ctx: CompressContext, *, permanent: bool = True, **params: Any) -> nn.Module:
    method = METHODS.get("prune_unstructured").from_spec("prune_unstructured", params)
    out = method.apply(model, ctx)
    return make_permanent(out) if permanent else out


def layers(model: nn.Module, kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kinds)]


def zeros(m: nn.Module) -> int:
    return int((m.weight == 0).sum())


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_scope_reaches_the_asked_sparsity_overall(
    trained_cnn: nn.Module, digits16: DataBundle, sparsity: float
) -> None:
    assert sum(zeros(m) for m in layers(trained_cnn)) == 0  # trained weights have no exact zeros
    pruned = prune(trained_cnn, context(digits16), sparsity=sparsity)
    total = sum(m.weight.numel() for m in layers(pruned))
    share = sum(zeros(m) for m in layers(pruned)) / total
    assert abs(share - sparsity) <= 1 / total
    # global ranking prunes layers unevenly: the layers' shares are not all the asked one
    shares = [zeros(m) / m.weight.numel() for m in layers(pruned)]
    assert max(shares) - min(shares) > 0.05


@pytest.mark.parametrize("sparsity", [0.3, 0.8])
def test_layer_scope_reaches_the_asked_sparsity_in_every_layer(
    trained_cnn: nn.Module, digits16: DataBundle, sparsity: float
) -> None:
    pruned = prune(trained_cnn, context(digits16), sparsity=sparsity, scope="layer")
    for m in layers(pruned):
        n = m.weight.numel()
        assert abs(zeros(m) / n - sparsity) <= 1 / n, m


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_skip_first_conv_leaves_it_dense(trained_cnn: nn.Module, digits16: DataBundle, scope: str) -> None:
    pruned = prune(trained_cnn, context(digits16), sparsity=0.7, scope=scope, skip_first_conv=True)
    convs = layers(pruned, (nn.Conv2d,))
    assert zeros(convs[0]) == 0
    assert all(zeros(m) > 0 for m in convs[1:])
    assert zeros(layers(pruned, (nn.Linear,))[0]) > 0


def test_linear_only_leaves_convs_dense(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    pruned = prune(trained_cnn, context(digits16), sparsity=0.5, layers=["linear"])
    assert all(zeros(m) == 0 for m in layers(pruned, (nn.Conv2d,)))
    (fc,) = layers(pruned, (nn.Linear,))
    assert abs(zeros(fc) / fc.weight.numel() - 0.5) <= 1 / fc.weight.numel()


def test_the_input_model_is_never_mutated(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    trained_cnn.train()
    trained_cnn.features[2].eval()
    flags = [m.training for m in trained_cnn.modules()]
    state = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    out = prune(trained_cnn, context(digits16), permanent=False, sparsity=0.8)
    assert out is not trained_cnn
    assert [m.training for m in trained_cnn.modules()] == flags
    after = trained_cnn.state_dict()
    assert after.keys() == state.keys()  # no weight_orig / weight_mask added
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert all(not m._forward_pre_hooks for m in trained_cnn.modules())
    assert sum(zeros(m) for m in layers(trained_cnn)) == 0
    make_permanent(out)
    assert all(torch.equal(trained_cnn.state_dict()[k], state[k]) for k in state)


def test_global_scope_prunes_the_globally_smallest_magnitudes(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    before = torch.cat([m.weight.detach().abs().flatten() for m in layers(trained_cnn)])
    pruned = prune(trained_cnn, context(digits16), sparsity=0.6)
    after = torch.cat([m.weight.detach().flatten() for m in layers(pruned)])
    removed = after == 0
    assert 0 < int(removed.sum()) < len(after)
    assert before[~removed].min() >= before[removed].max()
    # the kept weights are untouched
    assert torch.equal(after[~removed].abs(), before[~removed])


def test_masks_survive_fine_tuning(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    masked = prune(trained_cnn, context(digits16), permanent=False, sparsity=0.7, scope="layer")
    zero_at = [m.weight.detach() == 0 for m in layers(masked)]
    kept_before = [m.weight.detach().clone() for m in layers(masked)]
    fit(masked, digits16, TrainSpec(epochs=1, batch_size=64, lr=0.01), seed=0)
    final = make_permanent(masked)
    assert all(not m._forward_pre_hooks for m in final.modules())
    assert not any(k.endswith(("_orig", "_mask")) for k in final.state_dict())
    changed = False
    for m, z, w0 in zip(layers(final), zero_at, kept_before, strict=True):
        assert torch.equal(m.weight.detach() == 0, z)  # zeros exactly where they were, nowhere else
        changed |= not torch.equal(m.weight.detach()[~z], w0[~z])
    assert changed  # fine-tuning did train the kept weights


def test_restoring_rebuilds_the_masked_architecture_without_pruning(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    """Restoring must give the state-dict keys of the pruned (still masked) model, so its saved
    weights and masks load strictly; by itself it zeroes nothing (all-ones masks)."""
    out = prune(trained_cnn, context(digits16, restoring=True), permanent=False, sparsity=0.9)
    assert sum(zeros(m) for m in layers(out)) == 0
    masks = [b for n, b in out.named_buffers() if n.endswith("weight_mask")]
    assert masks and all(bool((m == 1).all()) for m in masks)
    saved_model = prune(trained_cnn, context(digits16), permanent=False, sparsity=0.9)
    saved = saved_model.state_dict()
    assert out.state_dict().keys() == saved.keys()
    out.load_state_dict(saved, strict=True)
    out(digits16.test[0][0].unsqueeze(0))  # the pruning hook recomputes weight = weight_orig * mask
    assert sum(zeros(m) for m in layers(out)) == sum(zeros(m) for m in layers(saved_model)) > 0
    # the loaded masks keep the zeros through training, as in the first build
    fit(out, digits16, TrainSpec(epochs=1, lr=0.05), seed=0)
    assert sum(zeros(m) for m in layers(out)) == sum(zeros(m) for m in layers(saved_model))


def test_sparsity_zero_is_a_no_op(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    out = prune(trained_cnn, context(digits16), permanent=False, sparsity=0.0)
    a, b = out.state_dict(), trained_cnn.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not m._forward_pre_hooks for m in out.modules())


@pytest.mark.parametrize(
    ("model", "kinds"),
    [
        (nn.Sequential(nn.Flatten(), nn.ReLU()), ["conv", "linear"]),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), ["linear"]),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), ["conv"]),  # the one conv is skipped
    ],
)
def test_nothing_to_prune_raises_naming_the_method(
    model: nn.Module, kinds: list[str], digits16: DataBundle
) -> None:
    skip = kinds == ["conv"]
    with pytest.raises(MethodError, match="'prune_unstructured' found no"):
        prune(model, context(digits16), sparsity=0.5, layers=kinds, skip_first_conv=skip)


@pytest.mark.parametrize(
    "bad", [{"sparsity": 1.0}, {"sparsity": -0.1}, {"sparsity": 0.5, "scope": "row"}, {}]
)
def test_invalid_params_are_refused(bad: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        METHODS.get("prune_unstructured").from_spec("prune_unstructured", bad)


def test_heavy_pruning_costs_accuracy(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    ctx = context(digits16)
    acc = {s: predict(prune(trained_cnn, ctx, sparsity=s), digits16.test).accuracy for s in (0.0, 0.5, 0.95)}
    assert acc[0.0] == predict(trained_cnn, digits16.test).accuracy
    assert acc[0.95] < acc[0.0]
    assert acc[0.95] < acc[0.5] <= acc[0.0] + 0.05


def test_a_fresh_model_and_the_records_lineage(digits16: DataBundle) -> None:
    method = METHODS.get("prune_unstructured").from_spec("prune_unstructured", {"sparsity": 0.25})
    assert method.describe() == {
        "method": "prune_unstructured",
        "params": {
            "sparsity": 0.25,
            "scope": "global",
            "layers": ["conv", "linear"],
            "skip_first_conv": False,
            "on_unsupported": "error",
        },
    }
    out = make_permanent(method.apply(tiny_cnn(3), context(digits16)))
    total = sum(m.weight.numel() for m in layers(out))
    assert abs(sum(zeros(m) for m in layers(out)) / total - 0.25) <= 1 / total


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_a_chain_of_two_prune_steps_builds_and_leaves_the_middle_model_alone(
    trained_cnn: nn.Module, digits16: DataBundle, scope: str
) -> None:
    ctx = context(digits16)
    middle = prune(trained_cnn, ctx, permanent=False, sparsity=0.5, scope=scope)
    weights = [m.weight for m in layers(middle)]  # computed tensors of the pruning re-parametrisation
    state = {k: v.clone() for k, v in middle.state_dict().items()}
    final = prune(middle, ctx, sparsity=0.5, scope=scope)
    assert all(a is b for a, b in zip(weights, [m.weight for m in layers(middle)], strict=True))
    assert all(torch.equal(middle.state_dict()[k], state[k]) for k in state)
    first = [m.weight.detach() == 0 for m in layers(make_permanent(middle))]
    second = [m.weight.detach() == 0 for m in layers(final)]
    assert all(bool((b | ~a).all()) for a, b in zip(first, second, strict=True))  # zeros stay zero
    assert sum(int(b.sum()) for b in second) > sum(int(a.sum()) for a in first)
