"""The store: one SQLite database and an artifact folder per run.

Results are rows, keyed by a hash of their spec; a (variant, probe) result and all its metrics are
written in one transaction, so a crash never leaves half a result. Files (model weights, figures)
are written to a temporary name and renamed into place.

Layout of a run folder::

    DIR/results.sqlite      results, metrics, variants, the experiment and its plan
    DIR/report.html         the report (rebuilt by ``compaudit report DIR``)
    DIR/models/KEY.pt       weights of each built variant (state dicts)
    DIR/artifacts/KEY/      files a probe produced
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compaudit.errors import CompauditError
from compaudit.probes import declared_unit
from compaudit.probes.base import ProbeResult

DB_NAME = "results.sqlite"
#: column names of the flat results table that a metric's own params may not overwrite
_RESERVED = frozenset({"variant", "probe", "metric", "value", "unit", "noisy"})
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS variants (
    key        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    parent     TEXT,
    spec       TEXT NOT NULL,
    lineage    TEXT NOT NULL,
    info       TEXT NOT NULL,
    created    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    key     TEXT PRIMARY KEY,
    info    TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    key         TEXT PRIMARY KEY,
    variant_key TEXT NOT NULL,
    variant     TEXT NOT NULL,
    probe       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error       TEXT,
    warnings    TEXT NOT NULL,
    tables      TEXT NOT NULL,
    seconds     REAL NOT NULL,
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    result_key TEXT NOT NULL REFERENCES results(key) ON DELETE CASCADE,
    metric     TEXT NOT NULL,
    params     TEXT NOT NULL,
    value      REAL,
    unit       TEXT NOT NULL,
    noisy      INTEGER NOT NULL,
    PRIMARY KEY (result_key, metric, params)
);
"""


@dataclass(frozen=True)
class StoredResult:
    key: str
    variant: str
    probe: str
    status: str
    error: str | None
    warnings: list[str]
    tables: dict[str, list[dict[str, Any]]]
    seconds: float


def is_run_dir(path: Path) -> bool:
    return (path / DB_NAME).is_file()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode, encoding=None if isinstance(data, bytes) else "utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Store:
    """Results of one run folder."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = Path(root)
        db = self.root / DB_NAME
        if not db.is_file():
            if not create:
                raise CompauditError(f"{str(self.root)!r} is not a compaudit run folder (no {DB_NAME})")
            self.root.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        with self.transaction() as c:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def artifacts_dir(self, result_key: str) -> Path:
        return self.root / "artifacts" / result_key

    # ------------------------------------------------------------------ meta

    def set_meta(self, **values: Any) -> None:
        with self.transaction() as c:
            for k, v in values.items():
                c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))

    def meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return row[0]

    # ------------------------------------------------------------------ variants

    def put_variant(
        self, key: str, *, name: str, parent: str | None, spec: Any, lineage: Any, info: dict[str, Any]
    ) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO variants VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, name, parent, json.dumps(spec), json.dumps(lineage), json.dumps(info), time.time()),
            )

    def put_step(self, key: str, info: dict[str, Any]) -> None:
        """What building one cached step did (fine-tuning history, skipped layers)."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO steps VALUES (?, ?, ?)", (key, json.dumps(info), time.time()))

    def step_info(self, key: str) -> dict[str, Any]:
        row = self._conn.execute("SELECT info FROM steps WHERE key = ?", (key,)).fetchone()
        return {} if row is None else dict(json.loads(row[0]))

    def variant_info(self, key: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT info, lineage FROM variants WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        info: dict[str, Any] = json.loads(row[0])
        info["lineage"] = json.loads(row[1])
        return info

    # ------------------------------------------------------------------ results

    def has_result(self, key: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM results WHERE key = ? AND status = 'ok'", (key,)).fetchone()
        return row is not None

    def put_result(
        self,
        key: str,
        *,
        variant_key: str,
        variant: str,
        probe: str,
        spec: Any,
        result: ProbeResult | None,
        seconds: float,
        error: str | None = None,
    ) -> None:
        """Write one result and its metrics in one transaction (replacing an earlier failed try)."""
        status = "ok" if error is None else "error"
        res = result or ProbeResult()
        with self.transaction() as c:
            c.execute("DELETE FROM metrics WHERE result_key = ?", (key,))
            c.execute("DELETE FROM results WHERE key = ?", (key,))
            c.execute(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    variant_key,
                    variant,
                    probe,
                    json.dumps(spec),
                    status,
                    error,
                    json.dumps(res.warnings),
                    json.dumps(res.tables, default=float),
                    seconds,
                    time.time(),
                ),
            )
            c.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (key, m.name, json.dumps(m.params, sort_keys=True), m.value, m.unit, int(m.noisy))
                    for m in res.metrics
                ],
            )

    def result(self, key: str) -> StoredResult | None:
        row = self._conn.execute(
            "SELECT key, variant, probe, status, error, warnings, tables, seconds FROM results WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return StoredResult(
            row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), json.loads(row[6]), row[7]
        )

    def metric_rows(self, keys: list[tuple[str, str, str]] | None = None) -> list[dict[str, Any]]:
        """Flat records ``{variant, probe, metric, value, unit, <params>...}``.

        ``unit`` is the stored one; where that is empty or an old spelling (results stored before
        probes declared units), the unit the registered probe declares for the metric
        (:func:`compaudit.probes.declared_unit`).

        ``keys`` lists ``(variant name, probe name, result key)`` in report order (a run's plan); the
        names come from there, so a variant renamed in the experiment file shows its new name.
        Without ``keys``, every stored result is listed.
        """
        if keys is None:
            keys = [
                (r[0], r[1], r[2])
                for r in self._conn.execute("SELECT variant, probe, key FROM results ORDER BY created")
            ]
        out: list[dict[str, Any]] = []
        for variant, probe, key in keys:
            rows = self._conn.execute(
                "SELECT metric, params, value, unit, noisy FROM metrics WHERE result_key = ? ORDER BY rowid",
                (key,),
            ).fetchall()
            for metric, params, value, unit, noisy in rows:
                rec: dict[str, Any] = {"variant": variant, "probe": probe, "metric": metric, "value": value}
                for k, v in json.loads(params).items():
                    rec[f"param_{k}" if k in _RESERVED else k] = v
                rec["unit"] = declared_unit(probe, metric, unit)
                rec["noisy"] = bool(noisy)
                out.append(rec)
        return out

    def count_results(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
