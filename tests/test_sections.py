"""The probes' own report sections (:mod:`compaudit.probes.views`) and the report's one hook.

The five paper-style sections (adversarial, shift, classes, explain, embedding) used to be
renderers in ``compaudit/report/sections.py`` keyed by probe-name strings; they moved into the
probes' views. ``tests/data/sections_before_move.json`` holds what the OLD renderers produced for
the hand-built records and tables below (``report.sections.render_section`` at the commit before
the move, run once while this test was written: a snapshot that guards the move, not a golden file
to regenerate). Each view must render the same titles, columns, cells (text, value, highlight,
images), notes and figure data from the same data, now read with the records' identity columns.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from compaudit.elements import (
    MEASURED_COLUMN,
    Cell,
    Section,
    SectionData,
    Table,
    device_table,
    generic_section,
)
from compaudit.probes.views import adversarial, classes, embedding, explain, shift
from compaudit.records import MetricRecord
from compaudit.results import MetricSpec

SNAPSHOT = Path(__file__).parent / "data" / "sections_before_move.json"
VIEWS_DIR = Path(__file__).parents[1] / "src" / "compaudit" / "probes" / "views"

#: each probe's section function: its view, or the generic section
VIEWS: dict[str, Callable[[SectionData], Section]] = {
    "accuracy": generic_section,
    "adversarial": adversarial.section,
    "shift": shift.section,
    "classes": classes.section,
    "explain": explain.section,
    "embedding": embedding.section,
}

# ---------------------------------------------------------------- the hand-built data
# records and tables in the shapes the probes' ``_measure`` produce (params, table columns)

#: a thumbnail or map as the probes store it (a data URI); its content does not matter here
IMG = "data:image/png;base64,iVBORw0KGgo="


def _rec(
    variant: str, probe: str, metric: str, value: float | None, unit: str, **params: Any
) -> dict[str, Any]:
    """One metric record in the shape the store's ``metric_rows`` gives (params between value and unit)."""
    return {
        "variant": variant,
        "probe": probe,
        "metric": metric,
        "value": value,
        **params,
        "unit": unit,
        "noisy": False,
    }


def _accuracy_case() -> dict[str, Any]:
    variants = ["baseline", "int8", "prune50"]
    recs = []
    for i, v in enumerate(variants):
        recs.append(_rec(v, "accuracy", "accuracy", 0.9 - 0.05 * i, "fraction", split="test"))
        recs.append(_rec(v, "accuracy", "loss", 0.3 + 0.1 * i, "nats", split="test"))
    tables = {
        "baseline": {"measured_on": [{"what": "outputs", "device": "cpu"}]},
        "int8": {
            "measured_on": [{"what": "outputs", "device": "cpu"}, {"what": "latency", "device": "cuda:0"}]
        },
    }
    units = {"accuracy": "fraction", "loss": "nats"}
    return {"probe": "accuracy", "records": recs, "tables": tables, "variants": variants, "units": units}


