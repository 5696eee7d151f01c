"""The classes probe on a hand-built case whose every count is known, and on the trained digits model."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from compaudit.compress import METHODS, CompressContext, make_permanent
from compaudit.data import DataBundle
from compaudit.data.base import ArrayDataset
from compaudit.imaging import to_png_data_uri
from compaudit.probes import PROBES, Probe, ProbeContext, ProbeResult
from compaudit.results import Role
from compaudit.stats import expected_calibration_error, mcnemar
from compaudit.variant import Variant


def probe(**params: object) -> Probe:
    return PROBES.get("classes").from_spec("classes", dict(params))


def metric(res: ProbeResult, name: str, **params: object) -> float:
    found = [
        m.value
        for m in res.metrics
        if m.name == name and all(m.params.get(k) == v for k, v in params.items())
    ]
    assert len(found) == 1, (name, params, found)
    return found[0]


def cls(name: str) -> dict[str, Any]:
    return {"class": name}


def child(name: str, model: nn.Module) -> Variant:
    return Variant(name, f"{name}-key", model, lineage=[{"method": "test", "params": {}}], parent="base-key")


# ---------------------------------------------------------------- a hand-built case


class StoredLogits(nn.Module):
    """Returns the stored logits of the sample whose index is encoded in the first pixel (index / N)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits.clone())
        self.drop = nn.Dropout(0.5)  # would scramble the output if the probe left it in train mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.table.shape[0]
        idx = torch.round(x[:, 0, 0, 0] * n).long()
        return self.drop(self.table[idx])


CLASSES = ("a", "b", "c", "d")
LABELS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
BASE_PRED = [0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 1, 0, 3, 3]
VAR_PRED = [0, 0, 2, 1, 1, 1, 1, 2, 2, 0, 2, 1, 3, 3]
# probability of the predicted class of each sample, and (when wrong) of the true class
BASE_Q = [0.9, 0.8, 0.5, 0.6, 0.9, 0.9, 0.7, 0.5, 0.9, 0.85, 0.55, 0.6, 0.99, 0.9]
VAR_Q = [0.9, 0.7, 0.95, 0.5, 0.9, 0.8, 0.7, 0.7, 0.9, 0.45, 0.65, 0.5, 0.99, 0.6]
BASE_TRUE_IF_WRONG = {3: 0.3, 7: 0.2, 10: 0.3, 11: 0.1}
VAR_TRUE_IF_WRONG = {2: 0.03, 3: 0.2, 7: 0.1, 9: 0.1, 11: 0.4}


def probabilities(pred: list[int], q: list[float], true_if_wrong: dict[int, float]) -> np.ndarray:
    """(N, 4) probabilities: q on the predicted class, the true class's share when it differs, the
    rest spread evenly over the other classes."""
    out = np.zeros((len(pred), len(CLASSES)))
    for i, (y, p) in enumerate(zip(LABELS, pred, strict=True)):
        out[i, p] = q[i]
        fixed = {p}
        if y != p:
            out[i, y] = true_if_wrong[i]
            fixed.add(y)
        rest = [c for c in range(len(CLASSES)) if c not in fixed]
        out[i, rest] = (1.0 - out[i].sum()) / len(rest)
    assert (out.argmax(1) == np.array(pred)).all()
    return out


@pytest.fixture
def hand() -> dict[str, Any]:
    n = len(LABELS)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    x[:, 0, 0, 0] = torch.arange(n) / n
    y = torch.tensor(LABELS)
    ds = ArrayDataset(x, y)
    data = DataBundle("hand", ds, ds, ds, CLASSES, (1, 4, 4))
    pb = probabilities(BASE_PRED, BASE_Q, BASE_TRUE_IF_WRONG)
    pv = probabilities(VAR_PRED, VAR_Q, VAR_TRUE_IF_WRONG)
    base = Variant("baseline", "base-key", StoredLogits(torch.tensor(np.log(pb), dtype=torch.float32)))
    variant = child("squeezed", StoredLogits(torch.tensor(np.log(pv), dtype=torch.float32)))
    ctx = ProbeContext(data=data, baseline=base, device=torch.device("cpu"), seed=0)
    return {"ctx": ctx, "base": base, "variant": variant, "pb": pb, "pv": pv, "data": data}


