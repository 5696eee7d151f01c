"""The store: one SQLite database and an artifact folder per run.

Results are rows, keyed by a hash of their spec; a (variant, probe) result and all its metrics are
written in one transaction, so a crash never leaves half a result. Files (model weights, figures)
are written to a temporary name and renamed into place.

Layout of a run folder::

    DIR/results.sqlite      results, metrics, variants, the experiment and its plan
    DIR/report.html         the report (rebuilt by ``compaudit report DIR``)
    DIR/models/KEY.pt       weights of each built variant (state dicts)
    DIR/cache/KEY.pt        tensors a probe computes once per run (transfer examples)
    DIR/artifacts/KEY/      files a probe produced

The store is the one :class:`compaudit.results.ResultSink` of a local run, and it reads back what it
keeps as the types every output shares: :class:`compaudit.records.RecordTable` of the metrics (with
each variant's identity, ``source``/``seed``/``name``, as columns of the variants table: no label is
parsed), :class:`compaudit.results.ResultWarning` of the warnings. It imports no probe: where an old
result needs the unit its probe declares, the caller passes the lookup (:meth:`Store.records`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from compaudit.errors import CompauditError
from compaudit.records import MetricRecord, RecordTable
from compaudit.results import ProbeResult, ResultSink, ResultWarning, VariantId
from compaudit.units import UNITS, canonical_unit

DB_NAME = "results.sqlite"
#: 1: the first schema; 2: the variants' identity as columns (``label``, ``source``, ``seed``; ``name``
#: is the variant's name in the experiment), warnings stored as objects
SCHEMA_VERSION = 2

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
    created    REAL NOT NULL,
    label      TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL DEFAULT '',
    seed       INTEGER
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

#: columns schema 2 added to the variants table, as ``ALTER TABLE ... ADD COLUMN`` declares them
#: (the same declarations as in :data:`_SCHEMA`, so a migrated table and a new one are alike)
_ADDED_VARIANT_COLUMNS = (
    ("label", "TEXT NOT NULL DEFAULT ''"),
    ("source", "TEXT NOT NULL DEFAULT ''"),
    ("seed", "INTEGER"),
)

#: ``unit_of(probe, metric)``: the unit the probe named ``probe`` declares for ``metric``, or ``""``
#: when it knows none (:func:`compaudit.probes.declared_unit` is one)
UnitOf = Callable[[str, str], str]


@dataclass(frozen=True)
class StoredResult:
    key: str
    variant: str
    probe: str
    status: str
    error: str | None
    warnings: list[ResultWarning]
    tables: dict[str, list[dict[str, Any]]]
    seconds: float


class ResultRef(NamedTuple):
    """Which stored result to list, and under which variant label (a run's plan gives them, so a
    variant renamed in the experiment file shows its new label). ``identity``: the variant's
    identity where the caller knows it (a plan row that records it); else the store's."""

    variant: str
    probe: str
    key: str
    identity: VariantId | None = None


def plan_refs(plan: Iterable[Mapping[str, Any]]) -> list[ResultRef]:
    """The :class:`ResultRef` of a run's plan rows (the ``plan`` meta: ``variant``, ``probe``,
    ``key``; a row that also has ``name``, and optionally ``source`` and ``seed``, gives the
    variant's identity)."""
    refs: list[ResultRef] = []
    for j in plan:
        identity = None
        if j.get("name"):
            seed = j.get("seed")
            identity = VariantId(
                str(j["name"]), str(j.get("source") or ""), None if seed is None else int(seed)
            )
        refs.append(ResultRef(str(j["variant"]), str(j["probe"]), str(j["key"]), identity))
    return refs


