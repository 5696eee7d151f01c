"""The top of the report: headline table, Pareto front, sweep curves, warnings by variant."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from compaudit import Experiment, Store, run_experiment
from compaudit.report.build import collect, summary_frame
from compaudit.report.overview import pareto_front

from .conftest import tiny_config


def _dominates(a: tuple[float, ...], b: tuple[float, ...], senses: list[str]) -> bool:
    better_eq = all((x <= y) if s == "low" else (x >= y) for x, y, s in zip(a, b, senses, strict=True))
    strictly = any((x < y) if s == "low" else (x > y) for x, y, s in zip(a, b, senses, strict=True))
    return better_eq and strictly


def test_pareto_front_of_a_hand_made_example() -> None:
    points = {"a": (1.0, 0.9), "b": (2.0, 0.95), "c": (2.0, 0.9), "d": (0.5, 0.5), "e": (0.5, 0.5)}
    # c is dominated by a (smaller, as accurate); d and e tie, neither dominates the other
    assert pareto_front(points, ["low", "high"]) == ["a", "b", "d", "e"]


def test_pareto_front_is_exactly_the_undominated_points() -> None:
    rng = random.Random(0)
    senses = ["low", "high", "high"]
    for _ in range(50):
        pts = {
            f"v{i}": (rng.choice([1.0, 2.0, 3.0, 4.0]), rng.random(), rng.choice([0.1, 0.2, 0.3]))
            for i in range(12)
        }
        front = set(pareto_front(pts, senses))
        assert front
        for n, p in pts.items():
            dominated = any(_dominates(q, p, senses) for m, q in pts.items() if m != n)
            assert (n in front) == (not dominated)


def test_report_of_a_sweep_has_the_overview_the_pareto_view_and_curves_per_level(tmp_path: Path) -> None:
    cfg = tiny_config(
        variants=[
            {
                "name": "sparse",
                "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.3}}],
                "sweep": {"param": "sparsity", "values": [0.3, 0.6, 0.95]},
            },
            {"name": "int8", "steps": [{"method": "quantize_int8"}]},
        ]
    )
    cfg["model"]["params"] = {"width": 0.5}
    exp = Experiment.from_dict(cfg)
    run_experiment(exp, tmp_path / "run")
    with Store(tmp_path / "run") as store:
        data = collect(store)
        rows, columns = summary_frame(store)
    # the headline table: one row per variant, the size / latency / accuracy columns, the Pareto mark
    assert data.overview is not None and data.overview.table is not None
    table = data.overview.table
    assert table.columns[:4] == ["Variant", "Size", "Latency", "Clean accuracy"]
    names = [r[0].text for r in table.rows]
    # at 95% sparsity the tiny CNN collapses to chance: the accuracy probe warns, the overview says so
    assert names == ["baseline", "sparse@0.3", "sparse@0.6", "sparse@0.95 (collapsed)", "int8"]
    assert any("collapsed" in w for w in data.warnings_by_variant["sparse@0.95"])
    assert all(c.cls == "" for c in table.rows[3][1:4])  # neither best nor worst
    # without the adversarial probe the front is that of size and clean accuracy, collapsed left out
    marked = {r[0].text for r in table.rows if r[table.columns.index("Pareto")].text == "✓"}
    points = {r[0].text: (float(r[1].value or 0), float(r[3].value or 0)) for r in table.rows}
    del points["sparse@0.95 (collapsed)"]
    assert marked == set(pareto_front(points, ["low", "high"])) and marked
    assert data.overview.pareto is not None
    # the figure's data names each number's unit
    header = data.overview.pareto.csv.splitlines()[0].split(",")
    assert {"size_bytes", "latency_ms", "clean_accuracy_fraction"} <= set(header), header
    # the size column is the smallest storage: sparse files for the pruned levels shrink with sparsity
    size = {r[0].text.split(" ")[0]: r[1].value for r in table.rows}
    assert size["sparse@0.95"] < size["sparse@0.6"] < size["sparse@0.3"] < size["baseline"]
    # one figure of curves for the sweep, its CSV has every level of every summary metric
    assert len(data.sweeps) == 1
    got = list(csv.DictReader(io.StringIO(data.sweeps[0].csv)))
    acc = {r["level"]: float(r["value"]) for r in got if r["metric"] == "Test accuracy"}
    assert set(acc) == {"0.3", "0.6", "0.95", "baseline"}
    assert acc["0.3"] == rows["sparse@0.3"][columns.index("Test accuracy")]
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="sweeps"' in html and "Sweep sparse: metrics against sparsity" in html
    assert 'id="overview"' in html and html.index('id="overview"') < html.index('id="summary"')
