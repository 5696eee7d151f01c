"""The store: atomic results, replaced failures, flat metric rows and typed records, variants'
identity as data, structured warnings, migration of an older schema, meta, atomic files."""

from __future__ import annotations

import ast
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import compaudit
from compaudit.errors import CompauditError
from compaudit.records import CORE_COLUMNS, MetricRecord, RecordTable
from compaudit.results import Metric, ProbeResult, ResultSink, ResultWarning, Severity, VariantId
from compaudit.store import DB_NAME, SCHEMA_VERSION, ResultRef, Store, is_run_dir, plan_refs, write_atomic


def result(
    *metrics: tuple[str, float, dict[str, Any]], warnings: list[ResultWarning] | None = None
) -> ProbeResult:
    res = ProbeResult(warnings=list(warnings or []))
    for name, value, params in metrics:
        res.add(name, value, **params)
    return res


def put(
    store: Store, key: str, res: ProbeResult | None, *, error: str | None = None, variant: str = "v"
) -> None:
    store.put_result(
        key,
        variant_key="v-key",
        variant="v",
        probe="accuracy",
        spec={"probe": "accuracy"},
        result=res,
        seconds=0.5,
        error=error,
    )


def rows(store: Store, table: str, key: str) -> int:
    column = "key" if table == "results" else "result_key"
    db = sqlite3.connect(store.root / DB_NAME)  # a second connection sees only committed data
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (key,)).fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "run", create=True) as s:
        yield s


def test_put_result_writes_the_result_and_its_metrics(store: Store) -> None:
    w = ResultWarning("nan_outputs", "v: NaN outputs", Severity.INVALIDATES, "v")
    res = result(("accuracy", 0.9, {"split": "test"}), ("accuracy", 0.8, {"split": "val"}), warnings=[w])
    res.tables["classes"] = [{"class": "0", "recall": 1.0}]
    put(store, "k1", res)
    assert rows(store, "results", "k1") == 1 and rows(store, "metrics", "k1") == 2
    got = store.result("k1")
    assert got is not None
    assert (got.status, got.error, got.warnings, got.tables) == ("ok", None, [w], res.tables)
    assert got.warnings[0].invalidates
    assert store.has_result("k1")
    assert store.count_results() == 1


@pytest.mark.parametrize("how", ["unserialisable param", "duplicate metric"])
def test_a_failure_mid_transaction_leaves_nothing(store: Store, how: str) -> None:
    if how == "unserialisable param":  # json.dumps fails after the results row is inserted
        bad = result(("accuracy", 0.9, {"split": "test"}), ("nll", 0.3, {"split": object()}))
        expected: type[Exception] = TypeError
    else:  # the metrics insert violates the primary key after the results row is inserted
        bad = result(("accuracy", 0.9, {"split": "test"}), ("accuracy", 0.7, {"split": "test"}))
        expected = sqlite3.IntegrityError
    with pytest.raises(expected):
        put(store, "k1", bad)
    assert rows(store, "results", "k1") == 0
    assert rows(store, "metrics", "k1") == 0
    assert store.result("k1") is None and not store.has_result("k1")

    # an earlier failed try survives a failing retry untouched, and the store stays usable
    put(store, "k2", None, error="boom")
    with pytest.raises(expected):
        put(store, "k2", bad)
    stored = store.result("k2")
    assert stored is not None and stored.status == "error" and stored.error == "boom"
    assert rows(store, "metrics", "k2") == 0
    put(store, "k3", result(("accuracy", 0.5, {})))
    assert store.has_result("k3")


def test_an_ok_result_replaces_an_error_result(store: Store) -> None:
    put(store, "k", None, error="CompauditError: out of memory")
    assert rows(store, "results", "k") == 1
    assert not store.has_result("k")  # an error row does not count as done
    failed = store.result("k")
    assert failed is not None and failed.status == "error" and "out of memory" in (failed.error or "")
    put(store, "k", result(("accuracy", 0.9, {"split": "test"})))
    assert rows(store, "results", "k") == 1
    assert rows(store, "metrics", "k") == 1
    assert store.has_result("k")
    stored = store.result("k")
    assert stored is not None and stored.status == "ok" and stored.error is None
    # and replacing an ok result drops its old metrics
    put(store, "k", result(("nll", 0.1, {"split": "val"})))
    assert [r["metric"] for r in store.metric_rows()] == ["nll"]


