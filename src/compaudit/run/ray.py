"""The Ray executor (``executor: ray``): a task per variant to build, then a task per job.

The driver (the process running ``compaudit run``) prepares the experiment and trains the
baseline as the local executor does, then submits to Ray, each task asking for
``ray.cpus_per_task`` CPUs and ``ray.gpus_per_task`` GPUs:

- a *build task* for each variant with missing (variant, probe) results whose weights the run
  folder lacks: it builds the variant (:func:`compaudit.run.worker.build_task`) from the weights
  of its steps already cached and returns the new weights, which the driver stores as soon as it
  returns;
- then a *probe task* for each missing (variant, probe) pair: it gets the variant's weights
  (serialized once per variant, shared by its probe tasks), restores the variant and runs the
  probe with the local executor's code (:func:`compaudit.run.worker.probe_task`), and returns the
  result row.

The baseline's probe tasks go first: the other variants' probe tasks are submitted once they have
all returned (their builds run meanwhile), because some probes compute tensors on the baseline
that every variant reuses (the adversarial probe's transfer examples). A task returns the files of
such tensors; the driver keeps them in the run folder's ``cache/`` and sends what it holds to
every later task, so they are computed once per run (and not again by a rerun).

The driver alone writes the run folder, as each task finishes. The error policy is the local
executor's (see :mod:`compaudit.run`): a probe that raises gives one error row, and a variant
whose build raises an error row for each missing job of it, with the same text as locally. What
only happens under Ray: a probe task that dies (worker killed, out of memory) gives an error row
for its own job only; a build task that dies gives an error row naming the failed task for each
missing job of its variant, and none of its probe tasks runs.
The other tasks go on. Tasks are not retried by Ray; a rerun of the experiment retries every
failed job, builds only the weights still missing, and skips the stored results. Levels of a
sweep with ``select`` are chosen by the driver after every task has finished, from the stored
accuracy results, as locally.

A worker process keeps the prepared experiment (data, baseline, the baseline's clean
predictions) between tasks, keyed by the content of the experiment and the baseline's weights,
and the last variant it built or restored, so a task pays for neither again (see
:mod:`compaudit.run.worker`). Two variants whose chains share a prefix that neither has cached
each build it in their own task.

Workers import compaudit (and any plugin module the experiment's probes and methods come from)
and read the experiment's data and checkpoint paths themselves: on a local cluster they share
this environment; the nodes of a remote cluster need compaudit installed and those paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from compaudit.compress import METHODS
from compaudit.config import Experiment, RaySpec
from compaudit.errors import CompauditError, ConfigError
from compaudit.probes import PROBES
from compaudit.results import ResultSink
from compaudit.run.build import Builder, weights_path
from compaudit.run.jobs import Ledger, RunSummary
from compaudit.run.plan import Job, VariantPlan
from compaudit.run.prepare import Prepared
from compaudit.run.worker import Cell, Models, TaskOutput, build_task, probe_task
from compaudit.store import write_atomic

log = logging.getLogger("compaudit")

#: the one-line error of ``executor: ray`` without Ray installed
MISSING_RAY = "executor ray needs the ray extra: pip install 'compaudit[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it (a lazy import: Ray
    is an optional dependency, checked when the experiment is validated)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING_RAY) from None
    return ray


@contextlib.contextmanager
def ray_session(spec: RaySpec) -> Iterator[None]:
    """Connect to Ray for a run: to ``spec.address`` if given, else to a local cluster started
    here (``spec.num_cpus`` CPUs) and stopped at the end. A Ray already initialised in this
    process is used as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield
        return
    try:
        if spec.address is not None:
            ray.init(address=spec.address, log_to_driver=True)
        else:
            ray.init(num_cpus=spec.num_cpus, include_dashboard=False, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = spec.address or "a local cluster"
        raise CompauditError(f"ray: cannot start or reach {where}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _plugins(exp: Experiment) -> tuple[tuple[str, str, type], ...]:
    """The probes and methods of ``exp`` registered from outside compaudit, as ``(registry,
    name, class)``: a task registers them in its worker (unpickling a class imports its module,
    which must be importable there)."""
    out: list[tuple[str, str, type]] = []
    for pr in exp.probes:
        out.append(("probe", pr.name, PROBES.get(pr.name)))
    for v in exp.concrete_variants():
        for st in v.chain():
            out.append(("method", st.method, METHODS.get(st.method)))
    return tuple(p for p in dict.fromkeys(out) if not p[2].__module__.startswith("compaudit."))


def _build(
    cell: Cell, base: list[Any], variant_key: str, models: Models, steps: dict[str, dict[str, Any]]
) -> TaskOutput:
    """A build task. ``base`` holds the object ref of the baseline's weights, fetched only by a
    worker that has not prepared the cell yet (a ref inside a list is not resolved by Ray)."""
    ray = require_ray()
    return build_task(cell, lambda: ray.get(base[0]), variant_key, models, steps)


def _probe(
    cell: Cell,
    base: list[Any],
    job_key: str,
    models: list[Any],
    steps: dict[str, dict[str, Any]],
    cache_keys: tuple[str, ...] = (),
    cache: list[Any] | None = None,
) -> TaskOutput:
    """A probe task; ``base``, ``models`` and ``cache`` hold object refs of weights and of the
    run-wide tensors' files, fetched only if needed."""
    ray = require_ray()
    return probe_task(
        cell,
        lambda: ray.get(base[0]),
        job_key,
        lambda: ray.get(models[0]),
        steps,
        cache_keys,
        (lambda: ray.get(cache[0])) if cache else dict,
    )


def _cell_key(
    exp: Experiment, prefix: str, baseline: str, base: Models, plugins: tuple[tuple[str, str, type], ...]
) -> str:
    """Content key of what a worker prepares for a cell: the experiment, the cell's prefix, the
    baseline's key (which covers a checkpoint's digest), its weights and the plugin classes."""
    h = hashlib.sha256()
    parts = [exp.model_dump_json(), prefix, baseline]
    parts += [f"{kind}:{name}:{cls.__module__}.{cls.__qualname__}" for kind, name, cls in plugins]
    parts += [f"{key}:{hashlib.sha256(data).hexdigest()}" for key, data in sorted(base.items())]
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


@dataclass
class _Build:
    vp: VariantPlan
    missing: list[Job]


@dataclass
class _Probe:
    job: Job


class RayExecutor:
    """Runs a prepared cell as Ray tasks; this process writes the store (``sink``)."""

    def __init__(self, prepared: Prepared, sink: ResultSink, summary: RunSummary, spec: RaySpec) -> None:
        self.p = prepared
        self.sink = sink
        self.summary = summary
        self.spec = spec
        #: the driver's share of the work: the baseline, trained here once
        self.builder = Builder(prepared, sink)
        self.ledger = Ledger(prepared.plan, sink, summary)
        #: ``(setup seconds, warm)`` of every task that returned: how long it took to get ready
        #: for its work, and whether its worker had the experiment prepared already
        self.setups: list[tuple[float, bool]] = []

    def _files(self, keys: tuple[str, ...]) -> Models:
        out: Models = {}
        for key in keys:
            path = weights_path(self.sink.models_dir, key)
            if path.is_file():
                out[key] = path.read_bytes()
        return out

    def _cache_keys(self) -> tuple[str, ...]:
        """The keys of the run-wide tensors' files the run folder holds."""
        folder = self.sink.cache_dir
        return tuple(path.stem for path in sorted(folder.glob("*.pt"))) if folder.is_dir() else ()

    def _steps(self, vp: VariantPlan) -> dict[str, dict[str, Any]]:
        return {k: self.sink.step_info(k) for k in vp.step_keys}

    def _built(self, vp: VariantPlan) -> bool:
        """Whether the run folder has every weight and row of ``vp`` (no build task needed)."""
        return self.sink.variant_info(vp.key) is not None and all(
            weights_path(self.sink.models_dir, k).is_file() for k in vp.step_keys
        )

    def run(self) -> RunSummary:
        ray = require_ray()
        t0 = time.perf_counter()
        plan = self.p.plan
        todo: list[tuple[VariantPlan, list[Job]]] = []
        for vp in plan.all_variants:
            missing = self.ledger.missing(vp)
            if missing:
                todo.append((vp, missing))
        if todo:
            self.builder.baseline()  # trained here, once, and cached in the run folder
            self._trained(self.builder.trained)
            base = self._files((plan.baseline.key,))
            plugins = _plugins(self.p.experiment)
            cell = Cell(
                self.p.experiment,
                plan.prefix,
                _cell_key(self.p.experiment, plan.prefix, plan.baseline.key, base, plugins),
                plugins,
                self.spec.cpus_per_task,
                plan.source,
                plan.seed,
            )
            cell_ref, base_ref = ray.put(cell), ray.put(base)
            options = {
                "num_cpus": self.spec.cpus_per_task,
                "num_gpus": self.spec.gpus_per_task,
                "max_retries": 0,
            }
            build = ray.remote(_build).options(name="compaudit-build", **options)
            probe = ray.remote(_probe).options(name="compaudit-probe", **options)
            pending: dict[Any, _Build | _Probe] = {}
            #: the variants whose probe tasks wait for the baseline's to return
            deferred: list[tuple[VariantPlan, list[Job]]] = []
            cache: dict[str, Any] = {}  # the object ref of the cache files, while they are unchanged

            def cache_ref() -> tuple[tuple[str, ...], list[Any]]:
                keys = self._cache_keys()
                if cache.get("keys") != keys:  # read and send the files only when new ones came
                    files = {key: (self.sink.cache_dir / f"{key}.pt").read_bytes() for key in keys}
                    cache["keys"], cache["ref"] = keys, ray.put(files)
                return keys, [cache["ref"]]

            def baseline_pending() -> bool:
                base_key = plan.baseline.key
                return any(isinstance(t, _Probe) and t.job.variant_key == base_key for t in pending.values())

            def release() -> None:
                """Submit the deferred probe tasks once the baseline's have all returned."""
                if deferred and not baseline_pending():
                    waiting, deferred[:] = list(deferred), []
                    for vp, missing in waiting:
                        submit_probes(vp, missing)

            def submit_probes(vp: VariantPlan, missing: list[Job]) -> None:
                if not vp.is_baseline and baseline_pending():
                    deferred.append((vp, missing))
                    return
                models = ray.put(self._files(vp.step_keys))  # once per variant, shared by its tasks
                steps = self._steps(vp)
                keys, files = cache_ref()
                for job in missing:
                    ref = probe.remote(cell_ref, [base_ref], job.key, [models], steps, keys, files)
                    pending[ref] = _Probe(job)
                log.info("%s: submitted %d probe task(s) to ray", vp.name, len(missing))

            for vp, missing in sorted(todo, key=lambda t: not t[0].is_baseline):
                if vp.is_baseline or self._built(vp):
                    submit_probes(vp, missing)
                else:
                    have = self._files(vp.step_keys)
                    ref = build.remote(cell_ref, [base_ref], vp.key, have, self._steps(vp))
                    pending[ref] = _Build(vp, missing)
                    log.info("%s: submitted its build task to ray", vp.name)
            try:
                while pending:
                    (ref,), _ = ray.wait(list(pending), num_returns=1)
                    task = pending.pop(ref)
                    try:
                        out: TaskOutput = ray.get(ref)
                    except Exception as exc:
                        msg = _task_error(exc)
                        if isinstance(task, _Build):
                            for job in task.missing:
                                self.ledger.put_error(job, f"ray build task of {task.vp.name} failed: {msg}")
                        else:
                            job = task.job
                            self.ledger.put_error(
                                job, f"ray task of {job.variant} x {job.probe} failed: {msg}"
                            )
                        release()
                        continue
                    self.setups.append((out.setup_seconds, out.warm))
                    self._store(out)
                    if isinstance(task, _Build):
                        if out.build_error is not None:
                            for job in task.missing:
                                self.ledger.put_error(job, out.build_error)
                        else:
                            submit_probes(task.vp, task.missing)
                    release()
            except BaseException:
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
            if self.setups:
                warm = [s for s, w in self.setups if w]
                cold = [s for s, w in self.setups if not w]
                log.info(
                    "ray: %d task(s) returned; setup per task, median: %s warm (%d), %s cold (%d)",
                    len(self.setups),
                    f"{statistics.median(warm):.3f}s" if warm else "-",
                    len(warm),
                    f"{statistics.median(cold):.3f}s" if cold else "-",
                    len(cold),
                    extra={"ray_setups": list(self.setups)},
                )
        self.summary.seconds += time.perf_counter() - t0
        return self.summary

    def _trained(self, names: list[str]) -> None:
        for name in names:
            if name not in self.summary.trained:
                self.summary.trained.append(name)

    def _store(self, out: TaskOutput) -> None:
        """Write what one task returned: weights first, then rows, each atomically."""
        for key, data in out.models.items():
            write_atomic(weights_path(self.sink.models_dir, key), data)
        for key, data in out.cache.items():
            write_atomic(self.sink.cache_dir / f"{key}.pt", data)
        for key, info in out.steps:
            self.sink.put_step(key, info)
        for row in out.variants:
            self.sink.put_variant(
                row["key"],
                name=row["name"],
                parent=row["parent"],
                spec=row["spec"],
                lineage=row["lineage"],
                info=row["info"],
                identity=row["identity"],
            )
        self._trained(out.trained)
        jobs = {j.key: j for j in self.p.plan.jobs}
        for row in out.results:
            if row["error"] is not None:
                self.ledger.put_error(jobs[row["key"]], row["error"], seconds=row["seconds"])
            else:
                self.ledger.put_result(jobs[row["key"]], row["result"], seconds=row["seconds"])


def _task_error(exc: BaseException) -> str:
    """One line naming why a task failed: Ray's error type and the first line of its message (a
    task's own exception comes wrapped in a ``RayTaskError``, its cause says what it was)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        exc = cause
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:500]