def _warning_json(w: ResultWarning | str) -> dict[str, str]:
    """A warning as stored: a :class:`ResultWarning`'s object; a plain string (code written before
    warnings were structured) as :meth:`ResultWarning.from_json` reads one."""
    return (w if isinstance(w, ResultWarning) else ResultWarning.from_json(w)).to_json()


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
    """Results of one run folder: the :class:`~compaudit.results.ResultSink` an executor writes
    through, and the reader of its records (:meth:`records`) for the outputs."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = Path(root)
        db = self.root / DB_NAME
        if not db.is_file():
            if not create:
                raise CompauditError(f"{str(self.root)!r} is not a compaudit run folder (no {DB_NAME})")
            self.root.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            with self.transaction() as c:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                c.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
                self._migrate(c)
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self, c: sqlite3.Connection) -> None:
        """Bring a run folder of an older schema up to :data:`SCHEMA_VERSION` (in the opening
        transaction); refuse one written by a newer compaudit, whose tables this one may misread.

        Schema 1 -> 2: the variants table gains ``label`` (the display name, which schema 1 kept in
        ``name``; copied), ``source`` (``''``) and ``seed`` (NULL). Such a variant's identity is
        therefore its old display name, with no source or seed: nothing parses the name to find them.
        Stored warnings need no change: :meth:`ResultWarning.from_json` reads schema 1's strings.
        """
        row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = int(json.loads(row[0]))
        except (TypeError, ValueError):
            raise CompauditError(
                f"{str(self.root)!r}: unreadable store schema version {row[0]!r} in {DB_NAME}"
            ) from None
        if version > SCHEMA_VERSION:
            raise CompauditError(
                f"{str(self.root)!r} was written by a newer compaudit (store schema {version}; this one "
                f"reads up to {SCHEMA_VERSION}): upgrade compaudit to open it"
            )
        have = {r[1] for r in c.execute("PRAGMA table_info(variants)")}
        for column, declaration in _ADDED_VARIANT_COLUMNS:
            if column not in have:
                c.execute(f"ALTER TABLE variants ADD COLUMN {column} {declaration}")
                if column == "label":
                    c.execute("UPDATE variants SET label = name")
        if version < SCHEMA_VERSION:
            c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

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

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

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
        self,
        key: str,
        *,
        name: str,
        parent: str | None,
        spec: Any,
        lineage: Any,
        info: dict[str, Any],
        identity: VariantId | None = None,
    ) -> None:
        """Record a built variant under its content ``key``: ``name`` is its display label
        (``amazon/seed0/int8``), ``identity`` who it is as data (``VariantId("int8", "amazon", 0)``);
        without one, the label is the name, with no source and no seed."""
        ident = identity if identity is not None else VariantId(name)
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO variants (key, name, parent, spec, lineage, info, created, label, "
                "source, seed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    ident.name,
                    parent,
                    json.dumps(spec),
                    json.dumps(lineage),
                    json.dumps(info),
                    time.time(),
                    name,
                    ident.source,
                    ident.seed,
                ),
            )

    def variant_identity(self, key: str) -> VariantId | None:
        """The identity of the variant stored under ``key`` (``None``: no such variant)."""
        row = self._conn.execute("SELECT name, source, seed FROM variants WHERE key = ?", (key,)).fetchone()
        return None if row is None else VariantId(row[0], row[1], row[2])

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
                    json.dumps([_warning_json(w) for w in res.warnings]),
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
        warnings = [ResultWarning.from_json(w) for w in json.loads(row[5])]
        return StoredResult(row[0], row[1], row[2], row[3], row[4], warnings, json.loads(row[6]), row[7])

    def plan_refs(self) -> list[ResultRef]:
        """The results of this run's plan (the ``plan`` meta), in report order (:func:`plan_refs`)."""
        return plan_refs(self.meta("plan", []) or [])

    def records(
        self,
        keys: Sequence[ResultRef | tuple[str, str, str]] | None = None,
        *,
        unit_of: UnitOf | None = None,
    ) -> RecordTable:
        """The stored metrics of the results ``keys`` names, as one :class:`RecordTable`.

        ``keys`` lists ``(variant label, probe name, result key)`` or :class:`ResultRef` in report
        order (a run's plan: :meth:`plan_refs`); the label and the probe name come from there, so a
        variant renamed in the experiment file shows its new label. Without ``keys``, every stored
        result, in the order stored, under the label it was stored with. A failed result has no
        metrics.

        A record's identity (``source``, ``seed``, ``name``) is the ref's, else that of the variant
        stored under the result's variant key when its label is the one listed, else none (source
        ``""``, seed ``None``, the label as name: a sweep's selection, a result whose variant is not
        stored, a variant renamed since its results were stored). Nothing parses the label.

        ``unit`` is the stored one when it is one of :data:`compaudit.units.UNITS`. Results stored
        before probes declared units hold an empty unit or an old spelling: for those, the unit
        ``unit_of(probe, metric)`` gives, when the caller passes one (the store imports no probe, so
        the outputs that have the probe registry pass :func:`compaudit.probes.declared_unit`); else
        the stored text in its current spelling (:func:`compaudit.units.canonical_unit`).
        """
        if keys is None:
            refs = [
                ResultRef(r[0], r[1], r[2])
                for r in self._conn.execute("SELECT variant, probe, key FROM results ORDER BY created")
            ]
        else:
            refs = [k if isinstance(k, ResultRef) else ResultRef(*k) for k in keys]
        out: list[MetricRecord] = []
        for ref in refs:
            rows = self._conn.execute(
                "SELECT m.metric, m.params, m.value, m.unit, m.noisy, v.label, v.name, v.source, v.seed "
                "FROM metrics AS m JOIN results AS r ON r.key = m.result_key "
                "LEFT JOIN variants AS v ON v.key = r.variant_key "
                "WHERE m.result_key = ? ORDER BY m.rowid",
                (ref.key,),
            ).fetchall()
            for metric, params, value, unit, noisy, label, name, source, seed in rows:
                ident = ref.identity
                if ident is None:
                    ident = VariantId(name, source, seed) if label == ref.variant else VariantId(ref.variant)
                out.append(
                    MetricRecord(
                        variant=ref.variant,
                        probe=ref.probe,
                        metric=metric,
                        value=None if value is None else float(value),
                        unit=_unit(ref.probe, metric, unit, unit_of),
                        noisy=bool(noisy),
                        params=json.loads(params),
                        source=ident.source,
                        seed=ident.seed,
                        name=ident.name,
                    )
                )
        return RecordTable(out)

    def metric_rows(
        self,
        keys: Sequence[ResultRef | tuple[str, str, str]] | None = None,
        *,
        unit_of: UnitOf | None = None,
    ) -> list[dict[str, Any]]:
        """The flat rows of :meth:`records` (:meth:`RecordTable.to_rows`): ``{variant,
        variant_source, variant_seed, variant_name, probe, metric, value, <params>..., unit, noisy}``."""
        return self.records(keys, unit_of=unit_of).to_rows()

    def count_results(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _unit(probe: str, metric: str, stored: str, unit_of: UnitOf | None) -> str:
    """The unit of a stored metric (see :meth:`Store.records`)."""
    if stored in UNITS:
        return stored
    declared = unit_of(probe, metric) if unit_of is not None else ""
    return declared or canonical_unit(stored)


if TYPE_CHECKING:

    def _is_a_sink(store: Store) -> ResultSink:
        """mypy checks here that :class:`Store` implements :class:`compaudit.results.ResultSink`."""
        return store