def test_hand_case_accuracy_flips_and_mcnemar(hand: dict[str, Any]) -> None:
    for model in (hand["base"].model, hand["variant"].model):
        model.train()  # the probe must measure in eval mode and give the flag back
    res = probe(bins=5, bootstrap=200).run(hand["variant"], hand["ctx"])
    assert hand["base"].model.training and hand["variant"].model.training
    n = 14
    assert metric(res, "accuracy", split="test") == pytest.approx(9 / n)
    assert metric(res, "accuracy_delta") == pytest.approx(9 / n - 10 / n)
    expected_class = {"a": (2 / 4, -1 / 4), "b": (3 / 4, 0.0), "c": (2 / 4, 0.0), "d": (1.0, 0.0)}
    for name, (acc, delta) in expected_class.items():
        assert metric(res, "class_accuracy", **cls(name)) == pytest.approx(acc)
        assert metric(res, "class_accuracy_delta", **cls(name)) == pytest.approx(delta)
    assert metric(res, "max_class_drop") == pytest.approx(-0.25)
    # flips: 2 (0->2) and 9 (2->0) correct->wrong, 10 (1->2) wrong->correct, 7 and 11 wrong->wrong
    assert metric(res, "flip_rate") == pytest.approx(5 / n)
    assert metric(res, "flips_correct_to_wrong_count") == 2
    assert metric(res, "flips_wrong_to_correct_count") == 1
    assert metric(res, "flips_wrong_to_wrong_count") == 2
    assert metric(res, "flips_correct_to_wrong") == pytest.approx(2 / n)
    assert metric(res, "flips_wrong_to_correct") == pytest.approx(1 / n)
    assert metric(res, "flips_wrong_to_wrong") == pytest.approx(2 / n)
    # McNemar on b01 = 2, b10 = 1: exact, 2 * P(X <= 1 | n=3) = 2 * 4/8 = 1
    assert metric(res, "mcnemar_p") == pytest.approx(1.0)
    assert metric(res, "mcnemar_statistic") == 1.0
    # class a lost 25 pp: warned, and no other class is
    assert len(res.warnings) == 1 and "'a'" in res.warnings[0].text and "25.0 pp" in res.warnings[0].text
    assert res.warnings[0].text.startswith("squeezed:")


def test_hand_case_confidence_and_calibration(hand: dict[str, Any]) -> None:
    res = probe(bins=3, bootstrap=0).run(hand["variant"], hand["ctx"])
    vq, bq = np.array(VAR_Q), np.array(BASE_Q)
    assert metric(res, "mean_confidence") == pytest.approx(vq.mean(), abs=1e-6)
    assert metric(res, "confidence_change") == pytest.approx((vq - bq).mean(), abs=1e-6)
    flipped = [2, 7, 9, 10, 11]
    assert metric(res, "mean_confidence_flipped") == pytest.approx(vq[flipped].mean(), abs=1e-6)
    # bins (0, 1/3] (1/3, 2/3] (2/3, 1] (no confidence near an edge: float32 logits move values a little)
    # middle: 5 samples, 2 right, confidences sum 2.70; top: 9 samples, 7 right, sum 7.54
    assert metric(res, "ece") == pytest.approx((abs(2 - 2.70) + abs(7 - 7.54)) / 14, abs=1e-6)
    correct = np.array(VAR_PRED) == np.array(LABELS)
    assert metric(res, "ece") == pytest.approx(expected_calibration_error(vq, correct, 3), abs=1e-6)
    nll = -np.log(hand["pv"][np.arange(14), LABELS]).mean()
    assert metric(res, "nll") == pytest.approx(nll, abs=1e-5)
    assert not any(m.name.endswith("_ci_low") for m in res.metrics)  # bootstrap=0: no intervals
    rel = res.tables["reliability"]
    assert {r["model"] for r in rel} == {"variant", "baseline"}
    assert sum(r["count"] for r in rel if r["model"] == "variant") == 14
    assert sum(r["count"] for r in rel if r["model"] == "baseline") == 14


def confusion(res: ProbeResult) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {
        (r["true"], r["predicted"]): (r["count"], r["baseline"], r["delta"]) for r in res.tables["confusion"]
    }


