"""The metric records of a run as one typed table, and the declared types of its flat columns.

Every output reads measurements the same way: the store returns a :class:`RecordTable` of
:class:`MetricRecord` (one stored metric each, with the identity of its variant as data), the
report and ``compare`` query it, and the exports flatten it into rows whose columns have declared
types (:data:`COLUMN_TYPES`, :func:`column_types`) that every export format keeps, CSV included.

This module belongs to the types layer: it imports nothing of compaudit but
:mod:`compaudit.results`, and no third-party library (the pandas side of the types lives in
:mod:`compaudit.export`).

The flat row of a record (:meth:`MetricRecord.to_row`, ``compaudit export``) has the columns
``variant``, ``variant_source``, ``variant_seed``, ``variant_name``, ``probe``, ``metric``,
``value``, then one column per key of the metric's params, then ``unit`` and ``noisy``. The identity
columns carry the ``variant_`` prefix because probes use ``source``, ``seed`` and ``name`` as params
(the shift probe's ``source_accuracy`` has a ``source``); a param named like a fixed column is
written as ``param_NAME``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, overload

from compaudit.results import VariantId

#: the type of a flat column, spelled as pandas spells the dtype that holds it:
#: ``string`` (text, ``None`` missing), ``Int64`` (int, ``None`` missing), ``Float64`` (float,
#: ``None`` missing), ``float64`` (float, NaN missing), ``boolean`` (bool, ``None`` missing),
#: ``bool`` (bool, never missing)
ColumnType = Literal["string", "Int64", "Float64", "float64", "boolean", "bool"]
COLUMN_KINDS: Final[tuple[ColumnType, ...]] = ("string", "Int64", "Float64", "float64", "boolean", "bool")

#: the identity of a record's variant as flat columns (:class:`compaudit.results.VariantId`)
IDENTITY_COLUMNS: Final[tuple[str, ...]] = ("variant_source", "variant_seed", "variant_name")
#: the fixed columns before a record's params, in order
HEAD_COLUMNS: Final[tuple[str, ...]] = ("variant", *IDENTITY_COLUMNS, "probe", "metric", "value")
#: the fixed columns after a record's params, in order
TAIL_COLUMNS: Final[tuple[str, ...]] = ("unit", "noisy")
#: every column a flat row has; the rest are the metrics' params
CORE_COLUMNS: Final[tuple[str, ...]] = (*HEAD_COLUMNS, *TAIL_COLUMNS)
#: the declared type of each fixed column
COLUMN_TYPES: Final[Mapping[str, ColumnType]] = {
    "variant": "string",
    "variant_source": "string",
    "variant_seed": "Int64",
    "variant_name": "string",
    "probe": "string",
    "metric": "string",
    "value": "float64",
    "unit": "string",
    "noisy": "bool",
}
#: prefix of a param whose name is that of a fixed column
PARAM_PREFIX: Final = "param_"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class MetricRecord:
    """One stored metric of one result.

    ``variant`` is the variant's display label (``amazon/seed0/int8``); ``source``, ``seed`` and
    ``name`` are who it is, as data (``"amazon"``, ``0``, ``"int8"``; ``""``, ``None`` and the label
    where the store knows no identity), so nothing needs to parse the label. ``value`` is ``None``
    where the measurement is not a number (NaN is stored as missing). ``params`` says what
    identifies the measurement besides its name (``{"split": "test"}``).
    """

    variant: str
    probe: str
    metric: str
    value: float | None
    unit: str = ""
    noisy: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    seed: int | None = None
    name: str = ""

    @property
    def identity(self) -> VariantId:
        """The variant's identity (its name is the label where none was stored)."""
        return VariantId(self.name or self.variant, self.source, self.seed)

    def matches(self, **params: Any) -> bool:
        """Whether every given param has the given value (a param the record lacks is ``None``)."""
        return all(self.params.get(k) == v for k, v in params.items())

    def to_row(self) -> dict[str, Any]:
        """The flat row (columns as the module doc says; a param named like a fixed column is
        ``param_NAME``)."""
        row: dict[str, Any] = {
            "variant": self.variant,
            "variant_source": self.source,
            "variant_seed": self.seed,
            "variant_name": self.name,
            "probe": self.probe,
            "metric": self.metric,
            "value": self.value,
        }
        for k, v in self.params.items():
            row[f"{PARAM_PREFIX}{k}" if k in COLUMN_TYPES else k] = v
        row["unit"] = self.unit
        row["noisy"] = self.noisy
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MetricRecord:
        """A record back from a flat row (:meth:`to_row`, or a row of an older export without the
        identity columns); a NaN value becomes ``None``, ``param_NAME`` of a fixed column ``NAME``."""
        params: dict[str, Any] = {}
        for k, v in row.items():
            if k in COLUMN_TYPES:
                continue
            if k.startswith(PARAM_PREFIX) and k[len(PARAM_PREFIX) :] in COLUMN_TYPES:
                k = k[len(PARAM_PREFIX) :]
            params[k] = v
        value = row.get("value")
        seed = row.get("variant_seed")
        return cls(
            variant=str(row["variant"]),
            probe=str(row["probe"]),
            metric=str(row["metric"]),
            value=None if value is None or math.isnan(float(value)) else float(value),
            unit=str(row.get("unit") or ""),
            noisy=bool(row.get("noisy", False)),
            params=params,
            source=str(row.get("variant_source") or ""),
            seed=None if seed is None else int(seed),
            name=str(row.get("variant_name") or ""),
        )


