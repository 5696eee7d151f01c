"""The explain probe end to end: the trained digits student, a pruned copy, an int8 variant (maps
from its surrogate, confidences from the int8 model), a VGG without a GAP head; against
independent computations."""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch import Tensor, nn

from compaudit import build_model
from compaudit.compress import METHODS, CompressContext, make_permanent
from compaudit.data import DataBundle
from compaudit.data.base import sample_indices
from compaudit.explain import explain, normalize
from compaudit.explain.metrics import pearson
from compaudit.probes import PROBES, Probe, ProbeContext, ProbeResult
from compaudit.results import Role
from compaudit.runtime import derive_seed
from compaudit.variant import Variant

SMALL = {"samples": 48, "grid": 2, "batch_size": 32}


def probe(**params: Any) -> Probe:
    return PROBES.get("explain").from_spec("explain", {**SMALL, **params})


def metric(res: ProbeResult, name: str, **params: Any) -> float:
    found = [
        m.value
        for m in res.metrics
        if m.name == name and all(m.params.get(k) == v for k, v in params.items())
    ]
    assert len(found) == 1, (name, params, [(m.name, m.params) for m in res.metrics])
    return found[0]


def has(res: ProbeResult, name: str, **params: Any) -> bool:
    return any(m.name == name and all(m.params.get(k) == v for k, v in params.items()) for m in res.metrics)


def setup(model: nn.Module, data: DataBundle) -> tuple[Variant, ProbeContext]:
    base = Variant("baseline", "base-key", model)
    return base, ProbeContext(data=data, baseline=base, device=torch.device("cpu"), seed=0)


def child(name: str, model: nn.Module, **kw: Any) -> Variant:
    return Variant(
        name, f"{name}-key", model, lineage=[{"method": "test", "params": {}}], parent="base-key", **kw
    )


def subset(data: DataBundle, n: int) -> Tensor:
    return sample_indices(data.test.y, n, seed=derive_seed(0, "explain-subset"))  # type: ignore[attr-defined]


def average_drop_by_hand(maps_model: nn.Module, prob_model: nn.Module, x: Tensor, y: Tensor) -> float:
    maps = normalize(explain(maps_model, x, y, method="gradcam"))
    with torch.no_grad():
        p = prob_model(x).double().softmax(1).gather(1, y[:, None])[:, 0]
        o = prob_model(x * maps[:, None]).double().softmax(1).gather(1, y[:, None])[:, 0]
    return float(((p - o).clamp(min=0) / p).mean())


@pytest.fixture(scope="module")
def int8_models(trained_state: dict[str, Tensor], digits16: DataBundle) -> tuple[nn.Module, nn.Module]:
    """(calibrated fake-quant surrogate, deployed int8 model) of the trained student."""
    from tests.conftest import tiny_cnn

    model = tiny_cnn(0)
    model.load_state_dict(trained_state)
    m = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 4})
    ctx = CompressContext(data=digits16, seed=0, device=torch.device("cpu"))
    fake = m.apply(model.eval(), ctx).eval()
    deployment = m.deploy(fake, ctx)
    assert deployment is not None
    deployed = deployment.model
    return fake, deployed


