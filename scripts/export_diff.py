"""Compare two exports of a run (``compaudit export DIR --format json``) row by row.

Used to show that a refactoring changed no number: rows are matched on every column except
``value``; wall-clock rows (``noisy``) are counted, not compared; columns that only one side has
are listed and left out of the match (``--ignore-column`` leaves out more). Exit code 1 when a
compared value or unit differs, or a row is on one side only.

    python scripts/export_diff.py before.json after.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_VALUE = "value"


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise SystemExit(f"{path}: not a JSON export (a list of rows)")
    return rows


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _key(row: dict[str, Any], columns: list[str]) -> str:
    return json.dumps({c: row.get(c) for c in columns}, sort_keys=True, default=str)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--ignore-column", action="append", default=[])
    args = ap.parse_args(argv)
    a, b = _rows(args.before), _rows(args.after)
    cols_a = {c for r in a for c in r}
    cols_b = {c for r in b for c in r}
    only_a, only_b = sorted(cols_a - cols_b), sorted(cols_b - cols_a)
    print(f"rows: before {len(a)}, after {len(b)}")
    print(f"columns only before: {only_a or 'none'}; only after: {only_b or 'none'}")
    ignored = set(only_a) | set(only_b) | set(args.ignore_column) | {_VALUE, "unit"}
    columns = sorted((cols_a & cols_b) - ignored)
    index_a = {_key(r, columns): r for r in a}
    index_b = {_key(r, columns): r for r in b}
    if len(index_a) != len(a) or len(index_b) != len(b):
        print("warning: some rows share every compared column; the last of each is compared")
    noisy = differ = 0
    by_metric: Counter[str] = Counter()
    for k, ra in index_a.items():
        rb = index_b.get(k)
        if rb is None:
            continue
        if ra.get("noisy") or rb.get("noisy"):
            noisy += 1
            continue
        if not _same(ra.get(_VALUE), rb.get(_VALUE)) or ra.get("unit") != rb.get("unit"):
            differ += 1
            by_metric[f"{ra['probe']}.{ra['metric']}"] += 1
            if differ <= 20:
                was, now = f"{ra.get(_VALUE)!r} {ra.get('unit')}", f"{rb.get(_VALUE)!r} {rb.get('unit')}"
                print(f"differs: {k}: {was} -> {now}")
    missing = [k for k in index_a if k not in index_b]
    added = [k for k in index_b if k not in index_a]
    for what, keys in (("only before", missing), ("only after", added)):
        counts = Counter(f"{json.loads(k)['probe']}.{json.loads(k)['metric']}" for k in keys)
        print(f"rows {what}: {len(keys)} {dict(counts) if counts else ''}")
    print(f"wall-clock rows (noisy, not compared): {noisy}")
    print(f"compared rows that differ: {differ} {dict(by_metric) if by_metric else ''}")
    return 1 if differ or missing or added else 0


if __name__ == "__main__":
    sys.exit(main())
