"""The shift probe end to end: domain shift (one source, several sources) and common corruptions
on real tiny digits models; the experiment-file checks that go with domains and sources."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from compaudit.config import Experiment
from compaudit.errors import CompauditError, ConfigError
from compaudit.run import run_experiment
from compaudit.run.validate import experiment_from_dict
from compaudit.store import Store
from tests.conftest import tiny_config

DOMAINS = {
    "thick": {"name": "digits", "params": {"style": "thick", "size": 16}, "split": "test"},
    "rotated": {"name": "digits", "params": {"style": "rotated", "size": 16}, "split": "test"},
}
SHIFT = {
    "name": "shift",
    "params": {
        "corruptions": ["gaussian_noise", "contrast", "pixelate"],
        "severities": [1, 3, 5],
        "samples": 120,
    },
}


def rows(out: Path) -> list[dict[str, Any]]:
    with Store(out) as store:
        return store.metric_rows()


def pick(rs: list[dict[str, Any]], variant: str, metric: str, **params: Any) -> float:
    hits = [
        r["value"]
        for r in rs
        if r["variant"] == variant and r["metric"] == metric and all(r.get(k) == v for k, v in params.items())
    ]
    assert len(hits) == 1, (variant, metric, params, len(hits))
    return float(hits[0])


# ---------------------------------------------------------------- the digits domains


def test_digit_styles_are_the_documented_changes() -> None:
    from compaudit import load_dataset

    plain = load_dataset("digits", params={"size": 16}).test.x  # type: ignore[attr-defined]
    styled = {
        s: load_dataset("digits", params={"size": 16, "style": s}).test.x
        for s in ("thick", "thin", "inverted", "rotated")
    }  # type: ignore[attr-defined]
    assert torch.all(styled["thick"] >= plain - 1e-6) and styled["thick"].mean() > plain.mean() + 0.05
    assert torch.all(styled["thin"] <= plain + 1e-6) and styled["thin"].mean() < plain.mean() - 0.05
    assert torch.allclose(styled["inverted"], 1 - plain)
    assert styled["rotated"].shape == plain.shape and (styled["rotated"] - plain).abs().mean() > 0.05
    for x in styled.values():
        assert x.min() >= 0 and x.max() <= 1


# ---------------------------------------------------------------- one source


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    cfg = tiny_config(
        domains=DOMAINS,
        probes=[{"name": "accuracy"}, SHIFT],
        variants=[
            {"name": "pruned", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.7}}]},
        ],
    )
    out = tmp_path_factory.mktemp("shift") / "run"
    run_experiment(Experiment.from_dict(cfg), out)
    return out


def test_every_target_domain_is_reported_with_gap_and_delta(shifted: Path) -> None:
    rs = rows(shifted)
    for v in ("baseline", "pruned"):
        src = pick(rs, v, "source_accuracy", split="val")
        assert src == pytest.approx(pick(rs, v, "accuracy", split="val"))  # same data, same model
        accs = []
        for d in DOMAINS:
            acc = pick(rs, v, "target_accuracy", domain=d)
            assert pick(rs, v, "shift_gap", domain=d) == pytest.approx(src - acc)
            accs.append(acc)
        assert pick(rs, v, "mean_target_accuracy") == pytest.approx(sum(accs) / len(accs))
    # the styled digits are a real shift for the baseline: it does worse there than on its own test split
    assert pick(rs, "baseline", "target_accuracy", domain="rotated") < pick(
        rs, "baseline", "accuracy", split="test"
    )
    for d in DOMAINS:
        delta = pick(rs, "pruned", "target_accuracy_delta", domain=d)
        assert delta == pytest.approx(
            pick(rs, "pruned", "target_accuracy", domain=d)
            - pick(rs, "baseline", "target_accuracy", domain=d)
        )
    assert not [r for r in rs if r["variant"] == "baseline" and r["metric"] == "target_accuracy_delta"]


def test_corruptions_hurt_and_the_baseline_is_the_mce_reference(shifted: Path) -> None:
    rs = rows(shifted)
    assert pick(rs, "baseline", "mce") == pytest.approx(1.0)
    for v in ("baseline", "pruned"):
        clean = pick(rs, v, "clean_accuracy")
        sev = [pick(rs, v, "severity_accuracy", severity=s) for s in (1, 3, 5)]
        assert sev[2] < clean  # the strongest corruptions cost accuracy
        assert sev[0] >= sev[2]  # and more than the weakest do
        per = [
            pick(rs, v, "corruption_accuracy", corruption=c, severity=s)
            for c in SHIFT["params"]["corruptions"]
            for s in (1, 3, 5)
        ]  # type: ignore[index]
        assert pick(rs, v, "mean_corruption_accuracy") == pytest.approx(sum(per) / len(per))
    # mCE by hand from the stored accuracies
    ces = []
    for c in SHIFT["params"]["corruptions"]:  # type: ignore[index]
        err = sum(1 - pick(rs, "pruned", "corruption_accuracy", corruption=c, severity=s) for s in (1, 3, 5))
        base = sum(
            1 - pick(rs, "baseline", "corruption_accuracy", corruption=c, severity=s) for s in (1, 3, 5)
        )
        assert pick(rs, "pruned", "corruption_error", corruption=c) == pytest.approx(err / base)
        ces.append(err / base)
    assert pick(rs, "pruned", "mce") == pytest.approx(sum(ces) / len(ces))
    rel = pick(rs, "pruned", "relative_mce")
    assert math.isfinite(rel)


def test_report_has_the_shift_tables_and_curve(shifted: Path) -> None:
    html = (shifted / "report.html").read_text()
    assert "Domain shift: source validation and target-domain accuracy" in html
    assert "digits → thick" in html and "digits → rotated" in html
    assert "Common corruptions: accuracy averaged over severities" in html
    assert 'alt="Accuracy under common corruptions vs severity"' in html
    assert "data:text/csv;base64," in html  # the data behind the figure


def test_rerun_reuses_every_shift_result(shifted: Path) -> None:
    cfg = tiny_config(
        domains=DOMAINS,
        probes=[{"name": "accuracy"}, SHIFT],
        variants=[
            {"name": "pruned", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.7}}]}
        ],
    )
    summary = run_experiment(Experiment.from_dict(cfg), shifted)
    assert summary.new == 0 and summary.cached == 4


# ---------------------------------------------------------------- several sources: every pair


def test_three_sources_give_all_six_pairs(tmp_path: Path) -> None:
    cfg = tiny_config(
        domains={
            "plain": {"name": "digits", "params": {"size": 16}},
            "thick": {"name": "digits", "params": {"size": 16, "style": "thick"}},
            "thin": {"name": "digits", "params": {"size": 16, "style": "thin"}},
        },
        sources=["plain", "thick", "thin"],
        probes=[{"name": "shift", "params": {"corruptions": []}}],
        variants=[
            {"name": "pruned", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]}
        ],
    )
    del cfg["data"]
    out = tmp_path / "run"
    run_experiment(Experiment.from_dict(cfg), out)
    rs = rows(out)
    pairs = {(r["variant"].split("/")[0], r["domain"]) for r in rs if r["metric"] == "target_accuracy"}
    assert pairs == {(s, t) for s in ("plain", "thick", "thin") for t in ("plain", "thick", "thin") if s != t}
    for s in ("plain", "thick", "thin"):
        assert {r["variant"] for r in rs if r["variant"].startswith(s + "/")} == {
            f"{s}/baseline",
            f"{s}/pruned",
        }
        assert pick(rs, f"{s}/baseline", "source_accuracy", split="val", source=s) > 0.3
    html = (out / "report.html").read_text()
    for s, t in pairs:
        assert f"{s} → {t}" in html


# ---------------------------------------------------------------- mistakes in the file


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sources": ["nowhere"], "domains": DOMAINS}, "sources[0]: 'nowhere' is not one of the domains"),
        (
            {"sources": ["thick"], "domains": DOMAINS, "data": {"name": "digits"}},
            "give either data or sources",
        ),
        (
            {"domains": DOMAINS, "probes": [{"name": "shift", "params": {"domains": ["webcam"]}}]},
            "'webcam' is not one of",
        ),
        ({"probes": [{"name": "shift", "params": {"corruptions": ["fogg"]}}]}, "unknown corruption 'fogg'"),
        ({"probes": [{"name": "shift", "params": {"severities": [0, 1]}}]}, "severities go from 1 to 5"),
        ({"probes": [{"name": "shift", "params": {"corruptions": []}}]}, "nothing to measure"),
        ({"domains": {"x": {"name": "nope"}}}, "domains.x.name: unknown data set 'nope'"),
        ({"domains": {"x": {"name": "digits", "params": {"style": "bold"}}}}, "domains.x.params.style"),
        ({"probes": [{"name": "shift", "params": {"cifar_c": "x"}}]}, "cifar_c: needs the data set's whole"),
    ],
)
def test_mistakes_with_domains_fail_when_the_file_is_read(change: dict[str, Any], message: str) -> None:
    cfg = tiny_config(**change)
    if "sources" in change and "data" not in change:
        del cfg["data"]
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        experiment_from_dict(cfg)


def test_a_domain_with_other_classes_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "other"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            Image.new("L", (16, 16), color=12 * i).save(root / cls / f"{i}.png")
    cfg = tiny_config(
        domains={"other": {"name": "imagefolder", "root": str(root)}},
        probes=[{"name": "shift", "params": {"corruptions": []}}],
    )
    out = tmp_path / "run"
    with pytest.raises(CompauditError, match=r"domains\.other: its 2 classes are not the source's 10"):
        run_experiment(Experiment.from_dict(cfg), out)
    assert not out.exists()


# ---------------------------------------------------------------- CIFAR-10-C from disk


def test_cifar_c_files_are_read_instead_of_corrupting(tmp_path: Path) -> None:
    """With ``cifar_c`` the probe evaluates the release's rows for the test subset: a real linear
    model on a sparse file of the real layout, checked against the accuracy computed by hand."""
    import numpy as np

    from compaudit.data.base import ArrayDataset, DataBundle
    from compaudit.probes import PROBES, ProbeContext
    from compaudit.variant import Variant

    n = 10000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    np.save(tmp_path / "labels.npy", np.tile(labels, 5))  # the release repeats them per severity
    rows = {}
    for name in ("contrast", "fog"):
        arr = np.lib.format.open_memmap(
            tmp_path / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(5 * n, 32, 32, 3)
        )
        for s in (2, 4):
            block = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            arr[(s - 1) * n : s * n] = block
            rows[(name, s)] = block
        arr.flush()
        del arr
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    y = torch.as_tensor(labels.astype(np.int64))
    test = ArrayDataset(torch.zeros(n, 3, 32, 32), y)
    data = DataBundle("cifar10", test, test, test, tuple(str(i) for i in range(10)), (3, 32, 32))
    base = Variant("baseline", "k0", model)
    ctx = ProbeContext(data=data, baseline=base, device=torch.device("cpu"), seed=0)
    probe = PROBES.get("shift").from_spec(
        "shift",
        {"cifar_c": str(tmp_path), "corruptions": ["contrast", "fog"], "severities": [2, 4], "samples": 300},
    )
    assert probe.check_inputs(Experiment.from_dict({"data": {"name": "cifar10", "root": "."}})) is None
    res = probe.run(base, ctx)
    got = {
        (m.params["corruption"], m.params["severity"]): m.value
        for m in res.metrics
        if m.name == "corruption_accuracy"
    }
    subset = probe._rows(ctx)  # type: ignore[attr-defined]
    assert len(subset) == 300
    for (name, s), block in rows.items():
        x = torch.as_tensor(block[subset.numpy()]).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            expected = (model(x).argmax(1) == y[subset]).double().mean().item()
        assert got[(name, s)] == pytest.approx(expected)
    missing = PROBES.get("shift").from_spec("shift", {"cifar_c": str(tmp_path), "corruptions": ["snow"]})
    assert "snow.npy' is missing" in str(missing.check_inputs(Experiment()))
