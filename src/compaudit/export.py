"""The flat results table of a run, written as JSON, CSV or Parquet and read back as one DataFrame.

One row per metric: ``variant``, ``probe``, ``metric``, ``value``, then whatever identifies the
measurement (each probe its own keys: ``split``, ``batch_size``, ``attack``, ``eps``, …), then
``unit`` and ``noisy``. Columns come in the order they first appear in the run's plan.

``unit`` is the unit the probe declares for the metric (its ``units`` table, stamped on every
metric when it is measured; for results stored before probes declared units, the declaration of
the registered probe): one of :data:`compaudit.units.UNITS`. ``value`` is always the stored
number, never scaled: a ``fraction`` of 0.48 is 48%, a ``pp`` of 0.015 is +1.5 percentage points.

============  ==========================================================
unit          the value is
============  ==========================================================
fraction      a share in [0, 1] (accuracies, rates, sparsity)
pp            a difference of two fractions (deltas of accuracies)
bytes         a size in bytes
ms / s        milliseconds / seconds
MACs          multiply-accumulate operations
params        a count of parameters
bits          bits per stored weight
count         a count of samples or events
ratio         a dimensionless ratio (mCE: 1 = as the baseline)
p-value       a test's p-value
statistic     a test statistic
nats          a log-loss in nats (NLL)
norm          a perturbation's size in the attack's norm, in input units
score         a dimensionless score on its own scale (SSIM, silhouette)
flag          1.0 (yes) or 0.0 (no)
============  ==========================================================

:func:`compaudit.units.format_value` shows a value as the report does.

Beside ``variant`` (the display label, ``amazon/seed0/int8``), every row names the variant's
identity as data: ``variant_source`` (the source domain, ``""`` for a single-source experiment),
``variant_seed`` (the run's seed, missing for a single-seed experiment) and ``variant_name`` (its name
in the experiment). Select by these columns; never parse ``variant``.

:func:`export_frame` and :func:`load_export` give the same :class:`pandas.DataFrame`, built by one
normalisation (:func:`rows_frame`, the column types of :mod:`compaudit.records`):

- ``variant``, ``variant_source``, ``variant_name``, ``probe``, ``metric``, ``unit``: ``string``;
  ``variant_seed``: ``Int64`` (``<NA>`` without a seed); ``value``: ``float64`` (a missing or NaN
  value is NaN); ``noisy``: ``bool``.
- every other column holds one key of the metrics' params. A key a row lacks is ``<NA>``. Its dtype
  is that of its values: all ``bool`` → ``boolean``, all ``int`` → ``Int64``, ``int`` and ``float``
  → ``Float64``, all ``str`` → ``string``. A key whose values have other mixes of types (an ``int``
  for one probe, a ``str`` for another) or are lists becomes a ``string`` column: strings stay as
  they are, anything else is written as JSON (``1``, ``0.5``, ``true``, ``[1, 2]``). A key with no
  value at all is a ``string`` column of ``<NA>``.

Every format gives the same frame back. JSON keeps each value's type, so the same normalisation
gives the same columns; Parquet keeps the frame's. CSV keeps none by itself, so its first line
declares them::

    # compaudit-export types: {"variant": "string", ..., "split": "string", "batch_size": "Int64"}
    variant,variant_source,variant_seed,variant_name,probe,metric,value,split,batch_size,unit,noisy

and :func:`load_export` reads each column as its declared type: a class named ``"0"`` stays text, a
seed stays an integer. A missing cell is empty; an empty text is ``""`` (quoted), so the two stay
apart; a field is quoted only where it must be (empty, or holding ``,``, ``"`` or a line break).
Other CSV readers skip the first line (``pandas.read_csv(path, skiprows=1)``). A CSV written before
the types line existed is still read, each cell as what it looks like (an empty cell is missing,
``True``/``False`` a bool, ``3`` an int, ``0.5`` or ``nan`` a float, ``[…]`` a list, else text).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compaudit.errors import CompauditError
from compaudit.probes import declared_unit
from compaudit.records import (
    CORE_COLUMNS,
    ColumnType,
    check_column_type,
    column_types,
    typed_cell,
    typed_columns,
)
from compaudit.store import Store, write_atomic

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CORE_COLUMNS",
    "FORMATS",
    "TEXT_COLUMNS",
    "Format",
    "dumps",
    "export_format",
    "export_frame",
    "export_rows",
    "load_export",
    "rows_frame",
    "write_export",
]

Format = Literal["csv", "json", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "json", "parquet")
#: the fixed text columns of every row (the rest of :data:`CORE_COLUMNS`: value, seed, noisy)
TEXT_COLUMNS = ("variant", "variant_source", "variant_name", "probe", "metric", "unit")

#: the first line of a CSV export: this prefix, then the JSON object ``{column: type}``
CSV_TYPES_PREFIX = "# compaudit-export types: "
_SUFFIXES: dict[str, Format] = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(nan|inf)")
#: one CSV field: quoted (group 1, ``""`` an escaped quote) or bare (group 2, possibly empty)
_CSV_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^,"\r\n]*)')
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def export_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The flat records of a run folder, in the order of its plan (see :meth:`Store.records`;
    results stored before probes declared units get the unit the registered probe declares)."""
    with Store(Path(run_dir)) as store:
        return store.metric_rows(store.plan_refs(), unit_of=declared_unit)