def test_hand_case_confusion_table(hand: dict[str, Any]) -> None:
    res = probe(bootstrap=0).run(hand["variant"], hand["ctx"])
    rows = confusion(res)
    assert rows == {
        ("a", "a"): (2, 3, -1),
        ("a", "b"): (1, 1, 0),
        ("a", "c"): (1, 0, 1),
        ("b", "a"): (0, 1, -1),
        ("b", "b"): (3, 3, 0),
        ("b", "c"): (1, 0, 1),
        ("c", "a"): (1, 1, 0),
        ("c", "b"): (1, 1, 0),
        ("c", "c"): (2, 2, 0),
        ("d", "d"): (2, 2, 0),
    }  # the six pairs zero in both models have no row
    base = probe(bootstrap=0).run(hand["base"], hand["ctx"])
    brow = confusion(base)
    assert brow[("a", "a")] == (3, 3, 0) and brow[("b", "a")] == (1, 1, 0) and ("a", "c") not in brow
    assert sum(c for c, _, _ in brow.values()) == 14


def test_hand_case_exemplars(hand: dict[str, Any]) -> None:
    res = probe(bootstrap=0, exemplars=8, thumbnail_scale=3).run(hand["variant"], hand["ctx"])
    rows = res.tables["exemplars"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    conf_b, conf_v = hand["pb"].max(1), hand["pv"].max(1)
    change = conf_v - conf_b
    # correct->wrong: 2 (confidence .5 -> .95 in a wrong class) and 9 (.85 -> .45): largest |change| first
    assert [r["index"] for r in by_kind["correct_to_wrong"]] == [2, 9]
    assert [r["index"] for r in by_kind["wrong_to_correct"]] == [10]
    # unflipped samples whose confidence fell: 1 (-.1), 3 (-.1, wrong in both), 5 (-.1), 13 (-.3)
    drops = [r["index"] for r in by_kind["confidence_drop"]]
    assert drops[0] == 13 and sorted(drops) == [1, 3, 5, 13]
    assert all(VAR_PRED[i] == BASE_PRED[i] for i in drops)
    for r in rows:
        i = r["index"]
        assert r["label"] == CLASSES[LABELS[i]]
        assert r["baseline_prediction"] == CLASSES[BASE_PRED[i]]
        assert r["variant_prediction"] == CLASSES[VAR_PRED[i]]
        assert r["baseline_confidence"] == pytest.approx(conf_b[i], abs=1e-6)
        assert r["variant_confidence"] == pytest.approx(conf_v[i], abs=1e-6)
        assert r["confidence_change"] == pytest.approx(change[i], abs=1e-6)
        img = decode(r["thumbnail"])
        assert img.size == (12, 12) and img.mode == "L"
        assert r["thumbnail"] == to_png_data_uri(hand["data"].test[i][0], scale=3)
    json.dumps(res.tables, allow_nan=False)  # plain JSON

    fewer = probe(bootstrap=0, exemplars=1).run(hand["variant"], hand["ctx"]).tables["exemplars"]
    assert [(r["kind"], r["index"]) for r in fewer] == [
        ("correct_to_wrong", 2),
        ("wrong_to_correct", 10),
        ("confidence_drop", 13),
    ]
    assert probe(bootstrap=0, exemplars=0).run(hand["variant"], hand["ctx"]).tables["exemplars"] == []


def decode(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
    assert img.format == "PNG"
    return img


def test_the_baseline_gets_no_comparison(hand: dict[str, Any]) -> None:
    res = probe().run(hand["base"], hand["ctx"])
    names = {m.name for m in res.metrics}
    assert names == {
        "accuracy",
        "class_accuracy",
        "mean_confidence",
        "mean_confidence_ci_low",
        "mean_confidence_ci_high",
        "ece",
        "nll",
    }
    assert metric(res, "accuracy") == pytest.approx(10 / 14)
    assert metric(res, "class_accuracy", **cls("c")) == pytest.approx(0.5)
    assert set(res.tables) - {"measured_on"} == {"confusion", "reliability"}
    assert {r["model"] for r in res.tables["reliability"]} == {"variant"}
    assert res.warnings == []


def test_a_copy_of_the_baseline_changes_nothing(hand: dict[str, Any]) -> None:
    same = child("copy", copy.deepcopy(hand["base"].model))
    res = probe(bootstrap=100).run(same, hand["ctx"])
    for name in (
        "accuracy_delta",
        "flip_rate",
        "max_class_drop",
        "confidence_change",
        "flips_wrong_to_wrong",
    ):
        assert metric(res, name) == 0.0
    assert metric(res, "mcnemar_p") == 1.0
    assert math.isnan(metric(res, "mean_confidence_flipped"))
    assert (metric(res, "accuracy_delta_ci_low"), metric(res, "accuracy_delta_ci_high")) == (0.0, 0.0)
    assert res.tables["exemplars"] == [] and res.warnings == []
    # with no flip, the confidence on the flipped samples and its interval are NaN, each declared so
    # (an int8 copy of an untrained ImageNet network flips nothing: tests/test_arch_contracts.py)
    specs = PROBES.get("classes").specs()
    nans = {m.name for m in res.metrics if math.isnan(m.value)}
    assert nans == {
        "mean_confidence_flipped",
        "mean_confidence_flipped_ci_low",
        "mean_confidence_flipped_ci_high",
    }
    assert all(specs[name].nan == "no prediction flipped" for name in nans)
    assert all(r["delta"] == 0 for r in res.tables["confusion"])


def test_params_are_validated() -> None:
    from pydantic import ValidationError

    for bad in ({"split": "train"}, {"bootstrap": -1}, {"level": 1.0}, {"bins": 0}, {"nope": 1}):
        with pytest.raises(ValidationError):
            probe(**bad)


# ---------------------------------------------------------------- the trained digits model


def setup(model: nn.Module, data: DataBundle, seed: int = 0) -> tuple[Variant, ProbeContext]:
    base = Variant("baseline", "base-key", model)
    return base, ProbeContext(data=data, baseline=base, device=torch.device("cpu"), seed=seed)


def pruned(model: nn.Module, data: DataBundle, sparsity: float) -> nn.Module:
    method = METHODS.get("prune_unstructured").from_spec("prune_unstructured", {"sparsity": sparsity})
    ctx = CompressContext(data=data, seed=0, device=torch.device("cpu"))
    return make_permanent(method.apply(model, ctx))


def test_on_the_trained_model_against_a_pruned_copy(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base, ctx = setup(trained_cnn, digits16)
    variant = child("pruned", pruned(trained_cnn, digits16, 0.7))
    for model in (base.model, variant.model):
        model.train()
        model.features[1].eval()
    flags = [[m.training for m in v.model.modules()] for v in (base, variant)]
    states = [{k: t.clone() for k, t in v.model.state_dict().items()} for v in (base, variant)]

    res = probe(split="test", bootstrap=300, exemplars=4).run(variant, ctx)

    assert [[m.training for m in v.model.modules()] for v in (base, variant)] == flags
    for v, state in zip((base, variant), states, strict=True):
        assert all(torch.equal(v.model.state_dict()[k], state[k]) for k in state)

    test = digits16.test
    y = test.y  # type: ignore[attr-defined]
    n = len(y)
    with torch.no_grad():
        bl = trained_cnn.eval()(test.x)  # type: ignore[attr-defined]
        vl = variant.model.eval()(test.x)  # type: ignore[attr-defined]
    bc, vc = bl.argmax(1) == y, vl.argmax(1) == y
    delta = metric(res, "accuracy_delta")
    assert delta == pytest.approx((vc.double().mean() - bc.double().mean()).item(), abs=1e-9)
    c2w = metric(res, "flips_correct_to_wrong_count")
    w2c = metric(res, "flips_wrong_to_correct_count")
    w2w = metric(res, "flips_wrong_to_wrong_count")
    assert c2w + w2c > 0  # 70% pruning changes some predictions
    assert c2w - w2c == pytest.approx(-delta * n)
    assert (c2w + w2c + w2w) / n == pytest.approx(metric(res, "flip_rate"))
    assert metric(res, "flip_rate") == pytest.approx((bl.argmax(1) != vl.argmax(1)).double().mean().item())
    test_p = mcnemar(bc.numpy(), vc.numpy())
    assert metric(res, "mcnemar_p") == pytest.approx(test_p.p_value)

    # class deltas weighted by class size give the overall delta
    sizes = torch.bincount(y, minlength=10).double()
    class_deltas = torch.tensor(  # float64: float32 rounds the deltas by ~1e-8, beyond the 1e-9 checked
        [metric(res, "class_accuracy_delta", **cls(c)) for c in digits16.classes], dtype=torch.float64
    )
    assert (sizes * class_deltas).sum().item() / n == pytest.approx(delta, abs=1e-9)
    assert metric(res, "max_class_drop") == pytest.approx(min(0.0, class_deltas.min().item()))

    lo, hi = (
        metric(res, "accuracy_delta_ci_low", level=0.95),
        metric(res, "accuracy_delta_ci_high", level=0.95),
    )
    assert lo <= delta <= hi and lo < hi
    for c in digits16.classes:
        clo = metric(res, "class_accuracy_delta_ci_low", **cls(c))
        chi = metric(res, "class_accuracy_delta_ci_high", **cls(c))
        assert clo <= metric(res, "class_accuracy_delta", **cls(c)) <= chi

    conf = F.softmax(vl.double(), 1).max(1).values
    assert metric(res, "mean_confidence") == pytest.approx(conf.mean().item(), abs=1e-6)
    assert metric(res, "nll") == pytest.approx(F.cross_entropy(vl, y).item(), rel=1e-5)

    rows = res.tables["exemplars"]
    kinds = {r["kind"] for r in rows}
    assert "correct_to_wrong" in kinds
    assert all(sum(r["kind"] == k for r in rows) <= 4 for k in kinds)
    for r in rows:
        assert decode(r["thumbnail"]).size == (32, 32)  # 16x16 digits at scale 2
        assert r["label"] == digits16.classes[int(y[r["index"]])]
        if r["kind"] == "correct_to_wrong":
            assert r["label"] == r["baseline_prediction"] != r["variant_prediction"]
    assert sum(r["count"] for r in res.tables["confusion"]) == n
    assert sum(r["baseline"] for r in res.tables["confusion"]) == n
    json.dumps(res.tables)


def test_reruns_give_identical_numbers_and_share_the_prediction_cache(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    _, ctx = setup(trained_cnn, digits16, seed=3)
    variant = child("pruned", pruned(trained_cnn, digits16, 0.6))
    ctx.predictions(variant, "test")
    calls = {"n": 0}

    def count(*_: object) -> None:
        calls["n"] += 1

    trained_cnn.register_forward_hook(count)
    variant.model.register_forward_hook(count)
    ctx.predictions(ctx.baseline, "test")
    before = calls["n"]
    first = probe(bootstrap=200).run(variant, ctx)
    assert calls["n"] == before  # never predicts again: the shared cache serves both models
    _, fresh = setup(trained_cnn, digits16, seed=3)
    again = probe(bootstrap=200).run(variant, fresh)
    assert same_metrics(first, again)
    assert first.tables == again.tables
    # another run seed draws other resamples
    _, other = setup(trained_cnn, digits16, seed=4)
    third = probe(bootstrap=200).run(variant, other)
    ci_first = [m.value for m in first.metrics if "_ci_" in m.name]
    ci_third = [m.value for m in third.metrics if "_ci_" in m.name]
    # overall and 10 classes (accuracy delta), mean confidence and on the flipped samples: 2 ends each
    assert len(ci_first) == len(ci_third) == 26 and ci_first != ci_third


def same_metrics(a: ProbeResult, b: ProbeResult) -> bool:
    """Equal names, params and values (NaN equal to NaN)."""

    def key(res: ProbeResult) -> list[tuple[str, str, float | None]]:
        return [
            (m.name, json.dumps(m.params, sort_keys=True), None if math.isnan(m.value) else m.value)
            for m in res.metrics
        ]

    return key(a) == key(b)


def test_val_split_and_summary_columns(trained_cnn: nn.Module, digits16: DataBundle) -> None:
    _, ctx = setup(trained_cnn, digits16)
    variant = child("pruned", pruned(trained_cnn, digits16, 0.5))
    res = probe(split="val", bootstrap=0, exemplars=0).run(variant, ctx)
    assert all(m.params["split"] == "val" for m in res.metrics)
    assert metric(res, "accuracy") == pytest.approx(ctx.predictions(variant, "val").accuracy)
    cols = {d.spec.name for d in PROBES.get("classes").views("classes", Role.SUMMARY)}
    assert cols == {"flip_rate", "max_class_drop", "ece"}
    for c in cols:
        metric(res, c)
    assert PROBES.get("classes").__doc__ and "\n" not in PROBES.get("classes").__doc__.strip()
