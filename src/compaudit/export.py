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

:func:`export_frame` and :func:`load_export` give the same :class:`pandas.DataFrame`, built by one
normalisation (:func:`rows_frame`):

- ``variant``, ``probe``, ``metric``, ``unit``: ``string``; ``value``: ``float64`` (a missing or NaN
  value is NaN); ``noisy``: ``bool``.
- every other column holds one key of the metrics' params. A key a row lacks is ``<NA>``. Its dtype
  is that of its values: all ``bool`` → ``boolean``, all ``int`` → ``Int64``, ``int`` and ``float``
  → ``Float64``, all ``str`` → ``string``. A key whose values have other mixes of types (an ``int``
  for one probe, a ``str`` for another) or are lists becomes a ``string`` column: strings stay as
  they are, anything else is written as JSON (``1``, ``0.5``, ``true``, ``[1, 2]``). A key with no
  value at all is a ``string`` column of ``<NA>``.

JSON and Parquet keep every type. CSV keeps none, so :func:`load_export` reads each CSV cell the way
it looks: an empty cell is missing, ``True``/``False`` a bool, ``3`` an int, ``0.5`` or ``nan`` a
float, ``[…]`` a list, anything else text. A text param that looks like a number, a bool or nothing
(``"8"``, ``"True"``, ``""``) therefore comes back from CSV changed; use JSON or Parquet to keep it.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compaudit.errors import CompauditError
from compaudit.store import Store, write_atomic

if TYPE_CHECKING:
    import pandas as pd

Format = Literal["csv", "json", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "json", "parquet")
#: the columns every row has; the rest are the metrics' params
TEXT_COLUMNS = ("variant", "probe", "metric", "unit")
CORE_COLUMNS = ("variant", "probe", "metric", "value", "unit", "noisy")

_SUFFIXES: dict[str, Format] = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(nan|inf)")


def export_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The flat records of a run folder, in the order of its plan (see :meth:`Store.metric_rows`)."""
    with Store(Path(run_dir)) as store:
        plan = store.meta("plan", []) or []
        return store.metric_rows([(j["variant"], j["probe"], j["key"]) for j in plan])


def export_format(name: str) -> Format:
    """``name`` if it is one of :data:`FORMATS`; a :class:`CompauditError` naming them otherwise."""
    for fmt in FORMATS:
        if name == fmt:
            return fmt
    raise CompauditError(f"unknown export format {name!r}; choose one of: {', '.join(FORMATS)}")


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    seen: set[str] = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def dumps(rows: Sequence[dict[str, Any]], fmt: Literal["csv", "json"]) -> str:
    """The records as JSON (a list of objects) or CSV (one column per key), as ``export`` prints them."""
    if fmt == "json":
        return json.dumps(list(rows), indent=1) + "\n"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _param_array(values: list[Any]) -> Any:
    import pandas as pd

    present = [v for v in values if v is not None]
    types = {type(v) for v in present}
    if types == {bool}:
        return pd.array(values, dtype="boolean")
    if types == {int}:
        return pd.array(values, dtype="Int64")
    if types and types <= {int, float}:
        return pd.array([None if v is None else float(v) for v in values], dtype="Float64")
    if types <= {str}:
        return pd.array(values, dtype="string")
    text = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
    return pd.array(text, dtype="string")


def rows_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One DataFrame of the records: one column per key, typed as the module doc describes."""
    import numpy as np
    import pandas as pd

    cols = _columns(rows) if rows else list(CORE_COLUMNS)
    data: dict[str, Any] = {}
    for c in cols:
        values = [r.get(c) for r in rows]
        if c in TEXT_COLUMNS:
            data[c] = pd.array(values, dtype="string")
        elif c == "value":
            data[c] = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        elif c == "noisy":
            data[c] = np.array([bool(v) for v in values], dtype=bool)
        else:
            data[c] = _param_array(values)
    return pd.DataFrame(data, columns=cols)


def export_frame(run_dir: str | Path) -> pd.DataFrame:
    """The flat results table of a run folder as a DataFrame (what :func:`load_export` reads back)."""
    return rows_frame(export_rows(run_dir))


def write_export(run_dir: str | Path, out: str | Path, fmt: Format) -> None:
    """Write the results table of ``run_dir`` to the file ``out``, atomically."""
    rows, out = export_rows(run_dir), Path(out)
    if fmt == "parquet":
        buf = io.BytesIO()
        rows_frame(rows).to_parquet(buf, index=False, engine="pyarrow")
        write_atomic(out, buf.getvalue())
    else:
        write_atomic(out, dumps(rows, fmt))


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


def _csv_rows(text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rec in csv.DictReader(io.StringIO(text)):
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
    ``.pq``), else its first bytes.
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
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        return rows_frame(_csv_rows(text))
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompauditError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CompauditError(f"{path}: expected a JSON list of records")
    return rows_frame(rows)
