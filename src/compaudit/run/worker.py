"""The work of the Ray executor's tasks, away from the run folder (no Ray needed here).

Two kinds of task, both running the same code as the local executor (:class:`~compaudit.run.
build.Builder`, :func:`~compaudit.run.jobs.run_job`) but writing into a :class:`Recorder` instead
of the run's store: the weights and rows they produce go back to the driver, which alone writes
the store.

- :func:`build_task` builds one variant (applies and fine-tunes the steps whose weights the driver
  does not have yet) and returns the new weights and rows; a build that raises is returned as
  ``build_error`` (the driver writes the same error rows as a local run would).
- :func:`probe_task` runs one (variant, probe) job on the variant restored from its finished
  weights (nothing is trained again) and returns the result row, or the error row of a probe that
  raised, with the files of the tensors the probe computed for the whole run
  (:meth:`~compaudit.probes.ProbeContext.tensors`: the transfer examples the baseline's adversarial
  job crafts), which the driver keeps in the run folder's ``cache/`` and sends to later tasks.

A Ray worker process runs many tasks. What every task of a run needs (the prepared experiment:
data, domains, plan, base model; the baseline with its weights; the probe context with the
baseline's clean predictions and the values probes share) is kept between tasks in
:data:`_WARM`, keyed by :attr:`Cell.key`, a content key of the experiment, its cell, the
baseline's weights and the plugin classes; the last :data:`KEEP` entries are kept. The last
variant a worker built or restored is kept too, with its clean predictions, so the next probe of
that variant on the same worker neither restores it nor predicts again.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compaudit.compress import METHODS
from compaudit.config import Experiment
from compaudit.probes import PROBES, ProbeContext
from compaudit.registry import Registry
from compaudit.results import ProbeResult, VariantId
from compaudit.run.build import Builder, weights_path
from compaudit.run.jobs import build_failed, run_job
from compaudit.run.prepare import Prepared, prepare
from compaudit.variant import Variant

#: how many prepared cells a worker keeps (an experiment with several sources runs its cells one
#: after the other; each entry holds the cell's data and the baseline's predictions)
KEEP = 2

#: the weights of some models by key: the bytes of their state-dict files
Models = dict[str, bytes]


@dataclass(frozen=True)
class Cell:
    """What every task of one cell of a run shares; the driver sends it to the cluster once."""

    experiment: Experiment
    #: the cell's prefix of variant names (see :class:`~compaudit.config.CellSpec`)
    prefix: str
    #: content key of the experiment, the prefix, the baseline's weights and the plugin classes:
    #: tasks with equal keys share a worker's prepared state
    key: str
    #: probes and methods registered from outside compaudit, as ``(registry, name, class)``
    plugins: tuple[tuple[str, str, type], ...] = ()
    #: torch threads of a task (its CPUs)
    threads: int = 1
    #: the cell's source domain and seed (see :class:`~compaudit.config.CellSpec`)
    source: str = ""
    seed: int | None = None


@dataclass
class TaskOutput:
    """What one task did, for the driver to store: model files (bytes of state dicts) by key, then
    the rows of steps, variants and results in the order the store received them; and how long
    the task took to get ready for its work (``setup_seconds``: preparing the experiment unless
    ``warm``, writing weights, restoring the variant). ``build_error``: the one-line error of a
    build that raised (then no variant row and no weights of the variant itself)."""

    models: dict[str, bytes] = field(default_factory=dict)
    #: files of the run-wide tensors the task computed (:meth:`ProbeContext.tensors`), by key
    cache: dict[str, bytes] = field(default_factory=dict)
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0
    warm: bool = False
    build_error: str | None = None


class Recorder:
    """The :class:`~compaudit.results.ResultSink` of a task, where the store is out of reach: keeps
    every write in memory and answers reads from what the driver sent (the info of cached steps,
    the variants it already stores). Model files go to a private folder."""

    def __init__(
        self,
        root: Path,
        *,
        steps: dict[str, dict[str, Any]],
        variants: set[str],
        done: set[str] | None = None,
    ) -> None:
        self.root = root
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._steps = dict(steps)
        self._variants = set(variants)
        self._done = set(done or ())
        self.out = TaskOutput()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def write_models(self, models: Models) -> None:
        for key, data in models.items():
            weights_path(self.models_dir, key).write_bytes(data)

    def put_step(self, key: str, info: dict[str, Any]) -> None:
        self._steps[key] = info
        self.out.steps.append((key, info))

    def step_info(self, key: str) -> dict[str, Any]:
        return dict(self._steps.get(key, {}))

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
        self._variants.add(key)
        self.out.variants.append(
            {
                "key": key,
                "name": name,
                "parent": parent,
                "spec": spec,
                "lineage": lineage,
                "info": info,
                "identity": identity,
            }
        )

    def variant_info(self, key: str) -> dict[str, Any] | None:
        return {} if key in self._variants else None

    def has_result(self, key: str) -> bool:
        return key in self._done

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
        if error is None:
            self._done.add(key)
        self.out.results.append(
            {
                "key": key,
                "variant_key": variant_key,
                "variant": variant,
                "probe": probe,
                "spec": spec,
                "result": result,
                "seconds": seconds,
                "error": error,
            }
        )


@dataclass
class WarmCell:
    """A worker's prepared state for one cell (see :func:`warm_cell`)."""

    key: str
    prepared: Prepared
    #: the probe context; its ``baseline`` is the run's baseline, restored from the driver's weights
    context: ProbeContext
    #: the variant this worker built or restored last (its clean predictions stay in ``context``)
    variant: Variant | None = None

    def keep(self, variant: Variant) -> None:
        if self.variant is not None and self.variant.key != variant.key:
            self.context.forget(self.variant)
        self.variant = variant