def _adversarial_case() -> dict[str, Any]:
    variants = ["baseline", "int8", "prune50"]
    routes = {"baseline": ["white-box"], "int8": ["naive", "bpda", "worst"], "prune50": ["white-box"]}
    recs = []
    for i, v in enumerate(variants):
        recs.append(_rec(v, "adversarial", "clean_accuracy", 0.9 - 0.02 * i, "fraction", samples=64))
        for attack, strengths in (("pgd", (0.01, 0.03)), ("fgsm", (0.03,))):
            for j, eps in enumerate(strengths):
                for k, route in enumerate(routes[v]):
                    tags = {"attack": attack, "eps": eps, "route": route}
                    acc = round(0.7 - 0.2 * j - 0.1 * i + 0.05 * k, 6)
                    recs.append(_rec(v, "adversarial", "robust_accuracy", acc, "fraction", **tags))
                    recs.append(_rec(v, "adversarial", "success_rate", round(1 - acc, 6), "fraction", **tags))
        recs.append(_rec(v, "adversarial", "average_adversarial_accuracy", 0.4 - 0.1 * i, "fraction"))
        recs.append(_rec(v, "adversarial", "gradient_masking", float(v == "int8"), "flag"))
    # a sanity route never enters the curves
    recs.append(
        _rec(
            "int8",
            "adversarial",
            "robust_accuracy",
            0.0,
            "fraction",
            attack="pgd",
            eps=0.03,
            route="naive (unbounded)",
        )
    )
    checks = [
        {
            "variant": "int8",
            "check": "transfer beats naive",
            "verdict": "gradient masking",
            "route": "naive",
            "attack": "pgd",
            "eps": 0.03,
            "value": 0.6,
            "reference": 0.2,
            "margin": 0.05,
            "unit": "fraction",
            "passed": True,
            "detail": "transfer 20% < naive 60%",
        },
        {
            "variant": "int8",
            "check": "unbounded reaches 0",
            "verdict": "weak attack",
            "route": "bpda",
            "attack": "pgd",
            "eps": 0.03,
            "value": 0.1,
            "reference": 0.0,
            "margin": 0.05,
            "unit": "fraction",
            "passed": False,
            "detail": "10% left at eps=inf",
        },
    ]
    tables = {
        "baseline": {
            "measured_on": [
                {"what": "outputs", "device": "cpu"},
                {"what": "attack (white-box)", "device": "cpu"},
            ]
        },
        "int8": {
            "measured_on": [
                {"what": "outputs", "device": "cpu"},
                {"what": "attack (bpda)", "device": "cuda:0"},
            ],
            "masking_checks": checks,
        },
    }
    units = {
        "clean_accuracy": "fraction",
        "robust_accuracy": "fraction",
        "success_rate": "fraction",
        "average_adversarial_accuracy": "fraction",
        "gradient_masking": "flag",
    }
    return {"probe": "adversarial", "records": recs, "tables": tables, "variants": variants, "units": units}


_SHIFT_UNITS = {
    "source_accuracy": "fraction",
    "target_accuracy": "fraction",
    "target_accuracy_delta": "pp",
    "shift_gap": "pp",
    "mean_target_accuracy": "fraction",
    "mean_target_accuracy_delta": "pp",
    "clean_accuracy": "fraction",
    "corruption_accuracy": "fraction",
    "severity_accuracy": "fraction",
    "corruption_mean_accuracy": "fraction",
    "corruption_error": "ratio",
    "relative_corruption_error": "ratio",
    "mean_corruption_accuracy": "fraction",
    "mce": "ratio",
    "relative_mce": "ratio",
}


def _shift_records(
    label: str, i: int, source: str, targets: list[str], corruptions: bool
) -> list[dict[str, Any]]:
    recs = [_rec(label, "shift", "source_accuracy", 0.95 - 0.03 * i, "fraction", split="val", source=source)]
    accs = []
    for j, t in enumerate(targets):
        acc = round(0.6 - 0.04 * i - 0.1 * j, 6)
        accs.append(acc)
        recs.append(_rec(label, "shift", "target_accuracy", acc, "fraction", domain=t))
        recs.append(_rec(label, "shift", "shift_gap", round(0.95 - 0.03 * i - acc, 6), "pp", domain=t))
        if i:
            recs.append(_rec(label, "shift", "target_accuracy_delta", round(-0.04 * i, 6), "pp", domain=t))
    recs.append(_rec(label, "shift", "mean_target_accuracy", sum(accs) / len(accs), "fraction"))
    if corruptions:
        recs.append(_rec(label, "shift", "clean_accuracy", 0.9 - 0.02 * i, "fraction", samples=100))
        for c in ("gaussian_noise", "motion_blur"):
            for s in (1, 2):
                recs.append(
                    _rec(
                        label,
                        "shift",
                        "corruption_accuracy",
                        0.8 - 0.1 * s - 0.03 * i,
                        "fraction",
                        corruption=c,
                        severity=s,
                    )
                )
        for s in (1, 2):
            recs.append(
                _rec(label, "shift", "severity_accuracy", 0.8 - 0.1 * s - 0.03 * i, "fraction", severity=s)
            )
        for k, c in enumerate(("gaussian_noise", "motion_blur")):
            recs.append(
                _rec(
                    label,
                    "shift",
                    "corruption_mean_accuracy",
                    0.65 - 0.03 * i - 0.01 * k,
                    "fraction",
                    corruption=c,
                )
            )
            recs.append(_rec(label, "shift", "corruption_error", 1.0 + 0.1 * i, "ratio", corruption=c))
        recs.append(_rec(label, "shift", "mean_corruption_accuracy", 0.65 - 0.03 * i, "fraction"))
        recs.append(_rec(label, "shift", "mce", 1.0 + 0.1 * i, "ratio"))
        recs.append(_rec(label, "shift", "relative_mce", 1.0 + 0.2 * i, "ratio"))
    return recs


