"""Property-based: any table of results, written into a real store and exported as CSV, JSON or
Parquet, reads back as the frame :func:`export_frame` gives (same columns, dtypes and values, NaN
where NaN), and the store's typed records survive their flat rows."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compaudit.export import FORMATS, export_frame, export_rows, load_export, write_export
from compaudit.probes import declared_unit
from compaudit.records import RecordTable
from compaudit.results import Metric, ProbeResult, VariantId
from compaudit.store import Store

#: text that other readers take for something else, and the characters CSV must quote
TRICKY = [
    "0",
    "9",
    "-1",
    "0.5",
    "1e3",
    "nan",
    "inf",
    "True",
    "false",
    "None",
    "null",
    "",
    " ",
    "[1, 2]",
    "{}",
]
CHARS = st.one_of(
    st.sampled_from(list(',"\r\n\t #;=+-.0123456789eETrueNaN\\')),
    st.characters(exclude_categories=("Cs",)),  # any unicode but lone surrogates (not UTF-8)
)
TEXT = st.one_of(st.sampled_from(TRICKY), st.text(CHARS, max_size=8))
NAME = st.one_of(st.sampled_from(["accuracy", "0", "a,b", 'say "x"', "ü"]), st.text(CHARS, max_size=5))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
INTS = st.integers(min_value=-(2**70), max_value=2**70)  # some beyond 64 bits: such a column is text
PARAM_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    FLOATS,
    TEXT,
    st.lists(st.one_of(st.integers(-9, 9), TEXT), max_size=3),
)
#: a small pool of keys, so that one column gets values of several types across rows; the names of
#: the fixed columns and of the identity are among them (they come out as ``param_NAME``)
PARAM_KEY = st.sampled_from(
    [
        "class",
        "eps",
        "layer",
        "split",
        "source",
        "seed",
        "name",
        "value",
        "unit",
        "variant_seed",
        "",
        "a,b",
        "ü\n",
    ]
)
PARAMS = st.dictionaries(PARAM_KEY, PARAM_VALUE, max_size=4)
SEED = st.integers(min_value=-(2**63), max_value=2**63 - 1)
IDENTITY = st.one_of(st.none(), st.builds(VariantId, NAME.filter(bool), TEXT, st.none() | SEED))


@dataclass(frozen=True)
class Result:
    variant: int  # index into the variants; one past the end: a result of no stored variant
    probe: str
    metrics: list[tuple[str, float, dict[str, Any], str, bool]]


def _metric_key(m: tuple[str, float, dict[str, Any], str, bool]) -> tuple[str, str]:
    return m[0], json.dumps(m[2], sort_keys=True)  # the store's primary key within a result


METRICS = st.lists(
    st.tuples(NAME, FLOATS, PARAMS, st.sampled_from(["fraction", "ms", "", "B", "u,\n"]), st.booleans()),
    min_size=1,
    max_size=4,
    unique_by=_metric_key,
)
TABLES = st.tuples(
    st.lists(st.tuples(TEXT, IDENTITY), min_size=1, max_size=3),
    st.lists(st.builds(Result, st.integers(0, 3), NAME, METRICS), min_size=0, max_size=4),
)


def _write_run(root: Path, variants: list[tuple[str, VariantId | None]], results: list[Result]) -> None:
    """A run folder written through the store's own API, with a plan in result order."""
    plan = []
    with Store(root, create=True) as store:
        for i, (label, ident) in enumerate(variants):
            store.put_variant(f"v{i}", name=label, parent=None, spec={}, lineage=[], info={}, identity=ident)
        for n, res in enumerate(results):
            vi = min(res.variant, len(variants))
            label = variants[vi][0] if vi < len(variants) else "selection"
            metrics = ProbeResult(
                [Metric(name, value, params, unit, noisy) for name, value, params, unit, noisy in res.metrics]
            )
            key = f"r{n}"
            store.put_result(
                key,
                variant_key=f"v{vi}",
                variant=label,
                probe=res.probe,
                spec={},
                result=metrics,
                seconds=0.0,
            )
            plan.append({"variant": label, "probe": res.probe, "key": key, "variant_key": f"v{vi}"})
        store.set_meta(plan=plan)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(TABLES)
def test_every_format_round_trips_a_generated_table(
    table: tuple[list[tuple[str, VariantId | None]], list[Result]],
) -> None:
    variants, results = table
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        _write_run(run, variants, results)
        want = export_frame(run)
        assert len(want) == sum(len(r.metrics) for r in results)
        for fmt in FORMATS:
            path = Path(tmp) / f"table.{fmt}"
            write_export(run, path, fmt)
            back = load_export(path)
            pd.testing.assert_frame_equal(back, want, check_exact=True, obj=f"{fmt} export")

        # the flat rows give the store's typed records back
        with Store(run) as store:
            records = store.records(store.plan_refs(), unit_of=declared_unit)
        assert _canonical(RecordTable.from_rows(export_rows(run))) == _canonical(records)


def _canonical(table: RecordTable) -> list[str]:
    """Records as JSON text: a NaN param is never equal to itself, but its text is."""
    return [json.dumps(dataclasses.asdict(r), sort_keys=True) for r in table]
