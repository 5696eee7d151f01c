"""The store: atomic results, replaced failures, flat metric rows, meta, atomic files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compaudit.errors import CompauditError
from compaudit.probes import ProbeResult
from compaudit.store import DB_NAME, Store, is_run_dir, write_atomic


def result(*metrics: tuple[str, float, dict[str, Any]], warnings: list[str] | None = None) -> ProbeResult:
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
    res = result(("accuracy", 0.9, {"split": "test"}), ("accuracy", 0.8, {"split": "val"}), warnings=["w"])
    res.tables["classes"] = [{"class": "0", "recall": 1.0}]
    put(store, "k1", res)
    assert rows(store, "results", "k1") == 1 and rows(store, "metrics", "k1") == 2
    got = store.result("k1")
    assert got is not None
    assert (got.status, got.error, got.warnings, got.tables) == ("ok", None, ["w"], res.tables)
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