def _shift_case() -> dict[str, Any]:
    """One source (``digits``), two target domains and two corruptions."""
    variants = ["baseline", "int8", "prune50"]
    recs = [
        r
        for i, v in enumerate(variants)
        for r in _shift_records(v, i, "digits", ["styled", "inverted"], True)
    ]
    tables = {v: {"measured_on": [{"what": "outputs", "device": "cpu"}]} for v in variants}
    ids = {v: ("", None, v) for v in variants}
    return {
        "probe": "shift",
        "records": recs,
        "tables": tables,
        "variants": variants,
        "units": _SHIFT_UNITS,
        "ids": ids,
    }


def _shift_sources_case() -> dict[str, Any]:
    """Two sources, each with its own targets; ``webcam/prune50`` is missing (a hole in the table)."""
    targets = {"amazon": ["webcam", "dslr"], "webcam": ["amazon"]}
    names = ["baseline", "int8", "prune50"]
    variants = [f"{s}/{n}" for s in targets for n in names if f"{s}/{n}" != "webcam/prune50"]
    recs = [
        r
        for v in variants
        for r in _shift_records(
            v, names.index(v.split("/")[1]), v.split("/")[0], targets[v.split("/")[0]], False
        )
    ]
    ids = {v: (v.split("/")[0], None, v.split("/")[1]) for v in variants}
    return {
        "probe": "shift",
        "records": recs,
        "tables": {},
        "variants": variants,
        "units": _SHIFT_UNITS,
        "ids": ids,
    }


def _shift_seeds_case() -> dict[str, Any]:
    """Two sources under two seeds: labels ``SOURCE/seedN/NAME``."""
    targets = {"amazon": ["webcam"], "webcam": ["amazon"]}
    variants = [f"{s}/seed{k}/{n}" for s in targets for k in (0, 1) for n in ("baseline", "int8")]
    recs = []
    for v in variants:
        s, seed, n = v.split("/")
        recs += _shift_records(v, ("baseline", "int8").index(n) + int(seed[-1]), s, targets[s], False)
    ids = {v: (v.split("/")[0], int(v.split("/")[1][-1]), v.split("/")[2]) for v in variants}
    return {
        "probe": "shift",
        "records": recs,
        "tables": {},
        "variants": variants,
        "units": _SHIFT_UNITS,
        "ids": ids,
    }


_CLASSES_UNITS = {
    "accuracy": "fraction",
    "class_accuracy": "fraction",
    "mean_confidence": "fraction",
    "mean_confidence_flipped": "fraction",
    "ece": "fraction",
    "nll": "nats",
    "accuracy_delta": "pp",
    "class_accuracy_delta": "pp",
    "max_class_drop": "pp",
    "flip_rate": "fraction",
    "flips_correct_to_wrong": "fraction",
    "flips_wrong_to_correct": "fraction",
    "mcnemar_p": "p-value",
    "accuracy_delta_ci_low": "pp",
    "accuracy_delta_ci_high": "pp",
}