def test_metric_rows_flatten_params_and_take_names_from_keys(store: Store) -> None:
    put(store, "ka", result(("accuracy", 0.9, {"split": "test"}), ("latency", 2.5, {"batch_size": 8})))
    store.put_result(
        "kb",
        variant_key="b",
        variant="old-name",
        probe="efficiency",
        spec={},
        result=result(("params", 10, {})),
        seconds=0.1,
    )
    put(store, "kc", None, error="failed")
    flat = store.metric_rows([("renamed", "eff", "kb"), ("first", "acc", "ka"), ("failed", "acc", "kc")])
    assert [(r["variant"], r["probe"], r["metric"]) for r in flat] == [
        ("renamed", "eff", "params"),
        ("first", "acc", "accuracy"),
        ("first", "acc", "latency"),
    ]
    acc, lat = flat[1], flat[2]
    assert acc["split"] == "test" and acc["value"] == 0.9 and "batch_size" not in acc
    assert lat["batch_size"] == 8 and lat["value"] == 2.5 and "split" not in lat
    assert all(isinstance(r["noisy"], bool) and "unit" in r for r in flat)
    # no variant stored under the results' keys: no identity, the label as name
    assert {(r["variant_source"], r["variant_seed"], r["variant_name"]) for r in flat} == {
        ("", None, "renamed"),
        ("", None, "first"),
    }
    # without keys: every stored result, names as stored
    assert {r["variant"] for r in store.metric_rows()} == {"v", "old-name"}
    assert store.metric_rows([]) == []


def test_meta_round_trip_survives_reopening(tmp_path: Path) -> None:
    values = {"plan": [{"variant": "a", "probes": ["accuracy"]}], "seed": 3, "name": "tiny", "none": None}
    with Store(tmp_path, create=True) as s:
        s.set_meta(**values)
        s.set_meta(seed=4)  # replaced, not duplicated
        put(s, "k", result(("accuracy", 0.5, {})))
    assert is_run_dir(tmp_path)
    with Store(tmp_path) as s:
        assert s.meta("plan") == values["plan"]
        assert s.meta("seed") == 4
        assert s.meta("name") == "tiny"
        assert s.meta("none") is None
        assert s.meta("missing", "default") == "default"
        assert s.meta("schema_version") is not None
        assert s.has_result("k")


def test_opening_a_folder_without_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(CompauditError, match="not a compaudit run folder"):
        Store(tmp_path)
    with pytest.raises(CompauditError, match="not a compaudit run folder"):
        Store(tmp_path / "missing")
    assert not (tmp_path / DB_NAME).exists()
    assert not (tmp_path / "missing").exists()
    assert not is_run_dir(tmp_path)


def test_variants_round_trip(store: Store) -> None:
    lineage = [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]
    store.put_variant("vk", name="p50", parent="base", spec={"x": 1}, lineage=lineage, info={"epochs": 1})
    assert store.variant_info("vk") == {"epochs": 1, "lineage": lineage}
    assert store.variant_info("other") is None


@pytest.mark.parametrize("data", [b"\x00\x01binary", "text with ünïcode\n"])
def test_write_atomic_writes_and_leaves_no_temp_files(tmp_path: Path, data: bytes | str) -> None:
    target = tmp_path / "deep" / "folder" / "file.bin"
    write_atomic(target, "old content")
    write_atomic(target, data)
    got: bytes | str = target.read_bytes() if isinstance(data, bytes) else target.read_text(encoding="utf-8")
    assert got == data
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


# ---------------------------------------------------------------- identity, warnings, records