class RecordTable(Sequence[MetricRecord]):
    """An ordered, immutable table of :class:`MetricRecord` with the few queries the outputs need.

    The order is the store's (a run's plan order, then each result's metrics as measured), and every
    query keeps it.
    """

    __slots__ = ("_records",)

    def __init__(self, records: Iterable[MetricRecord] = ()) -> None:
        self._records: tuple[MetricRecord, ...] = tuple(records)

    @overload
    def __getitem__(self, index: int) -> MetricRecord: ...

    @overload
    def __getitem__(self, index: slice) -> RecordTable: ...

    def __getitem__(self, index: int | slice) -> MetricRecord | RecordTable:
        if isinstance(index, slice):
            return RecordTable(self._records[index])
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[MetricRecord]:
        return iter(self._records)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordTable):
            return NotImplemented
        return self._records == other._records

    def __repr__(self) -> str:
        return f"RecordTable({len(self)} records)"

    # ------------------------------------------------------------------ queries

    def where(
        self,
        *,
        variant: str | None = None,
        probe: str | None = None,
        metric: str | None = None,
        **params: Any,
    ) -> RecordTable:
        """The records of ``variant`` (label), ``probe`` and ``metric`` (``None``: any) whose params
        include ``params`` (a param a record lacks counts as ``None``)."""
        return RecordTable(
            r
            for r in self._records
            if (variant is None or r.variant == variant)
            and (probe is None or r.probe == probe)
            and (metric is None or r.metric == metric)
            and r.matches(**params)
        )

    def filter(self, keep: Callable[[MetricRecord], bool]) -> RecordTable:
        """The records for which ``keep`` is true (a query :meth:`where` cannot say: by identity)."""
        return RecordTable(r for r in self._records if keep(r))

    def first(
        self, variant: str | None = None, probe: str | None = None, metric: str | None = None, **params: Any
    ) -> MetricRecord | None:
        """The first record :meth:`where` gives, or ``None``."""
        return next(iter(self.where(variant=variant, probe=probe, metric=metric, **params)), None)

    def value(self, variant: str, probe: str, metric: str, **params: Any) -> float | None:
        """The value of the first matching record; ``None`` when there is none or it is not a number."""
        hit = self.first(variant, probe, metric, **params)
        return None if hit is None else hit.value

    def variants(self) -> list[str]:
        """The variant labels, in order of first appearance."""
        return list(dict.fromkeys(r.variant for r in self._records))

    def probes(self) -> list[str]:
        """The probe names, in order of first appearance."""
        return list(dict.fromkeys(r.probe for r in self._records))

    def identities(self) -> dict[str, VariantId]:
        """``{label: identity}`` of every variant, in order of first appearance."""
        out: dict[str, VariantId] = {}
        for r in self._records:
            out.setdefault(r.variant, r.identity)
        return out

    def distinct(self, metric: str, param: str, *, probe: str | None = None) -> list[Any]:
        """The values ``param`` takes among the records of ``metric`` (of ``probe``, if given), in
        order of first appearance; records without the param are left out."""
        out: list[Any] = []
        for r in self._records:
            if r.metric == metric and (probe is None or r.probe == probe) and param in r.params:
                v = r.params[param]
                if v not in out:
                    out.append(v)
        return out

    # ------------------------------------------------------------------ flat rows

    def to_rows(self) -> list[dict[str, Any]]:
        """The flat rows (:meth:`MetricRecord.to_row`), as ``compaudit export`` writes them."""
        return [r.to_row() for r in self._records]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> RecordTable:
        """The table back from flat rows (:meth:`MetricRecord.from_row`)."""
        return cls(MetricRecord.from_row(r) for r in rows)