def export_format(name: str) -> Format:
    """``name`` if it is one of :data:`FORMATS`; a :class:`CompauditError` naming them otherwise."""
    for fmt in FORMATS:
        if name == fmt:
            return fmt
    raise CompauditError(f"unknown export format {name!r}; choose one of: {', '.join(FORMATS)}")


def _csv_field(text: str | None) -> str:
    """A CSV field: a missing cell empty, an empty text ``""``, quotes only where needed."""
    if text is None:
        return ""
    if not text or _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _cell_text(value: Any, kind: ColumnType) -> str | None:
    """The text of a typed cell (:func:`compaudit.records.typed_cell`); ``None`` when missing."""
    if kind == "float64" and value != value:  # NaN: this column's missing value
        return None
    if value is None:
        return None
    if kind in ("Float64", "float64"):
        return repr(float(value))  # the shortest text that reads back as the same float
    return str(value)  # str, int, or a bool as True/False


def _typed_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    types = column_types(rows)
    data = typed_columns(rows, types)
    lines = [CSV_TYPES_PREFIX + json.dumps(types), ",".join(_csv_field(c) for c in types)]
    for i in range(len(rows)):
        lines.append(",".join(_csv_field(_cell_text(data[c][i], kind)) for c, kind in types.items()))
    return "\n".join(lines) + "\n"


def dumps(rows: Sequence[dict[str, Any]], fmt: Literal["csv", "json"]) -> str:
    """The records as JSON (a list of objects) or CSV (one column per key, its first line declaring
    the columns' types), as ``export`` prints them."""
    if fmt == "json":
        return json.dumps(list(rows), indent=1) + "\n"
    return _typed_csv(rows)


def rows_frame(
    rows: Sequence[Mapping[str, Any]], types: Mapping[str, ColumnType] | None = None
) -> pd.DataFrame:
    """One DataFrame of the records: one column per key, typed as the module doc describes
    (``types``: the declared type of each column, in order; by default the types of the rows)."""
    import numpy as np
    import pandas as pd

    kinds = column_types(rows) if types is None else types
    data: dict[str, Any] = {}
    for c, values in typed_columns(rows, kinds).items():
        kind = kinds[c]
        if kind in ("float64", "bool"):
            data[c] = np.array(values, dtype=np.float64 if kind == "float64" else bool)
        else:
            data[c] = pd.array(values, dtype=kind)
    return pd.DataFrame(data, columns=list(kinds))


def export_frame(run_dir: str | Path) -> pd.DataFrame:
    """The flat results table of a run folder as a DataFrame (what :func:`load_export` reads back)."""
    return rows_frame(export_rows(run_dir))


def write_export(run_dir: str | Path, out: str | Path, fmt: Format) -> None:
    """Write the results table of ``run_dir`` to the file ``out``, atomically (text as UTF-8 bytes,
    so a line break inside a value is written as it is on every platform)."""
    rows, out = export_rows(run_dir), Path(out)
    if fmt == "parquet":
        buf = io.BytesIO()
        rows_frame(rows).to_parquet(buf, index=False, engine="pyarrow")
        write_atomic(out, buf.getvalue())
    else:
        write_atomic(out, dumps(rows, fmt).encode("utf-8"))


def _csv_cell(text: str | None) -> Any:
    if not text:
        return None
    if text in ("True", "False"):
        return text == "True"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text[0] in "[{":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


def _legacy_csv_rows(text: str) -> list[dict[str, Any]]:
    """The records of a CSV written before the types line existed, each cell read as it looks."""
    rows: list[dict[str, Any]] = []
    for rec in csv.DictReader(io.StringIO(text, newline="")):
        row: dict[str, Any] = {}
        for k, v in rec.items():
            if k in TEXT_COLUMNS:
                row[k] = v
            elif k == "value":
                row[k] = float(v) if v else None
            elif k == "noisy":
                row[k] = v == "True"
            else:
                row[k] = _csv_cell(v)
        rows.append(row)
    return rows


