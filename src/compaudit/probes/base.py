"""Probes: one abstract base, one registry, one shared cache of clean predictions.

A probe measures one family of properties of a variant (and compares with the baseline). It never
retrains and never mutates a variant: :meth:`Probe.run` puts the models in eval mode and restores
every module's own flag afterwards, and checks that what the probe returns is well formed.

Every result says where its numbers were measured: the table ``measured_on`` holds rows
``{"what": ..., "device": ...}`` (``outputs``: the variant's model as it ships; a probe that also
computes elsewhere adds rows, e.g. ``attack (bpda)`` for attacks crafted on a surrogate,
``latency``, ``saliency maps``, ``features``). An int8
deployed model computes on the CPU also under ``device: cuda`` (:func:`compaudit.inference.
execution_device`); :meth:`Probe.run` fills in the ``outputs`` row when a probe gives none.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compaudit.data.base import DataBundle
from compaudit.errors import ProbeError
from compaudit.inference import Predictions, device_name, eval_mode, execution_device, predict
from compaudit.registry import Registry
from compaudit.units import UNITS
from compaudit.variant import Variant

if TYPE_CHECKING:
    from compaudit.config import Experiment

T = TypeVar("T")


@dataclass(frozen=True)
class SummaryColumn:
    """A column a probe contributes to the report's summary table.

    It shows the value of ``metric`` whose params include ``params``, formatted from the unit the
    probe declares for ``metric`` (:meth:`Probe.unit_of`). ``better`` is ``"high"``, ``"low"`` or
    ``None`` (no best/worst highlight).
    """

    title: str
    metric: str
    params: dict[str, Any] = field(default_factory=dict)
    better: str | None = None

    def __post_init__(self) -> None:
        if self.better not in ("high", "low", None):
            raise ValueError(
                f"summary column {self.title!r}: better is 'high', 'low' or None, not {self.better!r}"
            )


class ProbeParams(BaseModel):
    """Parameters of a probe; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


#: name of the table in which a result records the device each kind of number was measured on
MEASURED_ON = "measured_on"

#: batch size of the clean predictions shared by every probe (:meth:`ProbeContext.predictions`)
PREDICT_BATCH = 256


def shared_predictions_batch_size() -> Any:
    """The ``batch_size`` field of a probe that reads the shared clean predictions (accuracy,
    classes): unset, it uses those of :data:`PREDICT_BATCH`; list it in ``execution_params``."""
    return Field(
        default=None,
        ge=1,
        description="batch size of the clean predictions (memory and speed only: the numbers do not "
        f"depend on it); none: the predictions of batch {PREDICT_BATCH} that every probe of the run shares",
    )


@dataclass
class ProbeResult:
    """What a probe returns: metrics, optional tables (lists of records), and warnings."""

    metrics: list[Metric] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, *, noisy: bool = False, **params: Any) -> None:
        """Add a metric; its unit comes from the probe's ``units`` table when the probe returns."""
        self.metrics.append(Metric(name, float(value), dict(params), "", noisy))

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


class ProbeContext:
    """Shared state for the probes of one run: the data, the baseline, the device, the seed, and a
    cache of clean predictions so each (variant, split) is predicted once for all probes.

    ``device`` is the run's device; a model whose kernels exist elsewhere only (int8: the CPU) runs
    there instead (:meth:`device_for`). ``batch_size`` is that of the shared predictions."""

    def __init__(
        self,
        *,
        data: DataBundle,
        baseline: Variant,
        device: torch.device,
        seed: int,
        domains: dict[str, DataBundle] | None = None,
        source: str | None = None,
        batch_size: int = PREDICT_BATCH,
    ) -> None:
        self.data = data
        self.baseline = baseline
        self.device = device
        self.seed = seed
        self.batch_size = batch_size
        #: other data sets with the source's classes, by name, each holding the images a probe
        #: evaluates as its ``test`` split (see :class:`compaudit.config.DomainSpec`)
        self.domains = dict(domains or {})
        #: the name of the source domain, when the experiment names its domains
        self.source = source
        self._predictions: dict[tuple[str, str, int], Predictions] = {}
        self._shared: dict[str, Any] = {}

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """A value computed once per run and shared by every variant (corrupted copies of the test
        images, the baseline's errors on them): ``make()`` runs on the first call only."""
        if key not in self._shared:
            self._shared[key] = make()
        value: T = self._shared[key]
        return value

    def device_for(self, model: nn.Module) -> torch.device:
        """Where ``model`` runs in this run: the run's device, or the device its kernels need."""
        return execution_device(model, self.device)

    def predictions(
        self, variant: Variant, split: str = "test", *, batch_size: int | None = None
    ) -> Predictions:
        """Clean logits of ``variant``'s model as it ships on ``split``, computed once per batch size
        (``None``: the shared ``batch_size`` of the context) and shared by every probe asking."""
        bs = self.batch_size if batch_size is None else batch_size
        key = (variant.key, split, bs)
        if key not in self._predictions:
            self._predictions[key] = predict(
                variant.inference_model,
                self.data.split(split),
                batch_size=bs,
                device=self.device,
                desc=f"{variant.name}: predict {split}",
            )
        return self._predictions[key]

    def forget(self, variant: Variant) -> None:
        """Drop a variant's cached predictions (the baseline's are kept)."""
        if variant.key == self.baseline.key:
            return
        for k in [k for k in self._predictions if k[0] == variant.key]:
            del self._predictions[k]