#: the prepared cells of this process, most recently used last
_WARM: list[WarmCell] = []


def _register(plugins: tuple[tuple[str, str, type], ...]) -> None:
    for kind, name, cls in plugins:
        registry: Registry[Any] = PROBES if kind == "probe" else METHODS
        if name not in registry:
            registry.add(name, cls)


def warm_cell(cell: Cell, base_models: Callable[[], Models]) -> tuple[WarmCell, bool]:
    """This process's prepared state for ``cell``, and whether it was here already; else prepare
    the experiment, restore the baseline from ``base_models()`` (called only then) and keep the
    result, forgetting the least recently used cell beyond :data:`KEEP`."""
    for i, w in enumerate(_WARM):
        if w.key == cell.key:
            _WARM.append(_WARM.pop(i))
            return w, True
    _register(cell.plugins)
    prepared = prepare(cell.experiment, cell.prefix, source=cell.source, seed=cell.seed)
    # the cell's run-wide tensors, as the driver sent them or this worker computed them
    cache = Path(tempfile.mkdtemp(prefix="compaudit-cache-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="compaudit-task-") as tmp:
        rec = Recorder(Path(tmp), steps={}, variants={prepared.plan.baseline.key})
        rec.write_models(base_models())
        baseline = Builder(prepared, rec).baseline()  # restores the baseline
        context = prepared.probe_context(baseline, cache)
    w = WarmCell(cell.key, prepared, context)
    _WARM.append(w)
    del _WARM[:-KEEP]
    return w, False


def forget_cells() -> None:
    """Drop every prepared cell this process keeps."""
    _WARM.clear()


def build_task(
    cell: Cell,
    base_models: Callable[[], Models],
    variant_key: str,
    models: Models,
    steps: dict[str, dict[str, Any]],
) -> TaskOutput:
    """Build variant ``variant_key`` of ``cell``. ``models`` holds the weights of the variant's
    steps the driver has already, ``steps`` their stored info. Returns the weights of the steps
    built here and the rows of the steps and the variant, or the build's error."""
    start = time.perf_counter()
    torch.set_num_threads(cell.threads)
    w, warm = warm_cell(cell, base_models)
    vp = next(v for v in w.prepared.plan.all_variants if v.key == variant_key)
    with tempfile.TemporaryDirectory(prefix="compaudit-task-") as tmp:
        rec = Recorder(Path(tmp), steps=steps, variants={w.prepared.plan.baseline.key})
        rec.write_models(models)
        rec.out.setup_seconds, rec.out.warm = time.perf_counter() - start, warm
        builder = Builder(w.prepared, rec, baseline=w.context.baseline)
        try:
            w.keep(builder.build(vp))
        except Exception as exc:  # the same error rows as a local run's (see compaudit.run)
            rec.out.build_error = build_failed(vp.name, exc)
        for key in vp.step_keys:  # the steps finished before a failure are kept too
            path = weights_path(rec.models_dir, key)
            if key not in models and path.is_file():
                rec.out.models[key] = path.read_bytes()
        rec.out.trained = builder.trained
        return rec.out


def probe_task(
    cell: Cell,
    base_models: Callable[[], Models],
    job_key: str,
    models: Callable[[], Models],
    steps: dict[str, dict[str, Any]],
    cache_keys: tuple[str, ...] = (),
    cache: Callable[[], dict[str, bytes]] = dict,
) -> TaskOutput:
    """Run job ``job_key`` of ``cell``: restore its variant from ``models()`` (the weights of every
    step of the variant; called only when this worker does not hold the variant already), with
    ``steps`` their stored info, and run the job's probe on it. ``cache_keys`` name the run-wide
    tensors the driver holds, ``cache()`` their files (called only when this worker lacks one).
    Returns the result row, or the error row of a probe that raised, as the local executor stores
    it, and the files of the run-wide tensors it computed; a variant that cannot be restored fails
    the task."""
    start = time.perf_counter()
    torch.set_num_threads(cell.threads)
    w, warm = warm_cell(cell, base_models)
    ctx = w.context
    if ctx.cache_dir is not None and any(not (ctx.cache_dir / f"{k}.pt").is_file() for k in cache_keys):
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        for key, data in cache().items():
            path = ctx.cache_dir / f"{key}.pt"
            if not path.is_file():
                path.write_bytes(data)
    computed = len(ctx.computed)
    plan = w.prepared.plan
    job = next(j for j in plan.jobs if j.key == job_key)
    vp = next(v for v in plan.all_variants if v.key == job.variant_key)
    with tempfile.TemporaryDirectory(prefix="compaudit-task-") as tmp:
        rec = Recorder(Path(tmp), steps=steps, variants={v.key for v in plan.all_variants})
        if vp.is_baseline:
            variant = w.context.baseline
        elif w.variant is not None and w.variant.key == vp.key:
            variant = w.variant
        else:
            weights = models()
            lost = [k for k in vp.step_keys if k not in weights]
            if lost:  # restoring must never train: the driver sends every step's weights
                raise RuntimeError(f"{vp.name}: no weights for step(s) {', '.join(lost)}")
            rec.write_models(weights)
            variant = Builder(w.prepared, rec, baseline=w.context.baseline).build(vp)
            w.keep(variant)
        rec.out.variants.clear()  # the driver stored the variant when it was built
        rec.out.setup_seconds, rec.out.warm = time.perf_counter() - start, warm
        outcome = run_job(plan.probes[job.probe], variant, ctx, job, seed=w.prepared.experiment.seed)
        for key in ctx.computed[computed:]:
            made = ctx.cache_path(key)
            if made is not None and made.is_file():
                rec.out.cache[key] = made.read_bytes()
        rec.put_result(
            job.key,
            variant_key=job.variant_key,
            variant=job.variant,
            probe=job.probe,
            spec=job.spec,
            result=outcome.result,
            seconds=outcome.seconds,
            error=outcome.error,
        )
        return rec.out