def _classes_case() -> dict[str, Any]:
    variants = ["baseline", "int8", "prune50"]
    classes = ["0", "1", "cat"]
    recs = []
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i, v in enumerate(variants):
        sp = {"split": "test"}
        recs.append(_rec(v, "classes", "accuracy", 0.9 - 0.04 * i, "fraction", **sp))
        for j, c in enumerate(classes):
            recs.append(
                _rec(
                    v,
                    "classes",
                    "class_accuracy",
                    0.9 - 0.04 * i - 0.02 * j,
                    "fraction",
                    **sp,
                    **{"class": c},
                )
            )
        recs.append(_rec(v, "classes", "mean_confidence", 0.85 - 0.01 * i, "fraction", **sp))
        recs.append(_rec(v, "classes", "ece", 0.05 + 0.01 * i, "fraction", **sp))
        recs.append(_rec(v, "classes", "nll", 0.3 + 0.05 * i, "nats", **sp))
        reliability: list[dict[str, Any]] = [
            {
                "model": "variant",
                "bin_low": b / 4,
                "bin_high": (b + 1) / 4,
                "count": 0 if b == 0 else 10 * b,
                "accuracy": None if b == 0 else 0.2 * b + 0.01 * i,
                "confidence": None if b == 0 else 0.22 * b,
            }
            for b in range(4)
        ]
        if i == 0:
            tables[v] = {
                "confusion": [
                    {"true": t, "predicted": t, "count": 10, "baseline": 10, "delta": 0} for t in classes
                ],
                "reliability": reliability,
            }
            continue
        recs.append(_rec(v, "classes", "accuracy_delta", -0.04 * i, "pp", **sp))
        for j, c in enumerate(classes):
            recs.append(
                _rec(
                    v,
                    "classes",
                    "class_accuracy_delta",
                    -0.04 * i - 0.02 * j + 0.03,
                    "pp",
                    **sp,
                    **{"class": c},
                )
            )
        recs.append(_rec(v, "classes", "max_class_drop", -0.04 * i - 0.01, "pp", **sp))
        recs.append(_rec(v, "classes", "flip_rate", 0.05 * i, "fraction", **sp))
        recs.append(_rec(v, "classes", "flips_correct_to_wrong", 0.04 * i, "fraction", **sp))
        recs.append(_rec(v, "classes", "flips_wrong_to_correct", 0.01 * i, "fraction", **sp))
        recs.append(_rec(v, "classes", "mcnemar_p", 0.2 / i, "p-value", **sp))
        recs.append(_rec(v, "classes", "mean_confidence_flipped", 0.6, "fraction", **sp))
        if i == 1:
            recs.append(_rec(v, "classes", "accuracy_delta_ci_low", -0.06, "pp", **sp, level=0.95))
            recs.append(_rec(v, "classes", "accuracy_delta_ci_high", -0.02, "pp", **sp, level=0.95))
        confusion = [
            {"true": "0", "predicted": "0", "count": 10 - i, "baseline": 10, "delta": -i},
            {"true": "0", "predicted": "cat", "count": i, "baseline": 0, "delta": i},
            {"true": "1", "predicted": "1", "count": 10, "baseline": 10, "delta": 0},
            {"true": "cat", "predicted": "cat", "count": 10, "baseline": 10, "delta": 0},
        ]
        baseline_bins = [
            {**r, "model": "baseline", "accuracy": r["accuracy"] and 0.2 * (r["count"] // 10)}
            for r in reliability
        ]
        exemplars = [
            {
                "kind": "correct_to_wrong",
                "index": 3 + i,
                "label": "0",
                "baseline_prediction": "0",
                "variant_prediction": "cat",
                "baseline_confidence": 0.91,
                "variant_confidence": 0.55,
                "confidence_change": -0.36,
                "thumbnail": IMG,
            },
            {
                "kind": "confidence_drop",
                "index": 7,
                "label": "1",
                "baseline_prediction": "1",
                "variant_prediction": "1",
                "baseline_confidence": 0.99,
                "variant_confidence": 0.61,
                "confidence_change": -0.38,
                "thumbnail": "",
            },
        ]
        tables[v] = {
            "confusion": confusion,
            "reliability": reliability + baseline_bins,
            "exemplars": exemplars,
        }
    return {
        "probe": "classes",
        "records": recs,
        "tables": tables,
        "variants": variants,
        "units": _CLASSES_UNITS,
    }


_EXPLAIN_UNITS = {
    "surrogate": "flag",
    "average_drop": "fraction",
    "increase_in_confidence": "fraction",
    "coherency": "fraction",
    "coherency_ssim": "score",
    "complexity": "fraction",
    "adcc": "fraction",
    "saliency_mad": "fraction",
    "saliency_spearman": "score",
    "saliency_topk_iou": "fraction",
}


def _explain_case() -> dict[str, Any]:
    variants = ["baseline", "int8", "prune50"]
    recs = []
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i, v in enumerate(variants):
        recs.append(_rec(v, "explain", "surrogate", float(v == "int8"), "flag"))
        for k, m in enumerate(("gradcam", "cam")):
            if v == "prune50" and m == "cam":
                continue
            p = {"method": m, "layer": "features.3"}
            recs.append(_rec(v, "explain", "average_drop", 0.3 + 0.05 * i + 0.01 * k, "fraction", **p))
            recs.append(_rec(v, "explain", "increase_in_confidence", 0.1 - 0.02 * i, "fraction", **p))
            recs.append(_rec(v, "explain", "coherency", 0.8 - 0.05 * i, "fraction", **p))
            recs.append(_rec(v, "explain", "complexity", 0.2 + 0.01 * i, "fraction", **p))
            recs.append(_rec(v, "explain", "adcc", 0.7 - 0.04 * i - 0.01 * k, "fraction", **p))
            if i:
                recs.append(_rec(v, "explain", "saliency_mad", 0.05 * i, "fraction", method=m))
                recs.append(_rec(v, "explain", "saliency_spearman", 0.9 - 0.1 * i, "score", method=m))
                recs.append(
                    _rec(v, "explain", "saliency_topk_iou", 0.8 - 0.1 * i, "fraction", method=m, k=10)
                )
        grid = [
            {
                "method": m,
                "index": idx,
                "label": lab,
                "image": f"{IMG}#{idx}",
                "overlay": f"{IMG}#{v}-{m}-{idx}",
                "layer": "features.3" if v != "int8" else "features.3 (surrogate)",
            }
            for m in ("gradcam", "cam")
            for idx, lab in ((4, "7"), (9, "cat"))
            if not (v == "prune50" and (m == "cam" or idx == 9))
        ]
        notes = [{"method": "cam", "note": "cam needs a GAP head"}] if v == "prune50" else []
        if v == "int8":
            notes.append({"method": "all", "note": "maps from the fake-quant surrogate"})
        tables[v] = {"grid": grid, "notes": notes, "measured_on": [{"what": "outputs", "device": "cpu"}]}
    return {
        "probe": "explain",
        "records": recs,
        "tables": tables,
        "variants": variants,
        "units": _EXPLAIN_UNITS,
    }


_EMBEDDING_UNITS = {
    "surrogate": "flag",
    "adversarial_accuracy": "fraction",
    "silhouette": "score",
    "silhouette_features": "score",
    "knn_accuracy_embedding": "fraction",
    "knn_accuracy_features": "fraction",
    "trustworthiness": "score",
    "adversarial_knn_accuracy_features": "fraction",
}


def _embedding_case() -> dict[str, Any]:
    variants = ["baseline", "int8", "prune50"]
    recs = []
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i, v in enumerate(variants):
        recs.append(_rec(v, "embedding", "surrogate", float(v == "int8"), "flag"))
        recs.append(
            _rec(v, "embedding", "adversarial_accuracy", 0.3 - 0.05 * i, "fraction", attack="pgd", eps=0.03)
        )
        for layer in ("penultimate", "features.3"):
            for inputs in ("clean", "adversarial"):
                p = {"layer": layer, "inputs": inputs}
                recs.append(_rec(v, "embedding", "silhouette", 0.4 - 0.05 * i, "score", **p))
                recs.append(_rec(v, "embedding", "silhouette_features", 0.3 - 0.04 * i, "score", **p))
                recs.append(_rec(v, "embedding", "knn_accuracy_embedding", 0.9 - 0.03 * i, "fraction", **p))
                recs.append(_rec(v, "embedding", "knn_accuracy_features", 0.92 - 0.02 * i, "fraction", **p))
                if inputs == "clean":
                    recs.append(_rec(v, "embedding", "trustworthiness", 0.95 - 0.01 * i, "score", **p))
                else:
                    recs.append(
                        _rec(
                            v,
                            "embedding",
                            "adversarial_knn_accuracy_features",
                            0.5 - 0.1 * i,
                            "fraction",
                            **p,
                        )
                    )
        tsne = [
            {
                "layer": layer,
                "inputs": "clean+adversarial",
                "index": k,
                "x": round(1.5 * k - i, 3),
                "y": round(0.5 * k + i, 3),
                "label": lab,
                "adversarial": adv,
            }
            for layer in ("penultimate", "features.3")
            for k, lab in enumerate(("0", "1", "10", "2"))
            for adv in (False, True)
        ]
        tables[v] = {
            "tsne": tsne,
            "notes": [],
            "measured_on": [{"what": "outputs", "device": "cpu"}, {"what": "features", "device": "cpu"}],
        }
    return {
        "probe": "embedding",
        "records": recs,
        "tables": tables,
        "variants": variants,
        "units": _EMBEDDING_UNITS,
    }


#: every case: name -> builder; each builds the records and tables of one probe's section
CASES = {
    "accuracy": _accuracy_case,
    "adversarial": _adversarial_case,
    "shift": _shift_case,
    "shift_sources": _shift_sources_case,
    "shift_seeds": _shift_seeds_case,
    "classes": _classes_case,
    "explain": _explain_case,
    "embedding": _embedding_case,
}


# ---------------------------------------------------------------- helpers


def _with_identity(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The case's records as the store's flat rows give them now (:meth:`MetricRecord.to_row`): with
    the identity columns ``variant_source``, ``variant_seed`` and ``variant_name``."""
    ids: dict[str, tuple[str, int | None, str]] = case.get("ids", {})
    fixed = ("variant", "probe", "metric", "value", "unit", "noisy")
    out = []
    for r in case["records"]:
        source, seed, name = ids.get(r["variant"], ("", None, r["variant"]))
        params = {k: v for k, v in r.items() if k not in fixed}
        rec = MetricRecord(r["variant"], r["probe"], r["metric"], r["value"], r["unit"], r["noisy"], params)
        out.append(dataclasses.replace(rec, source=source, seed=seed, name=name).to_row())
    return out


def _data(case: dict[str, Any], records: list[dict[str, Any]], doc: str) -> SectionData:
    specs = {m: MetricSpec(m, unit) for m, unit in case["units"].items()}
    return SectionData(case["probe"], records, case["tables"], case["variants"], specs, doc)


def _on_page(section: Section, data: SectionData) -> Section:
    """What the report adds to every section (:func:`compaudit.report.sections.render_section`):
    the devices, unless a table has them."""
    if not any(MEASURED_COLUMN in t.columns for t in section.tables):
        section.add(device_table(data))
    return section


def _dump(section: Section) -> dict[str, Any]:
    """Everything of a section that reaches the HTML page, as JSON-like data (a figure's PNG only
    as "is a PNG": its pixels depend on the matplotlib build)."""
    blocks: list[dict[str, Any]] = []
    for b in section.blocks:
        if isinstance(b, Table):
            rows = [
                [[c.text, c.value, c.cls, c.image, [list(g) for g in c.gallery]] for c in r] for r in b.rows
            ]
            blocks.append(
                {"kind": "table", "title": b.title, "columns": b.columns, "note": b.note, "rows": rows}
            )
        else:
            png = b.uri.startswith("data:image/png;base64,")
            blocks.append({"kind": "figure", "title": b.title, "csv": b.csv, "png": png})
    return {"title": section.title, "note": section.note, "blocks": blocks}


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    return snapshot


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("name", list(CASES))
def test_view_renders_what_the_report_rendered_before_the_move(name: str, before: dict[str, Any]) -> None:
    case = CASES[name]()
    expected = before[name]
    data = _data(case, _with_identity(case), expected["doc"])
    got = _dump(_on_page(VIEWS[case["probe"]](data), data))
    assert [b["title"] for b in got["blocks"]] == [b["title"] for b in expected["section"]["blocks"]]
    assert got == expected["section"]


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("shift_sources", "shift_seeds")])
def test_records_stored_before_identity_columns_render_the_same(name: str, before: dict[str, Any]) -> None:
    """A single-source run's records without ``source``/``seed``/``name`` (an older store): each
    label is a name, and the sections are unchanged."""
    case = CASES[name]()
    data = _data(case, case["records"], before[name]["doc"])
    assert _dump(_on_page(VIEWS[case["probe"]](data), data)) == before[name]["section"]


def test_domain_table_groups_by_identity_not_by_label() -> None:
    """A variant whose name has a "/" (``int8/v2`` trained on amazon: label ``amazon/int8/v2``)
    is one row of the amazon columns; splitting the label would have made ``amazon/int8`` a source."""
    ids = {"amazon/baseline": ("amazon", None, "baseline"), "amazon/int8/v2": ("amazon", None, "int8/v2")}
    variants = list(ids)
    records = [r for i, v in enumerate(variants) for r in _shift_records(v, i, "amazon", ["webcam"], False)]
    case = {
        "probe": "shift",
        "records": records,
        "tables": {},
        "variants": variants,
        "units": _SHIFT_UNITS,
        "ids": ids,
    }
    table = shift.section(_data(case, _with_identity(case), "")).tables[0]
    assert table.columns == ["Variant", "amazon (val)", "amazon → webcam", "Mean target acc"]
    assert [[c.text for c in r] for r in table.rows] == [
        ["baseline", "95.0%", "60.0%", "60.0%"],
        ["int8/v2", "92.0%", "56.0% (-4.0 pp)", "56.0%"],
    ]


def test_units_come_from_the_declarations() -> None:
    """A view formats a value from the probe's declared unit, even where a stored record has none
    (results stored before units were declared)."""
    case = CASES["shift"]()
    records = [{**r, "unit": ""} for r in _with_identity(case)]
    table = shift.section(_data(case, records, "")).tables[0]
    assert table.rows[0][1].text == "95.0%"
    undeclared = SectionData("shift", records, {}, case["variants"])
    assert shift.section(undeclared).tables[0].rows[0][1].text != "95.0%"


def test_views_import_only_from_below_the_report() -> None:
    """The views are in the probes layer: no report, store or run import, and no other probe's
    module (import-linter checks the packages; this names the file)."""
    allowed = (
        "compaudit.elements",
        "compaudit.imaging",
        "compaudit.units",
        "compaudit.results",
        "compaudit.stats",
    )
    for path in sorted(VIEWS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = (
                    [node.module]
                    if node.module != "compaudit"
                    else [f"compaudit.{a.name}" for a in node.names]
                )
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for mod in names:
                if mod.startswith("compaudit"):
                    assert mod in allowed, f"{path.name} imports {mod}"


def test_render_section_asks_the_probe_and_adds_the_devices() -> None:
    """The report core calls the registered probe's ``section`` hook; a probe not registered gets
    the generic section; both get the device table when no table says where numbers came from."""
    from compaudit.probes import PROBES, Probe, ProbeContext, ProbeParams, ProbeResult
    from compaudit.report.sections import render_section
    from compaudit.variant import Variant

    class Own(Probe[ProbeParams]):
        """A probe whose section is its own."""

        metrics: ClassVar[tuple[MetricSpec, ...]] = (MetricSpec("score", "fraction", better="high"),)

        @classmethod
        def section(cls, data: SectionData) -> Section:
            out = Section("Own section", note=data.doc)
            out.add(Table("Own table", ["Variant"], [[Cell(v)] for v in data.variants]))
            return out

        def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
            raise NotImplementedError

    records = [
        {
            "variant": v,
            "probe": "own_test_probe",
            "metric": "score",
            "value": 0.5,
            "unit": "fraction",
            "noisy": False,
        }
        for v in ("baseline", "int8")
    ]
    tables = {"int8": {"measured_on": [{"what": "outputs", "device": "cpu"}]}}
    data = SectionData("own_test_probe", records, tables, ["baseline", "int8"], Own.specs(), "mine")
    with PROBES.temporary("own_test_probe", Own):
        own = render_section(data)
    assert own.title == "Own section" and own.note == "mine"
    assert [t.title for t in own.tables] == ["Own table", "Where the numbers were measured"]
    assert [[c.text for c in r] for r in own.tables[1].rows] == [["int8", "cpu"]]
    # unregistered: the generic section, whose table has the devices as a column
    generic = render_section(data)
    assert generic.title == "Probe: own_test_probe"
    assert [t.title for t in generic.tables] == ["All metrics"]
    assert generic.tables[0].columns == ["Variant", MEASURED_COLUMN, "score"]


@pytest.mark.parametrize("name", list(CASES))
def test_builtin_probes_render_their_views_through_the_hook(name: str, before: dict[str, Any]) -> None:
    """End to end: ``render_section`` of each built-in probe gives the section it gave before the
    move, through the probe class's ``section`` attribute alone."""
    from compaudit.probes import PROBES
    from compaudit.report.sections import render_section

    case = CASES[name]()
    cls = PROBES.get(case["probe"])
    data = SectionData(
        case["probe"],
        _with_identity(case),
        case["tables"],
        case["variants"],
        cls.specs(),
        PROBES.doc(case["probe"]),
    )
    got = _dump(render_section(data))
    assert got["title"] == before[name]["section"]["title"]
    assert got["blocks"] == before[name]["section"]["blocks"]