def put_for(
    store: Store, key: str, variant_key: str, label: str, *metrics: tuple[str, float, dict[str, Any]]
) -> None:
    store.put_result(
        key,
        variant_key=variant_key,
        variant=label,
        probe="accuracy",
        spec={},
        result=result(*metrics),
        seconds=0.0,
    )


def test_identity_is_data_joined_into_the_records(store: Store) -> None:
    ident = VariantId("int8", "amazon", 1)
    store.put_variant("vk", name=ident.label, parent=None, spec={}, lineage=[], info={}, identity=ident)
    # a domain named like a seed, without an identity: nothing parses the label
    store.put_variant("vs", name="seed0", parent=None, spec={}, lineage=[], info={})
    put_for(store, "k1", "vk", ident.label, ("accuracy", 0.5, {"split": "test"}))
    put_for(store, "k2", "vs", "seed0", ("accuracy", 0.25, {"split": "test"}))
    assert store.variant_identity("vk") == ident
    assert store.variant_identity("vs") == VariantId("seed0")
    assert store.variant_identity("missing") is None

    table = store.records()
    assert [(r.variant, r.source, r.seed, r.name) for r in table] == [
        ("amazon/seed1/int8", "amazon", 1, "int8"),
        ("seed0", "", None, "seed0"),
    ]
    assert table[0].identity == ident
    rows = store.metric_rows()
    assert list(rows[0]) == [*CORE_COLUMNS[:7], "split", *CORE_COLUMNS[7:]]
    assert (rows[0]["variant_source"], rows[0]["variant_seed"], rows[0]["variant_name"]) == (
        "amazon",
        1,
        "int8",
    )
    assert (rows[1]["variant_source"], rows[1]["variant_seed"], rows[1]["variant_name"]) == (
        "",
        None,
        "seed0",
    )

    # a ref's identity wins (a plan that records it); a label the stored variant does not have
    # (renamed since) gets no identity rather than a stale one
    renamed = VariantId("int8-new", "amazon", 1)
    got = store.records(
        [ResultRef(renamed.label, "accuracy", "k1", renamed), ("amazon/seed1/int8-new", "accuracy", "k1")]
    )
    assert [r.identity for r in got] == [renamed, VariantId("amazon/seed1/int8-new")]


def test_plan_refs_read_the_identity_a_plan_row_records(store: Store) -> None:
    plan = [
        {
            "variant": "a/seed2/p50",
            "probe": "accuracy",
            "key": "k1",
            "variant_key": "v1",
            "source": "a",
            "seed": 2,
            "name": "p50",
        },
        {"variant": "sweep", "probe": "selection", "key": "k2", "variant_key": ""},
    ]
    want = [
        ResultRef("a/seed2/p50", "accuracy", "k1", VariantId("p50", "a", 2)),
        ResultRef("sweep", "selection", "k2", None),
    ]
    assert plan_refs(plan) == want
    store.set_meta(plan=plan)
    assert store.plan_refs() == want
    assert ResultRef("v", "p", "k") == ("v", "p", "k", None)  # a plain key tuple, identity unknown


def test_warnings_are_stored_as_objects_and_plain_strings_read_back(store: Store) -> None:
    w = ResultWarning("gradient_masking", "GRADIENT MASKING in v", Severity.INVALIDATES, "v")
    res = ProbeResult(warnings=[w, "an unstructured note"])  # type: ignore[list-item]
    put(store, "k", res)
    raw = sqlite3.connect(store.root / DB_NAME).execute("SELECT warnings FROM results").fetchone()[0]
    assert json.loads(raw) == [
        w.to_json(),
        {"code": "text", "severity": "caution", "variant": "", "text": "an unstructured note"},
    ]
    got = store.result("k")
    assert got is not None
    assert got.warnings == [w, ResultWarning("text", "an unstructured note")]
    assert [x.invalidates for x in got.warnings] == [True, False]


