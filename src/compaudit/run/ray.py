"""The Ray executor (``executor: ray``): one Ray task per variant with results missing.

The driver (the process running ``compaudit run``) prepares the experiment and trains the
baseline as the local executor does, then submits one task per variant that has missing
(variant, probe) results, asking Ray for ``ray.cpus_per_task`` CPUs and ``ray.gpus_per_task``
GPUs. A task gets the experiment, the baseline's weights and the weights of the variant's steps
already cached, builds the variant and runs its missing probes with the local executor's code
(:func:`compaudit.run.worker.run_variant_task`), and returns the new weights and result rows. The
driver alone writes the run folder, as each task finishes. A probe that raises a
:class:`~compaudit.errors.CompauditError` gives one error row, as locally; a task that dies
(worker killed, out of memory, any other exception) gives an error row for each of its jobs,
and the other tasks go on. Tasks are not retried by Ray; a rerun of the experiment retries every
failed job, and the stored ones are skipped.

Workers import compaudit (and any plugin module the experiment's probes and methods come from)
and read the experiment's data and checkpoint paths themselves: on a local cluster they share
this environment; the nodes of a remote cluster need compaudit installed and those paths.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from compaudit.config import Experiment, RaySpec
from compaudit.errors import CompauditError, ConfigError
from compaudit.run.local import LocalExecutor, Prepared, RunSummary
from compaudit.run.plan import Job, VariantPlan
from compaudit.run.worker import TaskOutput, run_variant_task
from compaudit.store import Store, write_atomic

log = logging.getLogger("compaudit")

_MISSING = "executor ray needs the ray extra: pip install 'compaudit[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(_MISSING) from None
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


def _plugins(exp: Experiment) -> list[tuple[str, str, type]]:
    """The probes and methods of ``exp`` registered from outside compaudit, as ``(registry,
    name, class)``: a task registers them in its worker (unpickling a class imports its module,
    which must be importable there)."""
    from compaudit.compress import METHODS
    from compaudit.probes import PROBES

    out: list[tuple[str, str, type]] = []
    for pr in exp.probes:
        out.append(("probe", pr.name, PROBES.get(pr.name)))
    for v in exp.concrete_variants():
        for st in v.chain():
            out.append(("method", st.method, METHODS.get(st.method)))
    return [p for p in dict.fromkeys(out) if not p[2].__module__.startswith("compaudit.")]


def _register(plugins: list[tuple[str, str, type]]) -> None:
    from compaudit.compress import METHODS
    from compaudit.probes import PROBES

    for kind, name, cls in plugins:
        registry: Any = PROBES if kind == "probe" else METHODS
        if name not in registry:
            registry.add(name, cls)


def _task(
    plugins: list[tuple[str, str, type]],
    exp: Experiment,
    prefix: str,
    variant_key: str,
    missing: list[str],
    base_models: dict[str, bytes],
    step_models: dict[str, bytes],
    steps: dict[str, dict[str, Any]],
    variants: set[str],
    threads: int,
) -> TaskOutput:
    _register(plugins)
    models = base_models | step_models
    return run_variant_task(exp, prefix, variant_key, missing, models, steps, variants, threads)


class RayExecutor:
    """Runs a prepared experiment as Ray tasks; this process writes the store."""

    def __init__(self, prepared: Prepared, store: Store, spec: RaySpec) -> None:
        self.p = prepared
        self.store = store
        self.spec = spec
        #: the driver's share of the work: the baseline, the bookkeeping, level selection
        self.local = LocalExecutor(prepared, store)

    @property
    def selection_keys(self) -> list[tuple[str, str, str]]:
        return self.local.selection_keys

    def _files(self, keys: tuple[str, ...]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key in keys:
            path = self.store.models_dir / f"{key}.pt"
            if path.is_file():
                out[key] = path.read_bytes()
        return out

    def run(self) -> RunSummary:
        ray = require_ray()
        t0 = time.perf_counter()
        summary = self.local.summary
        plan = self.p.plan
        todo: list[tuple[VariantPlan, list[Job]]] = []
        for vp in plan.all_variants:
            missing = self.local.missing_jobs(vp)
            if missing:
                todo.append((vp, missing))
        if todo:
            self.local.baseline()  # trained here, once, and cached in the run folder
            base_files = ray.put(self._files((plan.baseline.key,)))
            remote = ray.remote(_task).options(
                num_cpus=self.spec.cpus_per_task,
                num_gpus=self.spec.gpus_per_task,
                max_retries=0,
                name="compaudit-variant",
            )
            prefix = plan.baseline.name[: -len("baseline")]
            plugins = _plugins(self.p.experiment)
            pending: dict[Any, tuple[VariantPlan, list[Job]]] = {}
            for vp, missing in todo:
                steps = self._files(vp.step_keys)
                ref = remote.remote(
                    plugins,
                    self.p.experiment,
                    prefix,
                    vp.key,
                    [j.key for j in missing],
                    base_files,
                    steps,
                    {k: self.store.step_info(k) for k in steps},
                    {plan.baseline.key},
                    self.spec.cpus_per_task,
                )
                pending[ref] = (vp, missing)
                log.info("%s: submitted %d job(s) to ray", vp.name, len(missing))
            try:
                while pending:
                    (ref,), _ = ray.wait(list(pending), num_returns=1)
                    vp, missing = pending.pop(ref)
                    try:
                        out: TaskOutput = ray.get(ref)
                    except Exception as exc:
                        msg = _task_error(exc)
                        for job in missing:
                            self.local.put_error(job, f"ray task of {vp.name} failed: {msg}")
                        continue
                    self._store(out)
            except BaseException:
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
        self.local.select_levels()
        summary.seconds = time.perf_counter() - t0
        return summary

    def _store(self, out: TaskOutput) -> None:
        """Write what one task returned: weights first, then rows, each atomically."""
        for key, data in out.models.items():
            write_atomic(self.store.models_dir / f"{key}.pt", data)
        for key, info in out.steps:
            self.store.put_step(key, info)
        for row in out.variants:
            self.store.put_variant(
                row["key"],
                name=row["name"],
                parent=row["parent"],
                spec=row["spec"],
                lineage=row["lineage"],
                info=row["info"],
            )
        summary = self.local.summary
        for name in out.trained:
            if name not in summary.trained:
                summary.trained.append(name)
        jobs = {j.key: j for j in self.p.plan.jobs}
        for row in out.results:
            if row["error"] is not None:
                self.local.put_error(jobs[row["key"]], row["error"], seconds=row["seconds"])
            else:
                self.local.put_result(jobs[row["key"]], row["result"], seconds=row["seconds"])


def _task_error(exc: BaseException) -> str:
    """One line naming why a task failed: Ray's error type and the first line of its message (a
    task's own exception comes wrapped in a ``RayTaskError``, its cause says what it was)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        exc = cause
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:500]
