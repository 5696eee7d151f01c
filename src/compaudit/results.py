"""What a measurement is, as every layer sees it: metrics, their declarations, warnings, results.

This is a leaf of the types layer (it imports nothing of compaudit but :mod:`compaudit.errors` and
:mod:`compaudit.units`): the probes produce these objects, the store keeps them, the report and the
exports read them. Nothing above needs to know which probe measured what to show it:

- :class:`MetricSpec` is the **one declaration of a metric**: its name, title, unit, which end is
  better, how many significant digits to show, and the views it appears in (:class:`View`: a
  column of the headline or summary table, a Pareto objective...). A probe lists its specs in
  ``Probe.metrics``; nothing else in the code base writes a metric's unit, title or direction.
- :class:`ResultWarning` is a structured warning: a stable ``code``, a :class:`Severity` (does it
  invalidate the variant's numbers, or describe a change?), the variant and the text. The report's
  red banner reads the severity, never the words.
- :class:`ResultSink` is what an executor writes results through: the SQLite store implements it,
  and so does a Ray worker's recorder.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from compaudit.errors import CompauditError
from compaudit.units import UNITS, format_value

Better = Literal["high", "low"]


class Role(str, enum.Enum):
    """Where a view of a metric appears in the report (and its exports)."""

    #: a column of the headline table at the top of the report (one row per variant)
    HEADLINE = "headline"
    #: a column of the summary table (the run's metrics side by side; ``compaudit list``, the API)
    SUMMARY = "summary"
    #: an axis of the Pareto view (cost on x when lower is better, quality on y when higher is)
    #: and, unless the view says ``front=False``, an objective of the Pareto front
    PARETO = "pareto"
    #: a flag (1 = set) that disqualifies the variant's numbers: no best/worst highlight and no
    #: place on the Pareto front (a model collapsed to chance level measures noise)
    DISQUALIFIES = "disqualifies"


class Severity(str, enum.Enum):
    """How much a warning matters. The report's banner lists the ``INVALIDATES`` ones."""

    #: context a reader should know (a layer skipped, a tolerance applied)
    INFO = "info"
    #: the numbers hold, but what they describe changed (simulated quantization, a shrunk split)
    CAUTION = "caution"
    #: the variant's numbers of this probe cannot be trusted (gradient masking, NaN outputs, collapse)
    INVALIDATES = "invalidates"


@dataclass(frozen=True)
class View:
    """Where a metric is shown besides its probe's section: a column of the headline or summary
    table, a Pareto axis (``roles``; one view may serve several, with one selection rule).

    - ``params``: the measurement shown is the first whose params include these
      (``{"split": "test"}``).
    - ``prefer``: among those, the first whose params include these, when there is one
      (``{"method": "gradcam"}``: Grad-CAM's drift if measured, else the first method's).
    - ``smallest``: among those, the one with the smallest value of this param (``"batch_size"``:
      latency at batch size 1).
    - ``min_of``: the smallest value over this metric and these other metrics of the same probe
      (size: the dense file, the sparse file or the packed size, whichever is smallest).
    - ``order``: position among the views of its role across all probes (ascending; ties in the
      order the probes are registered).
    - ``key``: a short stable name of the view (the headline's columns, the Pareto axes).
    - ``front``: for a Pareto view, whether it is an objective of the front (latency is drawn as
      an axis but is wall-clock, so it is not).
    - ``axis``: how a Pareto axis names its quantity ("size", "clean accuracy").
    """

    roles: tuple[Role, ...]
    title: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    prefer: Mapping[str, Any] = field(default_factory=dict)
    smallest: str | None = None
    min_of: tuple[str, ...] = ()
    note: str = ""
    order: int = 100
    key: str = ""
    front: bool = True
    axis: str = ""


@dataclass(frozen=True)
class MetricSpec:
    """The one declaration of a metric a probe reports.

    ``better`` is ``"high"``, ``"low"`` or ``None`` (no direction: a count, a p-value shown as it
    is); ``digits`` the significant digits shown (None: the unit's default); ``noisy`` marks values
    that vary from run to run by nature (wall-clock times); ``views`` where it appears besides the
    probe's own section.
    """

    name: str
    unit: str
    title: str = ""
    better: Better | None = None
    doc: str = ""
    digits: int | None = None
    noisy: bool = False
    views: tuple[View, ...] = ()
    nan: str = ""

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(
                f"metric {self.name!r}: unknown unit {self.unit!r}; choose one of {sorted(UNITS)}"
            )
        if self.better not in ("high", "low", None):
            raise ValueError(f"metric {self.name!r}: better is 'high', 'low' or None, not {self.better!r}")

    @property
    def label(self) -> str:
        """The title, else the name."""
        return self.title or self.name

    def format(self, value: float | None, *, digits: int | None = None, signed: bool = False) -> str:
        """``value`` as the report shows it: in the declared unit, with the declared digits unless
        ``digits`` says otherwise (:func:`compaudit.units.format_value`)."""
        return format_value(value, self.unit, digits=self.digits if digits is None else digits, signed=signed)


@dataclass(frozen=True)
class Declared:
    """A view with the probe and metric it belongs to (what the report iterates over)."""

    probe: str
    spec: MetricSpec
    view: View

    @property
    def title(self) -> str:
        return self.view.title or self.spec.label

    @property
    def key(self) -> str:
        return self.view.key or f"{self.probe}.{self.spec.name}"


def declarations_by_name(specs: Sequence[MetricSpec]) -> dict[str, MetricSpec]:
    """``{name: spec}``; a name declared twice is a programming error."""
    out: dict[str, MetricSpec] = {}
    for s in specs:
        if s.name in out:
            raise ValueError(f"metric {s.name!r} is declared twice")
        out[s.name] = s
    return out