def _csv_records(text: str, start: int, where: str) -> list[list[str | None]]:
    """The records of CSV ``text`` from offset ``start``: each a list of fields, ``None`` for a bare
    empty field (a missing cell) and ``""`` for a quoted one (an empty text). Python's :mod:`csv`
    reads both as ``""``, hence this reader; it accepts exactly what :func:`_csv_field` writes
    (lines ending in ``\\n`` or ``\\r\\n``, RFC 4180 quoting)."""
    records: list[list[str | None]] = []
    pos, end = start, len(text)
    while pos < end:
        fields: list[str | None] = []
        while True:
            m = _CSV_FIELD.match(text, pos)
            assert m is not None  # the bare alternative matches the empty string
            quoted, bare = m.groups()
            fields.append(quoted.replace('""', '"') if quoted is not None else (bare or None))
            pos = m.end()
            if pos < end and text[pos] == ",":
                pos += 1
                continue
            break
        if text.startswith("\r\n", pos):
            pos += 2
        elif text.startswith("\n", pos):
            pos += 1
        elif pos < end:
            line = text.count("\n", 0, pos) + 1
            raise CompauditError(f"{where}: malformed CSV on line {line} (a stray quote?)")
        records.append(fields)
    return records


def _bool_cell(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"not True or False: {text!r}")
    return text == "True"


def _read_cell(text: str | None, kind: ColumnType) -> Any:
    """A CSV cell of a column declared ``kind`` as :func:`compaudit.records.typed_cell` holds it."""
    if kind == "string":
        return text
    if not text:
        if kind == "bool":
            raise ValueError("an empty cell in a column that is never missing")
        return typed_cell(None, kind)
    if kind == "Int64":
        return int(text)
    if kind in ("Float64", "float64"):
        return float(text)
    return _bool_cell(text)


def _typed_csv_frame(text: str, where: str) -> pd.DataFrame:
    """The frame of a CSV whose first line declares its column types (:func:`dumps`)."""
    first, _, _ = text.partition("\n")
    try:
        declared = json.loads(first[len(CSV_TYPES_PREFIX) :])
        if not isinstance(declared, dict):
            raise ValueError("not an object")
        types = {str(c): check_column_type(str(k)) for c, k in declared.items()}
    except ValueError as exc:  # json.JSONDecodeError is one
        raise CompauditError(f"{where}: malformed column types on line 1 ({exc})") from None
    records = _csv_records(text, len(first) + 1, where)
    if not records or records[0] != list(types):
        raise CompauditError(f"{where}: the header on line 2 does not name the columns line 1 declares")
    rows: list[dict[str, Any]] = []
    for n, fields in enumerate(records[1:], start=3):
        if len(fields) != len(types):
            raise CompauditError(f"{where}: record {n} has {len(fields)} fields, not {len(types)}")
        try:
            rows.append({c: _read_cell(f, k) for f, (c, k) in zip(fields, types.items(), strict=True)})
        except ValueError as exc:
            raise CompauditError(f"{where}: record {n}: {exc}") from None
    return rows_frame(rows, types)


def _guess_format(path: Path) -> Format:
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is not None:
        return fmt
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PAR1":
        return "parquet"
    return "json" if head.lstrip()[:1] == b"[" else "csv"


def load_export(path: str | Path, *, format: Format | None = None) -> pd.DataFrame:
    """Read a file written by ``compaudit export`` back into the DataFrame :func:`export_frame` gives.

    The format comes from ``format``, else the file's suffix (``.csv``, ``.json``, ``.parquet``,
    ``.pq``), else its first bytes. A CSV is read with the column types its first line declares.
    """
    path = Path(path)
    if not path.is_file():
        raise CompauditError(f"export file {str(path)!r} does not exist")
    fmt = export_format(format) if format is not None else _guess_format(path)
    if fmt == "parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path, engine="pyarrow")
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise CompauditError(f"{path}: not a readable Parquet file ({exc})") from exc
    try:
        text = path.read_bytes().decode("utf-8")  # no newline translation: a value may hold "\r"
    except UnicodeDecodeError as exc:
        raise CompauditError(f"{path}: not UTF-8 text ({exc})") from None
    if fmt == "csv":
        if text.startswith(CSV_TYPES_PREFIX):
            return _typed_csv_frame(text, str(path))
        return rows_frame(_legacy_csv_rows(text))
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompauditError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CompauditError(f"{path}: expected a JSON list of records")
    return rows_frame(rows)