def predicted(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def test_baseline_metrics_on_the_test_subset_match_an_independent_computation(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    base, ctx = setup(trained_cnn, digits16)
    res = probe().run(base, ctx)
    assert probe().params.target == "predicted"  # type: ignore[attr-defined]  # seed 004, Poppi et al.
    assert not res.warnings and not [r for r in res.tables["notes"] if "skipped" in r["note"]]
    assert metric(res, "surrogate") == 0.0
    for method in ("gradcam", "guided_gradcam", "cam"):
        layer = "avgpool" if method == "cam" else "features.3.0"
        for name in (
            "average_drop",
            "increase_in_confidence",
            "coherency",
            "coherency_ssim",
            "complexity",
            "adcc",
        ):
            assert 0.0 <= metric(res, name, method=method, layer=layer) <= 1.0
        assert not has(res, "saliency_mad", method=method)  # no drift of the baseline with itself
    # the images come from the TEST split: the same stratified subset, labels and order
    idx = subset(digits16, 48)
    x, y = digits16.test.x[idx], digits16.test.y[idx]  # type: ignore[attr-defined]
    grid = [r for r in res.tables["grid"] if r["method"] == "gradcam"]
    assert [r["index"] for r in grid] == idx[:2].tolist()
    assert [r["label"] for r in grid] == [digits16.classes[int(c)] for c in y[:2]]
    # the class explained is the model's prediction (5 of these 48 digits are misclassified): its map
    # is drawn, its probability read on the image and on the image ⊙ map, its map of that compared
    c = predicted(trained_cnn, x)
    assert (c != y).any()
    # Average Drop: softmax probabilities of the model, eval mode, normalised maps at input size
    assert metric(res, "average_drop", method="gradcam") == pytest.approx(
        average_drop_by_hand(trained_cnn, trained_cnn, x, c), abs=1e-6
    )
    maps = normalize(explain(trained_cnn, x, c, method="gradcam"))
    assert metric(res, "complexity", method="gradcam") == pytest.approx(float(maps.mean()), abs=1e-6)
    again = normalize(explain(trained_cnn, x * maps[:, None], c, method="gradcam"))
    coh = float(((pearson(maps, again) + 1) / 2).nan_to_num(0.0).mean())
    assert metric(res, "coherency", method="gradcam") == pytest.approx(coh, abs=1e-6)
    # target: label is still there, and explains the true class instead
    by_label = probe(target="label").run(base, ctx)
    assert metric(by_label, "average_drop", method="gradcam") == pytest.approx(
        average_drop_by_hand(trained_cnn, trained_cnn, x, y), abs=1e-6
    )
    assert metric(by_label, "average_drop", method="gradcam") != pytest.approx(
        metric(res, "average_drop", method="gradcam"), abs=1e-6
    )


def test_grid_pngs_are_small_and_about_64_pixels(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base, ctx = setup(trained_cnn, digits16)
    res = probe(methods=["gradcam", "gradient"]).run(base, ctx)
    rows = res.tables["grid"]
    assert len(rows) == 2 * 2 and {r["layer"] for r in rows} == {"features.3.0", "input"}
    for r in rows:
        for key in ("image", "overlay"):
            assert r[key].startswith("data:image/png;base64,")
            raw = base64.b64decode(r[key].split(",", 1)[1])
            assert len(raw) < 8000
            img = Image.open(io.BytesIO(raw))
            assert img.size == (64, 64)
        assert Image.open(io.BytesIO(base64.b64decode(r["overlay"].split(",", 1)[1]))).mode == "RGB"


def test_drift_is_zero_against_an_identical_copy_and_positive_after_pruning(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    base, ctx = setup(trained_cnn, digits16)
    p = probe(methods=["gradcam"], topk=0.2, target="label")
    p.run(base, ctx)
    same = p.run(child("copy", copy.deepcopy(trained_cnn)), ctx)
    assert metric(same, "saliency_mad", method="gradcam") == pytest.approx(0.0, abs=1e-6)
    assert metric(same, "saliency_spearman", method="gradcam") == pytest.approx(1.0, abs=1e-6)
    assert metric(same, "saliency_topk_iou", method="gradcam", k=0.2) == pytest.approx(1.0)
    m = METHODS.get("prune_unstructured").from_spec("prune_unstructured", {"sparsity": 0.7})
    pruned_model = make_permanent(
        m.apply(
            copy.deepcopy(trained_cnn), CompressContext(data=digits16, seed=0, device=torch.device("cpu"))
        )
    )
    pruned = p.run(child("pruned", pruned_model), ctx)
    mad = metric(pruned, "saliency_mad", method="gradcam")
    assert 0.0 < mad < 1.0
    # the drift is against the baseline's maps of the same test images and classes
    idx = subset(digits16, 48)
    x, y = digits16.test.x[idx], digits16.test.y[idx]  # type: ignore[attr-defined]
    a = normalize(explain(pruned_model, x, y, method="gradcam"))
    b = normalize(explain(trained_cnn, x, y, method="gradcam"))
    assert mad == pytest.approx(float((a - b).abs().mean()), abs=1e-6)
    assert -1.0 <= metric(pruned, "saliency_spearman", method="gradcam") < 1.0


def test_int8_variant_maps_from_the_surrogate_confidences_from_the_int8_model(
    trained_cnn: nn.Module, digits16: DataBundle, int8_models: tuple[nn.Module, nn.Module]
) -> None:
    fake, deployed = int8_models
    _, ctx = setup(trained_cnn, digits16)
    variant = child(
        "int8", fake, deployed=deployed, surrogate=fake, gradient_path=False, graph=deployed.quantized
    )
    ctx.predictions(variant, "test")  # cached first: the calls counted below are the probe's own
    calls: list[int] = []
    handle = deployed.register_forward_hook(lambda _m, _a, out: calls.append(len(out)))
    try:
        res = probe(methods=["gradcam", "cam", "guided_backprop"]).run(variant, ctx)
    finally:
        handle.remove()
    assert metric(res, "surrogate") == 1.0
    assert any("surrogate" in r["note"] for r in res.tables["notes"])
    assert sum(calls) == 3 * 48  # O_c of every sample and method: x ⊙ map through the int8 model
    assert metric(res, "adcc", method="cam", layer="avgpool") > 0.0
    idx = subset(digits16, 48)
    x = digits16.test.x[idx]  # type: ignore[attr-defined]
    # the class explained is the deployed int8 model's prediction, mapped on the surrogate
    c = predicted(deployed, x)
    assert metric(res, "average_drop", method="gradcam", layer="features.3.0") == pytest.approx(
        average_drop_by_hand(fake, deployed, x, c), abs=1e-6
    )
    # the surrogate's maps are close to the float model's, so drift measures compression
    assert metric(res, "saliency_spearman", method="gradcam") > 0.8


def test_guided_backprop_reaches_the_fused_relus_of_the_int8_surrogate(
    trained_cnn: nn.Module, digits16: DataBundle, int8_models: tuple[nn.Module, nn.Module]
) -> None:
    # every ReLU of the surrogate is fused into ConvBnReLU2d (no nn.ReLU left for Captum's hooks):
    # without the fused-ReLU rule its guided backprop would be its plain gradient
    fake, _ = int8_models
    assert not any(isinstance(m, nn.ReLU) for m in fake.modules())
    x, y = digits16.test.x[:16], digits16.test.y[:16]  # type: ignore[attr-defined]
    float_guided = explain(trained_cnn, x, y, method="guided_backprop")
    guided = explain(fake, x, y, method="guided_backprop")
    plain = explain(fake, x, y, method="gradient")
    assert float(pearson(guided, float_guided).mean()) > 0.9
    assert float(pearson(plain, float_guided).mean()) < 0.7
    counts = [len(m._forward_hooks) + len(m._backward_hooks) for m in fake.modules()]
    explain(fake, x, y, method="guided_gradcam")
    assert [len(m._forward_hooks) + len(m._backward_hooks) for m in fake.modules()] == counts


def test_cam_on_a_model_without_gap_head_is_a_note_not_a_failure(digits16: DataBundle) -> None:
    torch.manual_seed(0)
    vgg = build_model("vgg6", input_shape=(1, 16, 16), num_classes=10, params={"width": 0.25})
    base, ctx = setup(vgg, digits16)
    res = probe(samples=16).run(base, ctx)
    assert not res.warnings
    assert not has(res, "adcc", method="cam")
    assert has(res, "adcc", method="gradcam") and has(res, "adcc", method="guided_gradcam")
    notes = [r for r in res.tables["notes"] if r["method"] == "cam"]
    assert len(notes) == 1 and "global-average-pooling" in notes[0]["note"]
    assert not [r for r in res.tables["grid"] if r["method"] == "cam"]
    # a variant of it skips CAM too, and its drift skips it without comparing to nothing
    res = probe(samples=16).run(child("copy", copy.deepcopy(vgg)), ctx)
    assert not has(res, "saliency_mad", method="cam") and has(res, "saliency_mad", method="gradcam")


def test_the_whole_split_when_it_is_smaller_and_predicted_targets(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    base, ctx = setup(trained_cnn, digits16)
    res = probe(samples=10_000, methods=["cam"], target="predicted", grid=1).run(base, ctx)
    assert res.tables["grid"][0]["index"] == 0  # every test image, in order
    assert 0.0 <= metric(res, "average_drop", method="cam") <= 1.0


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError, match="unknown saliency method"):
        probe(methods=["lime"])
    with pytest.raises(ValidationError, match="twice"):
        probe(methods=["cam", "cam"])
    with pytest.raises(ValidationError):
        probe(topk=0.0)
    cls = PROBES.get("explain")
    assert PROBES.doc("explain") and "\n" not in PROBES.doc("explain")
    assert {d.spec.name for d in cls.views("explain", Role.SUMMARY)} == {"adcc", "saliency_mad"}