def test_units_of_old_results_come_from_the_callers_lookup(store: Store) -> None:
    res = ProbeResult(
        [Metric("accuracy", 0.5, {}, ""), Metric("file_bytes", 10.0, {}, "B"), Metric("nll", 1.0, {}, "nats")]
    )
    put(store, "k", res)
    assert [r.unit for r in store.records()] == ["", "bytes", "nats"]  # no lookup: old spellings only
    declared = {
        ("accuracy", "accuracy"): "fraction",
        ("accuracy", "file_bytes"): "bytes",
        ("accuracy", "nll"): "score",
    }
    asked: list[tuple[str, str]] = []

    def unit_of(probe: str, metric: str) -> str:
        asked.append((probe, metric))
        return declared.get((probe, metric), "")

    assert [r.unit for r in store.records(unit_of=unit_of)] == ["fraction", "bytes", "nats"]
    assert ("accuracy", "nll") not in asked  # a stored unit of UNITS is kept as it is
    assert [r["unit"] for r in store.metric_rows(unit_of=lambda p, m: "")] == ["", "bytes", "nats"]


def test_the_store_is_a_result_sink(store: Store) -> None:
    assert isinstance(store, ResultSink)


def _imports(path: Path) -> set[str]:
    """The compaudit modules a source file imports (at any depth of its body)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.split(".")[0] == "compaudit"}


def test_the_store_imports_no_probe() -> None:
    """The import closure of the store and the types it returns, read from their source: no
    module of ``compaudit.probes`` (nor run, report, export) in it."""
    root = Path(compaudit.__file__).parent
    seen: set[str] = set()
    todo = ["compaudit.store"]
    while todo:
        mod = todo.pop()
        parts = mod.split(".")[1:]
        file = root.joinpath(*parts).with_suffix(".py")
        package = root.joinpath(*parts, "__init__.py")
        path = file if file.is_file() else package if package.is_file() else None
        if path is None or mod in seen:
            continue  # a name imported from a module, not a module
        seen.add(mod)
        todo.extend(_imports(path))
    assert "compaudit.records" in seen and "compaudit.results" in seen
    assert not {m for m in seen if m.split(".")[1] in ("probes", "run", "report", "export", "compare")}, seen


def test_record_table_queries_and_flat_rows() -> None:
    table = RecordTable(
        [
            MetricRecord(
                "base",
                "adversarial",
                "robust_accuracy",
                0.5,
                "fraction",
                False,
                {"attack": "pgd", "eps": 0.1},
            ),
            MetricRecord(
                "base",
                "adversarial",
                "robust_accuracy",
                0.25,
                "fraction",
                False,
                {"attack": "pgd", "eps": 0.3},
            ),
            MetricRecord(
                "a/seed0/q",
                "adversarial",
                "robust_accuracy",
                None,
                "fraction",
                False,
                {"attack": "fgsm", "eps": 0.1},
                "a",
                0,
                "q",
            ),
            MetricRecord(
                "a/seed0/q",
                "efficiency",
                "latency",
                1.5,
                "ms",
                True,
                {"batch_size": 1, "value": "clash"},
                "a",
                0,
                "q",
            ),
        ]
    )
    assert len(table) == 4 and table[1].value == 0.25 and isinstance(table[1:], RecordTable)
    assert table.variants() == ["base", "a/seed0/q"]
    assert table.probes() == ["adversarial", "efficiency"]
    assert table.identities() == {"base": VariantId("base"), "a/seed0/q": VariantId("q", "a", 0)}
    assert len(table.where(metric="robust_accuracy", attack="pgd")) == 2
    assert table.value("base", "adversarial", "robust_accuracy", eps=0.3) == 0.25
    assert table.value("base", "adversarial", "robust_accuracy", eps=0.5) is None
    assert table.value("a/seed0/q", "adversarial", "robust_accuracy") is None  # not a number
    assert table.where(variant="base", missing=None) == table[:2]  # a param a record lacks is None
    assert table.distinct("robust_accuracy", "eps") == [0.1, 0.3]
    assert table.distinct("robust_accuracy", "attack", probe="efficiency") == []
    assert table.filter(lambda r: r.seed == 0).variants() == ["a/seed0/q"]
    assert table.first(probe="efficiency") is table[3]

    rows = table.to_rows()
    assert rows[3] == {
        "variant": "a/seed0/q",
        "variant_source": "a",
        "variant_seed": 0,
        "variant_name": "q",
        "probe": "efficiency",
        "metric": "latency",
        "value": 1.5,
        "batch_size": 1,
        "param_value": "clash",  # a param may not overwrite a column
        "unit": "ms",
        "noisy": True,
    }
    assert RecordTable.from_rows(rows) == table
    nan_row = dict(rows[0], value=float("nan"))
    assert MetricRecord.from_row(nan_row).value is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        table[0].value = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------- schema versions

#: the schema of the first store (compaudit before variants' identity became columns)
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE variants (key TEXT PRIMARY KEY, name TEXT NOT NULL, parent TEXT, spec TEXT NOT NULL,
    lineage TEXT NOT NULL, info TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE steps (key TEXT PRIMARY KEY, info TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE results (key TEXT PRIMARY KEY, variant_key TEXT NOT NULL, variant TEXT NOT NULL,
    probe TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT, warnings TEXT NOT NULL, tables TEXT NOT NULL, seconds REAL NOT NULL, created REAL NOT NULL);
CREATE TABLE metrics (result_key TEXT NOT NULL REFERENCES results(key) ON DELETE CASCADE,
    metric TEXT NOT NULL, params TEXT NOT NULL, value REAL, unit TEXT NOT NULL, noisy INTEGER NOT NULL,
    PRIMARY KEY (result_key, metric, params));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO meta VALUES ('plan',
    '[{"variant": "amazon/seed0/int8", "probe": "accuracy", "key": "k", "variant_key": "vk"}]');
INSERT INTO variants VALUES ('vk', 'amazon/seed0/int8', 'base', '{}', '[]', '{"epochs": 1}', 1.0);
INSERT INTO results VALUES ('k', 'vk', 'amazon/seed0/int8', 'accuracy', '{}', 'ok', NULL,
    '["shift: frost left out"]', '{}', 0.5, 1.0);
INSERT INTO metrics VALUES ('k', 'file_bytes', '{}', 1234.0, 'B', 0);
"""