class Probe(ABC):
    """Base of every probe. Subclasses set ``Params`` and override :meth:`_measure`.

    ``version`` is part of every result's key: bump it when a change alters what the probe reports,
    so stored results of the old version are not reused.
    """

    Params: ClassVar[type[ProbeParams]] = ProbeParams
    version: ClassVar[int] = 1
    #: parameters that change how a probe computes, not what it measures (batch sizes): left out of
    #: the result's key while unset (None), so adding one kept the keys of stored results
    execution_params: ClassVar[frozenset[str]] = frozenset()
    #: columns of the report's summary table that come from this probe
    summary: ClassVar[tuple[SummaryColumn, ...]] = ()
    #: the unit (:mod:`compaudit.units`) of every metric this probe reports, by metric name: the one
    #: place a unit is written. :meth:`run` stamps each metric with it and refuses a metric not here
    units: ClassVar[Mapping[str, str]] = {}

    def __init__(self, name: str, params: ProbeParams) -> None:
        self.name = name
        self.params = params

    @classmethod
    def from_spec(cls, name: str, params: dict[str, Any]) -> Probe:
        return cls(name, cls.Params.model_validate(params))

    def run(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        """Measure ``variant``; models are in eval mode throughout and restored afterwards."""
        models: list[nn.Module] = [
            m for m in (variant.model, variant.deployed, variant.surrogate) if m is not None
        ]
        flags = [[(m, m.training) for m in model.modules()] for model in models]
        try:
            for model in models:
                model.eval()
            with eval_mode(ctx.baseline.model):
                result = self._measure(variant, ctx)
        finally:
            for group in flags:
                for m, flag in group:
                    m.training = flag
        if not any(r.get("what") == "outputs" for r in result.tables.get(MEASURED_ON, [])):
            result.measured_on("outputs", ctx.device_for(variant.inference_model))
        stamped: list[Metric] = []
        for metric in result.metrics:
            if not isinstance(metric.value, float):
                raise ProbeError(f"probe {self.name!r} returned a non-float value for {metric.name!r}")
            stamped.append(dataclasses.replace(metric, unit=self.unit_of(metric.name)))
        result.metrics = stamped
        return result

    @classmethod
    def unit_of(cls, metric: str) -> str:
        """The declared unit of ``metric`` (:attr:`units`); a :class:`ProbeError` if it has none."""
        unit = cls.units.get(metric)
        if unit is None:
            raise ProbeError(f"probe {cls.__name__} reports {metric!r} but declares no unit for it (units)")
        if unit not in UNITS:
            raise ProbeError(f"probe {cls.__name__} declares unknown unit {unit!r} for {metric!r}")
        return unit

    @abstractmethod
    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        """Measure ``variant`` (the models are already in eval mode)."""

    def describe(self) -> dict[str, Any]:
        params = self.params.model_dump(mode="json")
        for name in self.execution_params:
            if params.get(name, 0) is None:
                del params[name]
        return {"probe": self.name, "version": self.version, "params": params}

    def check_experiment(self, exp: Experiment) -> str | None:
        """What is wrong with these parameters in ``exp`` (a single-source experiment), if anything:
        checked when the experiment file is read, so a mistake fails before anything runs."""
        return None

    def check_inputs(self, exp: Experiment) -> str | None:
        """What is missing among the files these parameters name, if anything: checked before a run
        writes anything (``compaudit check`` does not read data, so it skips this)."""
        return None

    def needs_domains(self, exp: Experiment) -> list[str]:
        """The domains of ``exp`` this probe evaluates: they are loaded (and checked) before the run,
        and their specs are part of the probe's result keys."""
        return []


PROBES: Registry[type[Probe]] = Registry("probe", error=ProbeError)
