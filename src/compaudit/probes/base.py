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
import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compaudit.data.base import DataBundle
from compaudit.elements import Section, SectionData, generic_section
from compaudit.errors import ProbeError
from compaudit.inference import Predictions, eval_mode, execution_device, predict
from compaudit.registry import Registry
from compaudit.results import (
    MEASURED_ON,
    Declared,
    Metric,
    MetricSpec,
    ProbeResult,
    Role,
    declarations_by_name,
)
from compaudit.variant import Variant

if TYPE_CHECKING:
    from compaudit.config import Experiment

T = TypeVar("T")
P = TypeVar("P", bound="ProbeParams")


class ProbeParams(BaseModel):
    """Parameters of a probe; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


#: tensors a probe computes once per run for every variant (:meth:`ProbeContext.tensors`)
Tensors = dict[str, torch.Tensor]


class ProbeContext:
    """Shared state for the probes of one run: the data, the baseline, the device, the seed, and a
    cache of clean predictions so each (variant, split) is predicted once for all probes.

    ``device`` is the run's device; a model whose kernels exist elsewhere only (int8: the CPU) runs
    there instead (:meth:`device_for`). ``batch_size`` is that of the shared predictions.
    ``cache_dir``: where :meth:`tensors` keeps what it computes (the run folder's ``cache/``), so
    a rerun and a Ray worker reuse it; none: memory only."""

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
        cache_dir: Path | None = None,
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
        self.cache_dir = cache_dir
        #: the keys :meth:`tensors` computed in this process (a Ray task sends their files back)
        self.computed: list[str] = []

    def cache_path(self, key: str) -> Path | None:
        """The file of :meth:`tensors` entry ``key`` (none without a ``cache_dir``)."""
        if not re.fullmatch(r"[0-9a-zA-Z_-]+", key):
            raise ValueError(f"cache key {key!r}: letters, digits, '-' and '_' only")
        return None if self.cache_dir is None else self.cache_dir / f"{key}.pt"

    def tensors(self, key: str, make: Callable[[], Tensors]) -> Tensors:
        """Tensors computed once per run and shared by every variant (the adversarial probe's
        transfer examples, crafted on the baseline): from memory, else from the cache folder, else
        ``make()``, kept in both. ``key`` must hash everything the tensors depend on; a file that
        cannot be read is computed again."""
        mem = f"tensors:{key}"
        if mem in self._shared:
            kept: Tensors = self._shared[mem]
            return kept
        path = self.cache_path(key)
        value: Tensors | None = None
        if path is not None and path.is_file():
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
                value = loaded if isinstance(loaded, dict) else None
            except Exception:  # a truncated or foreign file: compute it again
                value = None
        if value is None:
            value = {k: v.detach().cpu() for k, v in make().items()}
            self.computed.append(key)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                torch.save(value, buf)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(buf.getvalue())
                os.replace(tmp, path)  # atomic: a crash never leaves half a file under the key
        self._shared[mem] = value
        return value

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


class Probe(ABC, Generic[P]):
    """Base of every probe. Subclasses set ``Params``, declare their ``metrics`` and override
    :meth:`_measure`; a probe may also override :meth:`section` (its part of the report).

    ``version`` is part of every result's key: bump it when a change alters what the probe reports,
    so stored results of the old version are not reused.
    """

    Params: ClassVar[type[ProbeParams]] = ProbeParams
    version: ClassVar[int] = 1
    #: parameters that change how a probe computes, not what it measures (batch sizes): left out of
    #: the result's key while unset (None), so adding one kept the keys of stored results
    execution_params: ClassVar[frozenset[str]] = frozenset()
    #: the one declaration of every metric this probe reports (name, title, unit, direction,
    #: format, the report views it appears in): :meth:`run` stamps each metric with its unit and
    #: refuses a metric not declared here; the report, the exports and the CLI read only this
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, name: str, params: P) -> None:
        self.name = name
        self.params: P = params

    @classmethod
    def from_spec(cls, name: str, params: dict[str, Any]) -> Probe[Any]:
        validated: Any = cls.Params.model_validate(params)  # an instance of cls.Params, i.e. a P
        return cls(name, validated)

    def run(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        """Measure ``variant``; models are in eval mode throughout and restored afterwards."""
        models: list[nn.Module] = [
            m for m in (variant.model, variant.deployed, variant.surrogate) if m is not None
        ]
        with eval_mode(ctx.baseline.model, *models):
            result = self._measure(variant, ctx)
        if not any(r.get("what") == "outputs" for r in result.tables.get(MEASURED_ON, [])):
            result.measured_on("outputs", ctx.device_for(variant.inference_model))
        specs = self.specs()
        stamped: list[Metric] = []
        for metric in result.metrics:
            if not isinstance(metric.value, float):
                raise ProbeError(f"probe {self.name!r} returned a non-float value for {metric.name!r}")
            spec = specs.get(metric.name) or self.spec_of(metric.name)  # the latter raises, naming it
            stamped.append(dataclasses.replace(metric, unit=spec.unit, noisy=metric.noisy or spec.noisy))
        result.metrics = stamped
        result.warnings = [
            w if w.variant else dataclasses.replace(w, variant=variant.name) for w in result.warnings
        ]
        return result

    @classmethod
    def specs(cls) -> dict[str, MetricSpec]:
        """``{metric name: declaration}`` of this probe."""
        return declarations_by_name(cls.metrics)

    @classmethod
    def spec_of(cls, metric: str) -> MetricSpec:
        """The declaration of ``metric``; a :class:`ProbeError` if the probe declares none."""
        spec = cls.specs().get(metric)
        if spec is None:
            raise ProbeError(f"probe {cls.__name__} reports {metric!r} but does not declare it (metrics)")
        return spec

    @classmethod
    def unit_of(cls, metric: str) -> str:
        """The declared unit of ``metric``; a :class:`ProbeError` if it is not declared."""
        return cls.spec_of(metric).unit

    @classmethod
    def views(cls, name: str, role: Role) -> list[Declared]:
        """The views of this probe's metrics in ``role`` (``name``: the probe's registered name)."""
        return [Declared(name, spec, v) for spec in cls.metrics for v in spec.views if role in v.roles]

    @classmethod
    def section(cls, data: SectionData) -> Section:
        """This probe's part of the report (default: every metric, variants as rows). Override it to
        mirror a paper's tables and figures; build it from :mod:`compaudit.elements`."""
        return generic_section(data)

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


PROBES: Registry[type[Probe[Any]]] = Registry(
    "probe", error=ProbeError, package="compaudit.probes", entry_point_group="compaudit.probes"
)