def test_a_schema_1_run_folder_is_migrated_on_opening(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(SCHEMA_1)
    db.commit()
    db.close()
    for _ in range(2):  # migrating twice is a no-op
        with Store(tmp_path) as s:
            assert s.meta("schema_version") == SCHEMA_VERSION == 2
            stored = s.result("k")
            assert stored is not None and stored.warnings == [ResultWarning("text", "shift: frost left out")]
            # the old display name is kept as the label and as the name: no source or seed is parsed
            # out of it
            assert s.variant_identity("vk") == VariantId("amazon/seed0/int8")
            assert s.variant_info("vk") == {"epochs": 1, "lineage": []}
            (row,) = s.metric_rows(s.plan_refs())
            assert (row["variant"], row["variant_source"], row["variant_seed"], row["variant_name"]) == (
                "amazon/seed0/int8",
                "",
                None,
                "amazon/seed0/int8",
            )
            assert row["unit"] == "bytes"
    with Store(tmp_path) as s:  # and the migrated table takes new variants
        s.put_variant(
            "v2", name="b/int8", parent=None, spec={}, lineage=[], info={}, identity=VariantId("int8", "b")
        )
        assert s.variant_identity("v2") == VariantId("int8", "b")
    # a migrated table has the columns of a new one, in the same order
    Store(tmp_path / "fresh", create=True).close()
    columns = []
    for folder in (tmp_path, tmp_path / "fresh"):
        db = sqlite3.connect(folder / DB_NAME)
        columns.append([r[1:3] for r in db.execute("PRAGMA table_info(variants)")])
        db.close()
    assert columns[0] == columns[1]


def test_a_run_folder_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path, create=True).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(CompauditError, match=f"newer compaudit .*schema {SCHEMA_VERSION + 1}"):
        Store(tmp_path)