@dataclass(frozen=True)
class Metric:
    """One number. ``params`` says what identifies the measurement besides its name
    (``{"split": "test"}``, ``{"batch_size": 1}``, ``{"attack": "pgd", "eps": 0.03}``)."""

    name: str
    value: float
    params: dict[str, Any] = field(default_factory=dict)
    unit: str = ""
    #: values that vary from run to run by nature (wall-clock times) are marked so
    noisy: bool = False


@dataclass(frozen=True)
class ResultWarning:
    """A structured warning: ``code`` is stable (``gradient_masking``, ``nonfinite_outputs``), ``severity``
    says whether it invalidates numbers, ``variant`` the variant it concerns, ``text`` what a reader
    is told."""

    code: str
    text: str
    severity: Severity = Severity.CAUTION
    variant: str = ""

    @property
    def invalidates(self) -> bool:
        return self.severity is Severity.INVALIDATES

    def to_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "variant": self.variant,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ResultWarning:
        """A stored warning back. Results written before warnings were structured stored the text
        only: those come back as ``code="text"``, severity ``caution`` (nothing is inferred from
        their words)."""
        if isinstance(obj, str):
            return cls("text", obj)
        if not isinstance(obj, dict) or "text" not in obj:
            raise CompauditError(f"malformed stored warning: {obj!r}")
        return cls(
            str(obj.get("code") or "text"),
            str(obj["text"]),
            Severity(obj.get("severity", Severity.CAUTION.value)),
            str(obj.get("variant") or ""),
        )

    def __str__(self) -> str:
        return self.text


#: name of the table in which a result records the device each kind of number was measured on
MEASURED_ON = "measured_on"


def device_name(device: torch.device | str) -> str:
    """``device`` as results record it: ``cpu``, ``cuda:0`` (the index filled in), ``mps``."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


@dataclass
class ProbeResult:
    """What a probe returns: metrics, optional tables (lists of records), and warnings."""

    metrics: list[Metric] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    warnings: list[ResultWarning] = field(default_factory=list)

    def add(self, name: str, value: float, *, noisy: bool = False, **params: Any) -> None:
        """Add a metric; its unit comes from the probe's declaration when the probe returns."""
        self.metrics.append(Metric(name, float(value), dict(params), "", noisy))

    def warn(self, code: str, text: str, *, severity: Severity = Severity.CAUTION, variant: str = "") -> None:
        """Add a warning (each (code, text) once)."""
        w = ResultWarning(code, text, severity, variant)
        if w not in self.warnings:
            self.warnings.append(w)

    def measured_on(self, what: str, device: torch.device | str) -> None:
        """Record that the numbers of kind ``what`` (``outputs``, ``latency``, ``attack (bpda)``, ...)
        were computed on ``device``: a row of the table ``measured_on`` (each pair once)."""
        row = {"what": what, "device": device_name(device)}
        rows = self.tables.setdefault(MEASURED_ON, [])
        if row not in rows:
            rows.append(row)

    @property
    def devices(self) -> dict[str, str]:
        """``{what: device}`` from the table ``measured_on`` (the first device of each kind)."""
        out: dict[str, str] = {}
        for r in self.tables.get(MEASURED_ON, []):
            out.setdefault(str(r["what"]), str(r["device"]))
        return out


@dataclass(frozen=True)
class VariantId:
    """Who a variant is, as data: the ``source`` domain it was trained on (``""`` for a single-source
    experiment), the ``seed`` of its run (``None`` for a single-seed experiment) and its ``name`` in
    the experiment. ``label`` is how it is displayed (``amazon/seed0/int8``); no code parses it."""

    name: str
    source: str = ""
    seed: int | None = None

    @property
    def label(self) -> str:
        parts = [p for p in (self.source, None if self.seed is None else f"seed{self.seed}") if p]
        return "/".join([*parts, self.name])

    @property
    def group(self) -> str:
        """The label without the seed: the rows that are one variant under several seeds."""
        return "/".join([p for p in (self.source, self.name) if p])

    @property
    def prefix(self) -> str:
        """The label without the name: source and seed (``amazon/seed0``; "" for a single-source,
        single-seed run). The report groups a variant's columns by it (the domain-shift table)."""
        return "/".join([p for p in (self.source, None if self.seed is None else f"seed{self.seed}") if p])

    def __str__(self) -> str:
        return self.label


@runtime_checkable
class ResultSink(Protocol):
    """Where an executor writes what it measured: :class:`compaudit.store.Store` locally, a worker's
    recorder under Ray (which the driver replays into the store).

    Besides results it keeps what building variants produced: their weights (files under
    ``models_dir``), the tensors probes compute once per run (files under ``cache_dir``), the
    record of each cached step (``put_step``/``step_info``) and each built
    variant (``put_variant``/``variant_info``), so the builder and both executors need nothing
    else of the store."""

    @property
    def models_dir(self) -> Path: ...

    @property
    def cache_dir(self) -> Path:
        """Where probes keep tensors they compute once per run (:meth:`compaudit.probes.
        ProbeContext.tensors`)."""
        ...

    def put_step(self, key: str, info: dict[str, Any]) -> None: ...

    def step_info(self, key: str) -> dict[str, Any]: ...

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
    ) -> None: ...

    def variant_info(self, key: str) -> dict[str, Any] | None: ...

    def has_result(self, key: str) -> bool: ...

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
    ) -> None: ...


def summary(title: str, **params: Any) -> View:
    """A column of the summary table showing the measurement whose params include ``params``."""
    return View((Role.SUMMARY,), title, params)
