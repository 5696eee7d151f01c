"""Feature-space structure: t-SNE, its metrics against scikit-learn, layer capture, and the
embedding probe end to end on the trained digits model."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.manifold import trustworthiness
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from compaudit.compress import METHODS, CompressContext
from compaudit.data import DataBundle
from compaudit.errors import ProbeError
from compaudit.explain.embedding import capture, plan_layers, structure_metrics, tsne
from compaudit.probes import PROBES, ProbeContext, ProbeResult
from compaudit.probes.embedding import feature_model
from compaudit.variant import Variant


def blobs(n_per: int, classes: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters (unit variance) whose centres lie ``spread`` apart on the axes."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per)
    centres = np.eye(classes, dim) * spread
    return centres[y] + rng.normal(size=(len(y), dim)), y


def metric(res: ProbeResult, name: str, **params: object) -> float:
    found = [
        m.value
        for m in res.metrics
        if m.name == name and all(m.params.get(k) == v for k, v in params.items())
    ]
    assert len(found) == 1, (name, params, found)
    return found[0]


# ---------------------------------------------------------------- t-SNE and its metrics


def test_tsne_is_deterministic_per_seed_and_finite() -> None:
    x, _ = blobs(30, 3, 10, 6.0, seed=0)
    a = tsne(x, seed=3)
    b = tsne(x, seed=3)
    c = tsne(x, seed=4)
    assert a.shape == (90, 2) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tsne_small_and_degenerate_inputs() -> None:
    x, _ = blobs(3, 3, 5, 6.0, seed=0)  # 9 points: perplexity 30 is clipped to (9 - 1) / 3
    assert np.isfinite(tsne(x, seed=0)).all()
    assert np.array_equal(tsne(np.ones((12, 4)), seed=0), np.zeros((12, 2)))  # a dead layer
    assert np.isfinite(tsne(np.arange(12.0)[:, None], seed=0)).all()  # one feature: no PCA start
    with pytest.raises(ValueError, match="at least"):
        tsne(np.zeros((3, 2)), seed=0)


def test_separated_blobs_score_high_and_random_labels_score_chance() -> None:
    x, y = blobs(40, 4, 20, 12.0, seed=1)
    emb = tsne(x, seed=0)
    good = structure_metrics(x, emb, y, k=5, seed=0)
    assert good["silhouette"] > 0.6
    assert good["silhouette_features"] > 0.6
    assert good["knn_accuracy_embedding"] == pytest.approx(1.0)
    assert good["knn_accuracy_features"] == pytest.approx(1.0)
    assert good["trustworthiness"] > 0.9

    noise = np.random.default_rng(2).normal(size=(160, 20))
    labels = np.random.default_rng(3).integers(0, 4, size=160)
    bad = structure_metrics(noise, tsne(noise, seed=0), labels, k=5, seed=0)
    assert abs(bad["silhouette"]) < 0.1
    assert abs(bad["silhouette_features"]) < 0.1
    assert bad["knn_accuracy_features"] < 0.4  # chance: 0.25
    assert bad["knn_accuracy_embedding"] < 0.4


def test_structure_metrics_match_scikit_learn() -> None:
    x, y = blobs(25, 4, 8, 2.5, seed=5)  # overlapping: nothing is at a ceiling
    emb = tsne(x, seed=1)
    got = structure_metrics(x, emb, y, k=5, seed=7)
    knn = KNeighborsClassifier(n_neighbors=5)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=7)
    assert got["silhouette"] == silhouette_score(emb, y)
    assert got["silhouette_features"] == silhouette_score(x, y)
    assert got["knn_accuracy_embedding"] == np.mean(cross_val_predict(knn, emb, y, cv=folds) == y)
    assert got["knn_accuracy_features"] == np.mean(cross_val_predict(knn, x, y, cv=folds) == y)
    assert got["trustworthiness"] == trustworthiness(x, emb, n_neighbors=5)
    assert 0.3 < got["knn_accuracy_features"] < 1.0

    groups = np.arange(len(y)) % 50  # pairs of points share a group, as clean/adversarial twins do
    grouped = structure_metrics(x, emb, y, k=5, seed=7, groups=groups)
    gfolds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=7)
    pred = cross_val_predict(knn, x, y, cv=gfolds, groups=groups)
    assert grouped["knn_accuracy_features"] == np.mean(pred == y)


# ---------------------------------------------------------------- capture


def test_penultimate_is_what_the_model_feeds_its_fc(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    x = digits16.test.x[:40]  # type: ignore[attr-defined]
    model: Any = trained_cnn
    with torch.no_grad():
        manual = torch.flatten(model.avgpool(model.features(x)), 1)
        logits = model(x)
    got = capture(trained_cnn, x, ["penultimate", "logits", "features.3"], batch_size=16)
    assert torch.allclose(got["penultimate"], manual, atol=1e-6)
    assert torch.allclose(got["logits"], logits, atol=1e-6)
    assert got["features.3"].shape == (40, model.features(x[:1]).numel())


def test_capture_leaves_the_model_as_it_was(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    model = copy.deepcopy(trained_cnn).train()
    model.features[0].eval()  # type: ignore[index]  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    x = digits16.test.x[:16]  # type: ignore[attr-defined]
    torch.manual_seed(0)
    before = model(x).detach()  # in train mode: updates the BN statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(x)
    feats = capture(model, x, ["penultimate", "logits"], batch_size=8)
    assert [m.training for m in model.modules()] == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN stats untouched
    assert not any(t.requires_grad for t in feats.values())
    assert not any(p.grad is not None for p in model.parameters())
    # the features are eval-mode ones (running BN statistics), whatever mode the model came in
    assert torch.allclose(feats["logits"], reference, atol=1e-6)
    torch.manual_seed(0)
    assert torch.equal(model(x), before)


def test_capture_errors_name_the_layer(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    x = digits16.test.x[:4]  # type: ignore[attr-defined]
    with pytest.raises(ProbeError, match=r"unknown layer 'classifier\.9'.*penultimate.*features") as err:
        capture(trained_cnn, x, ["classifier.9"])
    assert "\n" not in str(err.value)
    with pytest.raises(ProbeError, match=r"last3\[1\].*1 linear layer"):
        capture(trained_cnn, x, ["last3"])


def test_layer_aliases_on_vgg_and_its_int8_deployment(digits16: DataBundle) -> None:
    from compaudit import build_model

    torch.manual_seed(0)
    vgg = build_model("vgg6", input_shape=(1, 16, 16), num_classes=10, params={"width": 0.25}).eval()
    x = digits16.test.x[:24]  # type: ignore[attr-defined]
    plan = plan_layers(vgg, ["penultimate", "first_fc", "last3"], x[:2])
    where = {k: (t.module, t.side) for k, t in plan.taps.items()}
    assert where == {
        "penultimate": ("classifier.6", "input"),
        "first_fc": ("classifier.1", "output"),  # the ReLU after the first FC layer
        "last3[1]": ("classifier.3", "input"),
        "last3[2]": ("classifier.6", "input"),
        "last3[3]": ("classifier.6", "output"),
    }
    method = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 2})
    ctx = CompressContext(data=digits16, seed=0, device=torch.device("cpu"))
    fake = method.apply(copy.deepcopy(vgg), ctx)
    deployment = method.deploy(fake, ctx)
    assert deployment is not None and deployment.graph is not None
    deployed = deployment.model
    # the caller hooks the module whose layers compute: the deployment's graph (a variant's layers)
    got = capture(deployment.graph, x, ["logits", "penultimate", "first_fc"])
    assert torch.equal(got["logits"], deployed(x))  # read from the int8 model that ships
    assert (got["first_fc"] >= 0).all()  # fused LinearReLU: after the ReLU
    surrogate = capture(fake, x, ["penultimate"])["penultimate"]
    assert torch.allclose(got["penultimate"], surrogate, atol=0.05 * float(surrogate.abs().max()))

    # the probe reads the int8 variant's features from the deployed model, attacks its surrogate
    variant = Variant("int8", "int8-key", fake, parent="base-key", surrogate=fake)
    variant.deploy(deployment)
    assert variant.inference_model is deployed and feature_model(variant) == (deployment.graph, False)
    base = Variant("baseline", "base-key", vgg)
    ctx = ProbeContext(data=digits16, baseline=base, device=torch.device("cpu"), seed=0)
    params = {"samples": 30, "adversarial": True, "steps": 2, "layers": ["first_fc", "classifier.1"]}
    res = PROBES.get("embedding").from_spec("embedding", params).run(variant, ctx)
    assert metric(res, "surrogate") == 0.0
    assert 0.0 <= metric(res, "adversarial_knn_accuracy_features", layer="first_fc") <= 1.0
    assert [r["layer"] for r in res.tables["notes"]] == ["classifier.1"]  # the ReLU fused away


def test_layer_aliases_on_a_conv_classifier_head(digits16: DataBundle) -> None:
    """SqueezeNet has no linear layer: its classifier is a 1x1 class conv (``classifier.1``), ReLU
    and global average pooling (``classifier.3``). The aliases read that head as they read a linear
    one: ``penultimate`` is what the class conv is applied to, ``logits`` the pooled class scores;
    there is no first fully-connected layer."""
    from compaudit import build_model
    from compaudit.data.base import ArrayDataset

    torch.manual_seed(0)
    model = build_model("squeezenet1_1", input_shape=(3, 64, 64), num_classes=2).eval()
    x = torch.rand(12, 3, 64, 64)
    plan = plan_layers(model, ["penultimate", "logits", "first_fc", "last3"], x[:2])
    where = {k: (t.module, t.side) for k, t in plan.taps.items()}
    assert where == {
        "penultimate": ("classifier.1", "input"),
        "logits": ("classifier.3", "output"),
        "last3[2]": ("classifier.1", "input"),
        "last3[3]": ("classifier.3", "output"),
    }
    assert set(plan.missing) == {"first_fc", "last3[1]"}
    assert "fully-connected" in plan.missing["first_fc"]
    got = capture(model, x, ["penultimate", "logits"], batch_size=5)
    with torch.no_grad():
        assert torch.equal(got["logits"], model(x))
        features = model.features(model.normalize(x))  # type: ignore[operator]
    assert torch.equal(got["penultimate"], features.flatten(1))
    # the int8 deployment's graph: the logits are those of the model that ships
    images = ArrayDataset(x, torch.arange(12) % 2)
    data = DataBundle("noise", images, images, images, ("a", "b"), (3, 64, 64))
    method = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 1})
    ctx = CompressContext(data=data, seed=0, device=torch.device("cpu"))
    deployment = method.deploy(method.apply(model, ctx), ctx)
    assert deployment is not None and deployment.graph is not None
    int8 = capture(deployment.graph, x, ["penultimate", "logits"])
    with torch.no_grad():
        assert torch.equal(int8["logits"], deployment.model(x))
    assert int8["penultimate"].shape == got["penultimate"].shape


# ---------------------------------------------------------------- the probe


def _probe_run(model: nn.Module, data: DataBundle, **params: Any) -> ProbeResult:
    base = Variant("baseline", "base-key", model)
    ctx = ProbeContext(data=data, baseline=base, device=torch.device("cpu"), seed=0)
    return PROBES.get("embedding").from_spec("embedding", dict(params)).run(base, ctx)


def test_probe_end_to_end_with_adversarial_inputs(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    params = {"samples": 120, "adversarial": True, "layers": ["penultimate", "last3"], "plot_points": 60}
    res = _probe_run(trained_cnn, digits16, **params)
    clean = {"layer": "penultimate", "inputs": "clean"}
    joint = {"layer": "penultimate", "inputs": "clean+adversarial"}
    assert metric(res, "knn_accuracy_features", **clean) > 0.6  # chance: 0.1
    assert metric(res, "knn_accuracy_embedding", **clean) > 0.6
    assert metric(res, "silhouette_features", **clean) > 0.1
    assert 0.8 < metric(res, "trustworthiness", **clean) <= 1.0
    assert metric(res, "surrogate") == 0.0
    # PGD at eps 0.1 breaks this small model: attacked points leave their class's region
    assert metric(res, "adversarial_accuracy") < 0.5
    assert metric(res, "adversarial_knn_accuracy_features", **joint) < metric(
        res, "knn_accuracy_features", **clean
    )
    assert metric(res, "knn_accuracy_features", **joint) < metric(res, "knn_accuracy_features", **clean)
    # penultimate and last3[2] are the same features
    assert metric(res, "silhouette", layer="last3[2]", inputs="clean") == metric(res, "silhouette", **clean)

    rows = res.tables["tsne"]
    layers = {r["layer"] for r in rows}
    assert layers == {"penultimate", "last3[2]", "last3[3]"}
    pen = [r for r in rows if r["layer"] == "penultimate"]
    assert len(pen) == 60 and sum(r["adversarial"] for r in pen) == 30
    assert {r["inputs"] for r in pen} == {"clean+adversarial"}
    assert {r["label"] for r in pen} <= set(digits16.classes)
    assert all(np.isfinite([r["x"], r["y"]]).all() for r in pen)
    clean_idx = sorted(r["index"] for r in pen if not r["adversarial"])
    assert clean_idx == sorted(r["index"] for r in pen if r["adversarial"])
    assert res.tables["notes"] == [
        {"layer": "last3[1]", "note": "baseline: skipped (StudentCNN has 1 linear layer(s): no last3[1])"}
    ]

    again = _probe_run(trained_cnn, digits16, **params)
    assert [(m.name, m.params, m.value) for m in again.metrics] == [
        (m.name, m.params, m.value) for m in res.metrics
    ]
    assert again.tables == res.tables


def test_probe_rejects_unknown_layers_and_skips_missing_ones(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    with pytest.raises(ProbeError, match="unknown layer 'nope'"):
        _probe_run(trained_cnn, digits16, samples=20, layers=["nope"])
    # a module the baseline has but a variant lacks is skipped for that variant, with a note
    base = Variant("baseline", "base-key", trained_cnn)
    other = copy.deepcopy(trained_cnn)
    other.features = nn.Sequential(*list(other.features)[:3])  # type: ignore[arg-type,index]
    variant = Variant("cut", "cut-key", other, parent="base-key")
    ctx = ProbeContext(data=digits16, baseline=base, device=torch.device("cpu"), seed=0)
    probe = PROBES.get("embedding").from_spec(
        "embedding", {"samples": 20, "layers": ["features.3", "logits"]}
    )
    res = probe.run(variant, ctx)
    assert res.tables["notes"] == [
        {"layer": "features.3", "note": "cut: skipped (StudentCNN has no module 'features.3')"}
    ]
    assert {m.params.get("layer") for m in res.metrics} == {None, "logits"}
    rows = res.tables["tsne"]
    assert len(rows) == 20 and not any(r["adversarial"] for r in rows)