# ---------------------------------------------------------------------------- column types


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of flat rows, in order of first appearance (:data:`CORE_COLUMNS` for none)."""
    if not rows:
        return list(CORE_COLUMNS)
    return list(dict.fromkeys(k for r in rows for k in r))


def param_type(values: Iterable[Any]) -> ColumnType:
    """The type of a param column, from its values (``None``: missing): all ``bool`` → ``boolean``;
    all ``int`` (within 64 bits) → ``Int64``; ``int`` and ``float`` → ``Float64``; anything else
    (all ``str``, no value at all, or a mix) → ``string``, whose non-strings are written as JSON."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        return "boolean"
    if kinds == {int}:
        return "Int64" if all(_INT64_MIN <= v <= _INT64_MAX for v in present) else "string"
    if kinds and kinds <= {int, float}:
        return "Float64"
    return "string"


def column_types(rows: Sequence[Mapping[str, Any]]) -> dict[str, ColumnType]:
    """``{column: type}`` of flat rows, in column order: the fixed columns as
    :data:`COLUMN_TYPES` declares them, the params' from their values (:func:`param_type`)."""
    return {
        c: COLUMN_TYPES[c] if c in COLUMN_TYPES else param_type(r.get(c) for r in rows) for c in columns(rows)
    }


def check_column_type(name: str) -> ColumnType:
    """``name`` if it is one of :data:`COLUMN_KINDS`; else a ``ValueError`` naming them."""
    for kind in COLUMN_KINDS:
        if name == kind:
            return kind
    raise ValueError(f"unknown column type {name!r}; choose one of: {', '.join(COLUMN_KINDS)}")


def typed_cell(value: Any, kind: ColumnType) -> Any:
    """``value`` as a column of ``kind`` holds it: ``str``/``int``/``float``/``bool``, ``None`` for a
    missing cell (NaN in ``float64``, which has no other missing value; a NaN of ``Float64`` is
    missing too). A ``string`` column holds a non-string value as its JSON text."""
    if kind == "float64":
        return math.nan if value is None else float(value)
    if kind == "bool":
        return bool(value)
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "Int64":
        return int(value)
    if kind == "Float64":
        f = float(value)
        return None if math.isnan(f) else f
    return bool(value)  # boolean


def typed_columns(
    rows: Sequence[Mapping[str, Any]], types: Mapping[str, ColumnType] | None = None
) -> dict[str, list[Any]]:
    """``{column: values}`` of flat rows, each value as :func:`typed_cell` gives it for the
    column's type (``types``, else :func:`column_types`). A row that lacks a column is missing."""
    kinds = column_types(rows) if types is None else types
    return {c: [typed_cell(r.get(c), kind) for r in rows] for c, kind in kinds.items()}
