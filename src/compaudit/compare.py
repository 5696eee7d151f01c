"""Compare two runs: which measurements changed, appeared or disappeared, and why they might have.

Metric records of the two runs are matched by ``(variant, probe, metric, params)``: the variant
*name* is the link, so the same experiment rerun with a change and two different experiments
(variants named alike) compare the same way. A matched pair whose values differ by more than
``tolerance`` (absolute) is a difference; wall-clock numbers (``noisy``: latency) are listed apart
and never counted as one. Beside the numbers, the comparison shows what could explain them: a
unified diff of the two experiment files, the environment keys whose values differ, and each
variant's content key (the same key means the same weights, so a difference there comes from a
probe's parameters or from a run that is not deterministic).

Usage::

    comp = compare_runs(Path("runs/a"), Path("runs/b"), tolerance=1e-9)
    comp.differences            # MetricDiff per changed value, largest relative change first
    write_comparison(comp)      # runs/b/compare-a.html
    print(comp.summary_text())  # what ``compaudit compare`` prints
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from compaudit._version import __version__
from compaudit.elements import Cell, Table
from compaudit.errors import CompauditError
from compaudit.probes import declared_unit
from compaudit.records import MetricRecord, RecordTable
from compaudit.store import DB_NAME, Store, is_run_dir, write_atomic
from compaudit.units import difference_unit, format_precise

__all__ = [
    "Comparison",
    "MetricDiff",
    "ProbeCounts",
    "RunInfo",
    "VariantKeys",
    "compare_command",
    "compare_runs",
    "default_path",
    "render_comparison",
    "write_comparison",
]

#: how many differences the terminal summary lists
TOP = 10


# ---------------------------------------------------------------------------- typed results


@dataclass(frozen=True)
class MetricDiff:
    """A measurement present in both runs: its value in A and in B (``None``: not a number)."""

    variant: str
    probe: str
    metric: str
    params: Mapping[str, Any]
    unit: str
    a: float | None
    b: float | None
    noisy: bool = False
    #: the result key (variant weights + probe and its parameters) is the same in both runs, so the
    #: value should be too: a difference means a run is not deterministic
    same_key: bool = False

    @property
    def params_text(self) -> str:
        return _params_text(self.params)

    @property
    def delta(self) -> float | None:
        """``b - a``; ``None`` when either side is not a number."""
        if self.a is None or self.b is None:
            return None
        if self.a == self.b:  # also inf == inf, whose difference would be nan
            return 0.0
        return self.b - self.a

    @property
    def relative(self) -> float | None:
        """``(b - a) / |a|``; ``None`` when ``a`` is 0 or either side is not a number."""
        d = self.delta
        if d is None or self.a == 0 or self.a is None or math.isinf(self.a):
            return None
        return d / abs(self.a)

    def size(self) -> tuple[float, float]:
        """Sort key of "largest": the relative change (unit-free, so bytes and accuracies compare),
        then the absolute one; a change from 0 or to/from not-a-number counts as infinite."""
        d, r = self.delta, self.relative
        if d is None:
            return (math.inf, math.inf)
        return (math.inf if r is None else abs(r), abs(d))


@dataclass(frozen=True)
class ProbeCounts:
    """Per probe: matched non-noisy records, how many of them differ, unmatched records, noisy ones."""

    probe: str
    compared: int = 0
    differing: int = 0
    only_a: int = 0
    only_b: int = 0
    noisy: int = 0


@dataclass(frozen=True)
class VariantKeys:
    """A variant's content key in each run (``None``: the run has no variant of that name).

    The key hashes everything the variant's weights depend on: the same key means the same weights.
    """

    name: str
    key_a: str | None
    key_b: str | None
    #: the other run's name for a variant of the same key (a renamed variant)
    renamed: str | None = None
    #: non-noisy differences of this variant's records
    differing: int = 0

    @property
    def status(self) -> str:
        if self.key_a is None:
            return f"only in B (renamed from {self.renamed})" if self.renamed else "only in B"
        if self.key_b is None:
            return f"only in A (renamed to {self.renamed})" if self.renamed else "only in A"
        return "unchanged" if self.key_a == self.key_b else "changed"


@dataclass(frozen=True)
class RunInfo:
    path: Path
    name: str
    status: str
    finished: str
    experiment: str
    environment: dict[str, Any]


@dataclass
class Comparison:
    """What differs between run A and run B (see the module docstring)."""

    a: RunInfo
    b: RunInfo
    tolerance: float
    #: matched non-noisy records whose values differ by more than ``tolerance``, largest first
    differences: list[MetricDiff] = field(default_factory=list)
    #: matched noisy (wall-clock) records, in run order; never counted as differences
    noisy: list[MetricDiff] = field(default_factory=list)
    only_a: list[MetricRecord] = field(default_factory=list)
    only_b: list[MetricRecord] = field(default_factory=list)
    probes: list[ProbeCounts] = field(default_factory=list)
    variants: list[VariantKeys] = field(default_factory=list)
    #: unified diff of the experiment files (empty: identical)
    experiment_diff: list[str] = field(default_factory=list)
    #: (key, value in A, value in B) of the environment keys whose values differ (None: absent)
    environment: list[tuple[str, Any, Any]] = field(default_factory=list)
    #: results that failed or are missing in either run, and other things a reader should know
    warnings: list[str] = field(default_factory=list)
    #: matched non-noisy records (differing or not)
    compared: int = 0

    @property
    def identical(self) -> bool:
        """No difference and no unmatched record (noisy values and the files may still differ)."""
        return not (self.differences or self.only_a or self.only_b)

    def summary_text(self, top: int = TOP) -> str:
        """A short terminal summary: counts per probe and the ``top`` largest differences."""
        lines = [
            f"compare A = {self.a.path} ({self.a.name}) with B = {self.b.path} ({self.b.name}), "
            f"tolerance {self.tolerance:g}",
        ]
        by_status: dict[str, list[str]] = {}
        for v in self.variants:
            by_status.setdefault(v.status.split(" (")[0], []).append(v.name)
        parts = []
        for st in ("unchanged", "changed", "only in A", "only in B"):
            names = by_status.get(st, [])
            if names:
                shown = "" if st == "unchanged" else f" ({_names(names)})"
                parts.append(f"{len(names)} {st}{shown}")
        lines.append(f"variants (by key): {', '.join(parts) or 'none'}")
        lines.append(f"{'probe':<20} {'compared':>8} {'differ':>7} {'only A':>7} {'only B':>7} {'noisy':>6}")
        for p in self.probes:
            lines.append(
                f"{p.probe:<20} {p.compared:>8} {p.differing:>7} {p.only_a:>7} {p.only_b:>7} {p.noisy:>6}"
            )
        lines.append(
            f"{'total':<20} {self.compared:>8} {len(self.differences):>7} {len(self.only_a):>7} "
            f"{len(self.only_b):>7} {len(self.noisy):>6}"
        )
        if self.differences:
            shown_diffs = self.differences[:top]
            lines.append(
                f"largest differences by relative change ({len(shown_diffs)} of {len(self.differences)}):"
            )
            for d in shown_diffs:
                what = " · ".join(x for x in (d.variant, d.probe, d.metric, d.params_text) if x)
                lines.append(
                    f"  {what}: {_num(d.a, d.unit)} -> {_num(d.b, d.unit)} "
                    f"({_signed(d.delta, d.unit)}, {_rel(d.relative)})"
                )
        else:
            lines.append("no value differs" + (" beyond the tolerance" if self.tolerance else ""))
        changed = [
            ln
            for ln in self.experiment_diff
            if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))
        ]
        if changed:
            lines.append(f"experiment file: {len(changed)} line(s) differ")
            lines.extend(f"  {ln}" for ln in changed[:top])
            if len(changed) > top:
                lines.append(f"  … {len(changed) - top} more")
        else:
            lines.append("experiment file: identical")
        if self.environment:
            env = ", ".join(f"{k} ({_plain(x)} -> {_plain(y)})" for k, x, y in self.environment)
            lines.append(f"environment differs: {env}")
        else:
            lines.append("environment: identical")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# ---------------------------------------------------------------------------- comparing


@dataclass
class _Run:
    info: RunInfo
    records: RecordTable
    variant_keys: dict[str, str]  # variant name -> content key, in plan order
    result_keys: dict[tuple[str, str], str]  # (variant name, probe) -> result key
    problems: list[str]


def _check_run(path: Path, which: str) -> None:
    if not path.exists():
        raise CompauditError(f"run {which}: {str(path)!r} does not exist")
    if not is_run_dir(path):
        raise CompauditError(f"run {which}: {str(path)!r} is not a compaudit run folder (no {DB_NAME})")


def _load(path: Path) -> _Run:
    with Store(path) as store:
        plan: list[dict[str, str]] = store.meta("plan", []) or []
        refs = store.plan_refs()
        records = store.records(refs, unit_of=declared_unit)
        problems: list[str] = []
        for v, p, k, _ in refs:
            res = store.result(k)
            if res is None:
                problems.append(f"{v} × {p}: not run")
            elif res.status == "error":
                last = (res.error or "").strip().splitlines()[-1:] or ["no message"]
                problems.append(f"{v} × {p}: failed ({last[0]})")
        created = store.meta("finished") or store.meta("started")
        info = RunInfo(
            path=path,
            name=str(store.meta("name", path.resolve().name)),
            status=str(store.meta("status", "unknown")),
            finished=(
                dt.datetime.fromtimestamp(float(created), tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                if created
                else "–"
            ),
            experiment=str(store.meta("experiment", "") or ""),
            environment=dict(store.meta("environment", {}) or {}),
        )
    variant_keys: dict[str, str] = {}
    for j in plan:
        if j.get("variant_key"):  # selection rows have none: they are no variant
            variant_keys.setdefault(j["variant"], j["variant_key"])
    result_keys = {(v, p): k for v, p, k, _ in refs}
    return _Run(info, records, variant_keys, result_keys, problems)


def _index(records: Iterable[MetricRecord]) -> dict[tuple[str, str, str, str, int], MetricRecord]:
    """Records keyed by (variant, probe, metric, canonical params, occurrence): a measurement
    stored twice under the same identity is matched in order rather than lost."""
    out: dict[tuple[str, str, str, str, int], MetricRecord] = {}
    seen: dict[tuple[str, str, str, str], int] = {}
    for r in records:
        ident = (r.variant, r.probe, r.metric, json.dumps(r.params, sort_keys=True, default=str))
        n = seen.get(ident, 0)
        seen[ident] = n + 1
        out[(*ident, n)] = r
    return out


def _differs(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    if a == b:
        return False
    return not abs(b - a) <= tolerance  # inf - inf is nan: a difference


def compare_runs(a: Path, b: Path, *, tolerance: float = 0.0) -> Comparison:
    """Compare run folder ``a`` with run folder ``b`` (``b`` is the "new" side: deltas are B - A).

    Raises :class:`CompauditError` (one line) for a folder that is not a run or a tolerance that is
    not a finite number ≥ 0. The same folder twice is allowed and gives no difference.
    """
    try:
        tol = float(tolerance)
    except (TypeError, ValueError):
        raise CompauditError(f"tolerance must be a number >= 0 (got {tolerance!r})") from None
    if not math.isfinite(tol) or tol < 0:
        raise CompauditError(f"tolerance must be a finite number >= 0 (got {tolerance!r})")
    a, b = Path(a), Path(b)
    _check_run(a, "A")
    _check_run(b, "B")
    ra, rb = _load(a), _load(b)

    ia, ib = _index(ra.records), _index(rb.records)
    probes: list[str] = []
    for r in (*ra.records, *rb.records):
        if r.probe not in probes:
            probes.append(r.probe)
    counts: dict[str, dict[str, int]] = {
        p: dict.fromkeys(("compared", "differing", "only_a", "only_b", "noisy"), 0) for p in probes
    }
    comp = Comparison(a=ra.info, b=rb.info, tolerance=tol)
    per_variant: dict[str, int] = {}
    for key, ra_rec in ia.items():
        rb_rec = ib.get(key)
        c = counts[ra_rec.probe]
        if rb_rec is None:
            comp.only_a.append(ra_rec)
            c["only_a"] += 1
            continue
        diff = MetricDiff(
            variant=ra_rec.variant,
            probe=ra_rec.probe,
            metric=ra_rec.metric,
            params=ra_rec.params,
            unit=ra_rec.unit or rb_rec.unit,
            a=ra_rec.value,
            b=rb_rec.value,
            noisy=ra_rec.noisy or rb_rec.noisy,
            same_key=ra.result_keys.get(key[:2]) == rb.result_keys.get(key[:2]),
        )
        if diff.noisy:
            comp.noisy.append(diff)
            c["noisy"] += 1
            continue
        c["compared"] += 1
        comp.compared += 1
        if _differs(diff.a, diff.b, tol):
            comp.differences.append(diff)
            c["differing"] += 1
            per_variant[diff.variant] = per_variant.get(diff.variant, 0) + 1
    for key, rb_rec in ib.items():
        if key not in ia:
            comp.only_b.append(rb_rec)
            counts[rb_rec.probe]["only_b"] += 1
    comp.differences.sort(key=MetricDiff.size, reverse=True)  # stable: run order among equals
    comp.probes = [ProbeCounts(p, **counts[p]) for p in probes]

    # variants by content key
    by_key_a = {k: n for n, k in ra.variant_keys.items()}
    by_key_b = {k: n for n, k in rb.variant_keys.items()}
    names = list(ra.variant_keys) + [n for n in rb.variant_keys if n not in ra.variant_keys]
    for n in names:
        ka, kb = ra.variant_keys.get(n), rb.variant_keys.get(n)
        renamed = None
        if kb is None and ka is not None:
            renamed = by_key_b.get(ka)
        elif ka is None and kb is not None:
            renamed = by_key_a.get(kb)
        comp.variants.append(VariantKeys(n, ka, kb, renamed, per_variant.get(n, 0)))

    # what could explain the differences
    comp.experiment_diff = list(
        difflib.unified_diff(
            ra.info.experiment.splitlines(),
            rb.info.experiment.splitlines(),
            fromfile=f"A: {a}",
            tofile=f"B: {b}",
            lineterm="",
        )
    )
    env_a, env_b = ra.info.environment, rb.info.environment
    for k in [*env_a, *(k for k in env_b if k not in env_a)]:
        if env_a.get(k) != env_b.get(k):
            comp.environment.append((k, env_a.get(k), env_b.get(k)))

    same = [d for d in comp.differences if d.same_key]
    if same:
        comp.warnings.append(
            f"{len(same)} value(s) differ although their result key is the same in both runs (same "
            f"weights, same probe parameters), in {_names(_unique(d.variant for d in same))}: the runs "
            "are not deterministic (another device, thread count or library version?)"
        )
    unchanged = {v.name for v in comp.variants if v.status == "unchanged"}
    reprobed = [d for d in comp.differences if not d.same_key and d.variant in unchanged]
    if reprobed:
        comp.warnings.append(
            f"{len(reprobed)} value(s) of variant(s) with unchanged weights differ because the probe or "
            f"its parameters changed: {_names(_unique(d.probe for d in reprobed))}"
        )
    for side, run in (("A", ra), ("B", rb)):
        if run.info.status != "complete":
            comp.warnings.append(f"run {side} is {run.info.status!r}, not complete")
        comp.warnings.extend(f"run {side}: {p}" for p in run.problems)
    return comp


# ---------------------------------------------------------------------------- the page


def default_path(comp: Comparison) -> Path:
    """``RUN_B/compare-<RUN_A folder name>.html``."""
    return comp.b.path / f"compare-{comp.a.path.resolve().name}.html"


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in params.items())


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f", … {len(names) - limit} more" if len(names) > limit else "")


def _num(v: float | None, unit: str) -> str:
    """A value in its unit with enough digits to tell close values apart."""
    return format_precise(v, unit)


def _signed(v: float | None, unit: str) -> str:
    """A difference ``B - A`` of two values of ``unit``, signed, in the unit of a difference
    (two fractions differ by percentage points)."""
    return format_precise(v, difference_unit(unit), signed=True)


def _rel(r: float | None) -> str:
    """A relative change ``(B - A) / |A|``, a signed share of A."""
    return format_precise(r, "fraction", significant=3, signed=True)


def _sortable(v: float | None) -> float | None:
    """The number a cell sorts by (the page's script cannot parse infinities)."""
    return v if v is not None and math.isfinite(v) else None


def _record_cells(r: MetricRecord | MetricDiff) -> list[Cell]:
    return [Cell(r.variant), Cell(r.probe), Cell(r.metric), Cell(_params_text(r.params))]


def _diff_table(title: str, diffs: list[MetricDiff], note: str) -> Table:
    rows = [
        [
            *_record_cells(d),
            Cell(_num(d.a, d.unit), _sortable(d.a)),
            Cell(_num(d.b, d.unit), _sortable(d.b)),
            Cell(_signed(d.delta, d.unit), _sortable(d.delta), "changed" if d.same_key else ""),
            Cell(_rel(d.relative), _sortable(d.relative)),
        ]
        for d in diffs
    ]
    columns = ["Variant", "Probe", "Metric", "Parameters", "A", "B", "B − A", "Relative change"]
    return Table(title, columns, rows, note=note)


def _only_table(title: str, records: list[MetricRecord]) -> Table:
    rows = [[*_record_cells(r), Cell(_num(r.value, r.unit), _sortable(r.value))] for r in records]
    return Table(title, ["Variant", "Probe", "Metric", "Parameters", "Value"], rows)


def _tables(comp: Comparison) -> dict[str, Table]:
    probes = Table(
        "Per probe",
        ["Probe", "Compared", "Differing", "Only in A", "Only in B", "Noisy (not compared)"],
        [
            [
                Cell(p.probe),
                *(
                    Cell(str(n), float(n), "changed" if n and i else "")
                    for i, n in enumerate((p.compared, p.differing, p.only_a, p.only_b))
                ),
                Cell(str(p.noisy), float(p.noisy)),
            ]
            for p in comp.probes
        ],
        note="Compared: measurements present in both runs (wall-clock ones excluded); "
        f"differing: of those, the ones whose values differ by more than {comp.tolerance:g}.",
    )
    variants = Table(
        "Variants and their keys",
        ["Variant", "Status", "Key in A", "Key in B", "Differing values"],
        [
            [
                Cell(v.name),
                Cell(v.status, cls="" if v.status == "unchanged" else "changed"),
                Cell(v.key_a or "–"),
                Cell(v.key_b or "–"),
                Cell(str(v.differing), float(v.differing)),
            ]
            for v in comp.variants
        ],
        note="A variant's key hashes everything its weights depend on (data, model, seed, steps, "
        "fine-tuning): the same key means the same weights. Variants are matched by name.",
    )
    differences = _diff_table(
        "Differences",
        comp.differences,
        "Largest relative change first (a change from 0 or to/from not-a-number counts as the largest); "
        "click a header to sort. Highlighted: the result key is the same in both runs (same weights, same "
        "probe parameters), so the value should not have changed.",
    )
    noisy = _diff_table(
        "Wall-clock measurements, never counted as differences",
        comp.noisy,
        "Latency and other timings vary from one run to the next on the same machine.",
    )
    environment = Table(
        "Environment keys that differ",
        ["Key", "A", "B"],
        [[Cell(k), Cell(_plain(x)), Cell(_plain(y))] for k, x, y in comp.environment],
    )
    return {
        "probes": probes,
        "variants": variants,
        "differences": differences,
        "only_a": _only_table("Only in A", comp.only_a),
        "only_b": _only_table("Only in B", comp.only_b),
        "noisy": noisy,
        "environment": environment,
    }


def render_comparison(comp: Comparison) -> str:
    """The comparison as one self-contained HTML page (no external assets)."""
    env = Environment(
        loader=PackageLoader("compaudit.report", "templates"), autoescape=select_autoescape(["html"])
    )
    return env.get_template("compare.html").render(
        c=comp, t=_tables(comp), version=__version__, tolerance=f"{comp.tolerance:g}"
    )


def write_comparison(comp: Comparison, path: Path | None = None) -> Path:
    """Write the page of ``comp`` to ``path`` (default :func:`default_path`), atomically."""
    path = Path(path) if path is not None else default_path(comp)
    if path.is_dir():
        raise CompauditError(f"{str(path)!r} is a folder; give the comparison page a file name")
    write_atomic(path, render_comparison(comp))
    return path


def compare_command(a: Path, b: Path, out: Path | None, tolerance: float) -> str:
    """``compaudit compare RUN_A RUN_B [--out FILE.html] [--tolerance T]``: compare, write the
    page, and return the terminal summary (with the page's path on its last line)."""
    comp = compare_runs(a, b, tolerance=tolerance)
    path = write_comparison(comp, out)
    return f"{comp.summary_text()}\npage: {path}"
