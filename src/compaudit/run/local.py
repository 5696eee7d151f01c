"""The local executor: build each variant, run its missing probes, store every result at once.

Order of work: the baseline first, then each variant in the order of the experiment file. A
variant all of whose results are stored is not even loaded. Variant weights are cached in the run
folder, so a rerun after a crash rebuilds nothing it already has, and a killed training resumes
from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compaudit.compress import METHODS, CompressContext, Method, make_permanent
from compaudit.compress.base import FitFn, copy_model
from compaudit.config import Experiment, TrainSpec
from compaudit.data import DataBundle, load_dataset
from compaudit.data.base import ArrayDataset
from compaudit.errors import CompauditError
from compaudit.models import build_model, load_checkpoint, load_state_strict
from compaudit.probes import ProbeContext, ProbeResult
from compaudit.run.plan import Job, Plan, SweepPlan, VariantPlan, make_plan
from compaudit.runtime import (
    atomic_torch_save,
    derive_seed,
    environment,
    resolve_device,
    seed_everything,
    spec_key,
)
from compaudit.store import Store, is_run_dir
from compaudit.train import Objective, fit
from compaudit.units import format_spread
from compaudit.variant import Variant

if TYPE_CHECKING:
    from compaudit.run.worker import Recorder

log = logging.getLogger("compaudit")

#: units (:mod:`compaudit.units`) of the metrics of a sweep's selection record (probe ``selection``):
#: the chosen level of the sweep's parameter (a sparsity, a bit width, or a non-numeric level's
#: position) is a number on its own scale; the accuracies are shares
SELECTION_UNITS = {
    "selected_level": "score",
    "selected_accuracy": "fraction",
    "reference_accuracy": "fraction",
}


@dataclass
class RunSummary:
    """What a run did."""

    out: Path
    report: Path
    new: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Prepared:
    """Everything checked before a run writes anything: the experiment, its data, its plan."""

    experiment: Experiment
    data: DataBundle
    plan: Plan
    device: torch.device
    base_model: nn.Module
    #: the other domains the probes evaluate, loaded in the source's image format
    domains: dict[str, DataBundle] = field(default_factory=dict)


def prepare(exp: Experiment, prefix: str = "") -> Prepared:
    """Validate everything that can be validated without running: device, data, model, checkpoint,
    the domains the probes evaluate. ``exp`` is one cell of :meth:`Experiment.cells`."""
    device = resolve_device(exp.device)
    data = load_dataset(exp.data.name, exp.data.root, exp.data.params)
    plan = make_plan(exp, prefix)
    for i, spec in enumerate(exp.probes):
        problem = plan.probes[spec.name].check_inputs(exp)
        if problem:
            raise CompauditError(f"probes[{i}].params.{problem}")
    needed = [d for probe in plan.probes.values() for d in probe.needs_domains(exp)]
    domains = {name: load_domain(exp, name, data) for name in dict.fromkeys(needed)}
    # the initial weights depend only on the baseline's key, so a resumed run starts from the same ones
    seed_everything(derive_seed(exp.seed, plan.baseline.key, "init"))
    model = build_model(
        exp.model.name, input_shape=data.input_shape, num_classes=data.num_classes, params=exp.model.params
    )
    if exp.model.checkpoint is not None:
        load_checkpoint(model, exp.model.checkpoint)
    _check_forward(model, data)
    return Prepared(exp, data, plan, device, model, domains)


def load_domain(exp: Experiment, name: str, source: DataBundle) -> DataBundle:
    """Load domain ``name`` of ``exp`` converted to the source's channels and size, check that it
    has the source's classes, and put the images the probes evaluate (``DomainSpec.split``) in its
    ``test`` split."""
    spec = exp.domains[name]
    c, h, w = source.input_shape
    params = dict(spec.params)
    params.setdefault("channels", c)
    if h == w:
        params.setdefault("size", h)
    try:
        bundle = load_dataset(spec.name, spec.root, params)
    except CompauditError as exc:
        raise type(exc)(f"domains.{name}: {exc}") from None
    if bundle.input_shape != source.input_shape:
        raise CompauditError(
            f"domains.{name}: images of shape {bundle.input_shape} do not match the source's "
            f"{source.input_shape}; set its params size/channels to match"
        )
    if bundle.classes != source.classes:
        missing = sorted(set(source.classes) ^ set(bundle.classes))[:5]
        detail = f"they differ in {', '.join(missing)}" if missing else "they are in another order"
        raise CompauditError(
            f"domains.{name}: its {len(bundle.classes)} classes are not the source's "
            f"{len(source.classes)} ({detail})"
        )
    if spec.split == "all":
        parts = [bundle.train, bundle.val, bundle.test]
        assert all(isinstance(p, ArrayDataset) for p in parts)
        x = torch.cat([p.x for p in parts if isinstance(p, ArrayDataset)])
        y = torch.cat([p.y for p in parts if isinstance(p, ArrayDataset)])
        images: Any = ArrayDataset(x, y)
    else:
        images = bundle.split(spec.split)
    return DataBundle(name, images, images, images, bundle.classes, bundle.input_shape, bundle.bounds)


def _check_forward(model: nn.Module, data: DataBundle) -> None:
    x = data.test[0][0].unsqueeze(0)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.inference_mode():
            out = model(x)
    except Exception as exc:
        raise CompauditError(
            f"model {type(model).__name__} cannot run on {data.name} inputs of shape {tuple(x.shape)}: {exc}"
        ) from None
    finally:
        for m, flag in flags:
            m.training = flag
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise CompauditError(
            f"model {type(model).__name__} returns shape {tuple(out.shape)}; "
            f"expected (N, {data.num_classes}) logits"
        )


def data_info(p: Prepared) -> dict[str, str]:
    """The data set and every sample size the run uses, as the report shows them."""
    d = p.data
    info = {
        "data set": d.name,
        "input shape (C, H, W)": str(d.input_shape),
        "classes": f"{d.num_classes}: {', '.join(d.classes[:20])}{' …' if d.num_classes > 20 else ''}",
        "train / val / test images": f"{len(d.train)} / {len(d.val)} / {len(d.test)}",  # type: ignore[arg-type]
    }
    if p.experiment.source is not None:
        info["source domain"] = p.experiment.source
    for name, dom in p.domains.items():
        spec = p.experiment.domains[name]
        info[f"domain {name}"] = f"{spec.name}, {len(dom.test)} images ({spec.split})"  # type: ignore[arg-type]
    for name, probe in p.plan.probes.items():
        params = probe.params.model_dump(mode="json")
        info[f"probe {name}"] = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
    return info


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder: two runs writing one folder would corrupt it."""
    import fcntl

    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompauditError(
                f"another compaudit run is writing {str(out)!r}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale_temporaries(out: Path) -> int:
    """Delete the temporary files of writes a killed run never finished (under the run lock, so no
    live writer owns them). Completed files are only ever created by an atomic rename."""
    stale = [p for p in out.rglob("*") if p.is_file() and re.search(r"\.tmp\d+$", p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CompauditError(f"output {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_run_dir(out):
        raise CompauditError(
            f"output folder {str(out)!r} is not empty and is not a compaudit run; choose another"
        )


class LocalExecutor:
    """Runs a prepared experiment in this process."""

    def __init__(
        self, prepared: Prepared, store: Store | Recorder, *, context: ProbeContext | None = None
    ) -> None:
        """``context``: a probe context already made for ``prepared`` (with its baseline), as a Ray
        worker keeps one between tasks; default: made here when first needed."""
        self.p = prepared
        #: where results go: the run's store, or in a Ray worker a recorder that hands them to the driver
        self.store = store
        self._total, self._done = len(prepared.plan.jobs), 0
        self.exp = prepared.experiment
        self._baseline: Variant | None = context.baseline if context is not None else None
        self._ctx: ProbeContext | None = context
        self.summary = RunSummary(store.root, store.root / "report.html")
        self.selection_keys: list[tuple[str, str, str]] = []

    # ---------------------------------------------------------------- variants

    def _model_path(self, key: str) -> Path:
        return self.store.models_dir / f"{key}.pt"

    def _save_model(self, key: str, model: nn.Module) -> None:
        atomic_torch_save(model.state_dict(), self._model_path(key))

    def _load_cached(self, key: str, model: nn.Module) -> bool:
        path = self._model_path(key)
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_state_strict(model, state, source=repr(str(path)))
        return True

    def baseline(self) -> Variant:
        if self._baseline is None:
            vp = self.p.plan.baseline
            model = self.p.base_model
            if self.exp.model.checkpoint is None and not self._load_cached(vp.key, model):
                log.info(
                    "%s: training %s on %s for %d epochs",
                    vp.name,
                    self.exp.model.name,
                    self.p.data.name,
                    self.exp.model.train.epochs,
                )
                train_seed = derive_seed(self.exp.seed, vp.key, "train")
                result = fit(
                    model,
                    self.p.data,
                    self.exp.model.train,
                    seed=train_seed,
                    device=self.p.device,
                    desc=vp.name,
                    resume_path=self._model_path(vp.key).with_suffix(".train-state.pt"),
                )
                self._save_model(vp.key, model)
                self.summary.trained.append(vp.name)
                self.store.put_variant(
                    vp.key,
                    name=vp.name,
                    parent=None,
                    spec=vp.spec,
                    lineage=[],
                    info={
                        "train": result.history,
                        "best_epoch": result.best_epoch,
                        "best_val_accuracy": result.best_val_accuracy,
                        "seconds": result.seconds,
                    },
                )
            elif self.store.variant_info(vp.key) is None:
                self.store.put_variant(vp.key, name=vp.name, parent=None, spec=vp.spec, lineage=[], info={})
            model.to(self.p.device).eval()
            self._baseline = Variant(vp.name, vp.key, model)
        return self._baseline

    def _fit_for(self, key: str, seed: int, variant: str, record: dict[str, Any]) -> FitFn:
        """The one training loop bound to one step: its seed, device and resume file; what it
        trains is recorded in the step's lineage and the run summary."""

        def bound(
            model: nn.Module, spec: TrainSpec, *, objective: Objective | None = None, desc: str = ""
        ) -> Any:
            if variant not in self.summary.trained:
                self.summary.trained.append(variant)
            result = fit(
                model,
                self.p.data,
                spec,
                seed=seed,
                objective=objective,
                device=self.p.device,
                desc=f"{variant}: {desc}" if desc else variant,
                resume_path=self._model_path(key).with_suffix(".train-state.pt"),
            )
            record.setdefault("train", []).append(result.history)
            return result

        return bound

    def build(self, vp: VariantPlan) -> Variant:
        """Apply the chain step by step; each step's result is cached under its prefix key, so a
        rerun (or another variant with the same prefix) loads it instead of recomputing it."""
        if vp.is_baseline:
            return self.baseline()
        model = self.baseline().model
        lineage: list[dict[str, Any]] = []
        skipped: list[str] = []
        bits: float | None = None
        last_method: Method | None = None
        last_ctx: CompressContext | None = None
        for step, key in zip(vp.steps, vp.step_keys, strict=True):
            method = METHODS.get(step.method).from_spec(step.method, step.params)
            cached = self._model_path(key).is_file()
            seed = derive_seed(self.exp.seed, key)
            trained: dict[str, Any] = {}
            ctx = CompressContext(
                self.p.data,
                seed,
                self.p.device,
                restoring=cached,
                fit=self._fit_for(key, seed, vp.name, trained),
                variant=vp.name,
            )
            seed_everything(seed)
            if method.needs_plain_weights:
                model = make_permanent(copy_model(model))
            if not cached:
                log.info("%s: applying %s", vp.name, method.name)
            model = method.apply(model, ctx).to(self.p.device)
            record = method.describe()
            record.update(trained)
            if cached:
                self._load_cached(key, model)
                record.update(self.store.step_info(key))
            else:
                if step.finetune is not None and step.finetune.epochs > 0:
                    log.info(
                        "%s: %s fine-tuning for %d epoch(s) after %s",
                        vp.name,
                        step.finetune.objective,
                        step.finetune.epochs,
                        method.name,
                    )
                    ft_seed = derive_seed(seed, "finetune")
                    result = fit(
                        model,
                        self.p.data,
                        step.finetune,
                        seed=ft_seed,
                        device=self.p.device,
                        desc=vp.name,
                        resume_path=self._model_path(key).with_suffix(".finetune-state.pt"),
                    )
                    record["finetune"] = {"objective": step.finetune.objective, "history": result.history}
                    if vp.name not in self.summary.trained:
                        self.summary.trained.append(vp.name)
                record["skipped"] = list(ctx.skipped)
                self._save_model(key, model)
                self.store.put_step(
                    key, {k: record[k] for k in ("finetune", "skipped", "train") if k in record}
                )
            skipped.extend(record.get("skipped", []))
            lineage.append(record)
            bits = method.weight_bits() or bits
            last_method, last_ctx = method, ctx
        final = make_permanent(copy_model(model)).eval()
        deployed = None
        if last_method is not None and last_ctx is not None:
            last_ctx.restoring = True  # deploying never trains
            deployed = last_method.deploy(final, last_ctx)
        self.store.put_variant(
            vp.key,
            name=vp.name,
            parent=vp.parent,
            spec=vp.spec,
            lineage=lineage,
            info={"skipped": skipped, "bits": bits, "deployed": deployed is not None},
        )
        return Variant(
            vp.name,
            vp.key,
            final,
            lineage=lineage,
            parent=vp.parent,
            deployed=deployed,
            surrogate=final if deployed is not None else None,
            bits=bits,
            skipped=skipped,
        )

    # ---------------------------------------------------------------- level selection

    def _select(self, sweep: SweepPlan) -> None:
        """Store the most compressed level of ``sweep`` whose accuracy stays within the tolerance of
        the baseline's (computed from stored accuracy results; cheap, so recomputed every run)."""
        assert sweep.select is not None
        store = self.store
        assert isinstance(store, Store)  # selection runs where the results are: the driver
        plan = self.p.plan
        split = sweep.select.split
        acc_jobs = {j.variant: j for j in plan.jobs if j.probe == "accuracy"}

        def accuracy(variant: str) -> float | None:
            job = acc_jobs.get(variant)
            rows = store.metric_rows([(variant, "accuracy", job.key)]) if job else []
            hit = [r["value"] for r in rows if r["metric"] == "accuracy" and r.get("split") == split]
            return float(hit[0]) if hit else None

        reference = sweep.select.match or plan.baseline.name
        base = accuracy(reference)
        res = ProbeResult()
        chosen: tuple[str, Any] | None = None
        if base is not None:
            for name, level in sweep.levels:  # least to most compressed
                acc = accuracy(name)
                if acc is not None and acc >= base - sweep.select.within:
                    chosen = (name, level)
        if chosen is None:
            res.warnings.append(
                f"sweep {sweep.name}: no level keeps {split} accuracy within "
                f"{format_spread(sweep.select.within, 'fraction')} of {reference}'s"
            )
            res.add("selected_level", float("nan"), param=sweep.param, split=split)
        else:
            name, level = chosen
            value = (
                float(level)
                if isinstance(level, int | float)
                else float([lv for _, lv in sweep.levels].index(level))
            )
            res.add("selected_level", value, param=sweep.param, split=split, selected_variant=name)
            res.add("selected_accuracy", accuracy(name) or float("nan"), split=split, selected_variant=name)
        res.add(
            "reference_accuracy", float("nan") if base is None else base, split=split, reference=reference
        )
        res.metrics = [dataclasses.replace(m, unit=SELECTION_UNITS[m.name]) for m in res.metrics]
        key = spec_key(
            {
                "select": sweep.select.model_dump(),
                "levels": [
                    (n, lv, next(j.key for j in plan.jobs if j.variant == n)) for n, lv in sweep.levels
                ],
                "baseline": plan.baseline.key,
                "match": next((v.key for v in plan.all_variants if v.name == sweep.select.match), None),
            }
        )
        self.store.put_result(
            key,
            variant_key="",
            variant=sweep.name,
            probe="selection",
            spec={"sweep": sweep.name},
            result=res,
            seconds=0.0,
        )
        self.selection_keys.append((sweep.name, "selection", key))
        if chosen is not None:
            log.info("sweep %s: selected %s (%s = %s)", sweep.name, chosen[0], sweep.param, chosen[1])

    # ---------------------------------------------------------------- probes

    def context(self) -> ProbeContext:
        if self._ctx is None:
            self._ctx = ProbeContext(
                data=self.p.data,
                baseline=self.baseline(),
                device=self.p.device,
                seed=self.exp.seed,
                domains=self.p.domains,
                source=self.exp.source,
            )
        return self._ctx

    def missing_jobs(self, vp: VariantPlan) -> list[Job]:
        """The jobs of ``vp`` not stored yet (a failed one counts as missing, so a rerun retries
        it); the stored ones are logged and counted as cached."""
        jobs = self.p.plan.jobs_of(vp.key)
        missing = [j for j in jobs if not self.store.has_result(j.key)]
        for j in jobs:
            if j not in missing:
                self._done += 1
                log.info("[%d/%d] cached: %s x %s (skipped)", self._done, self._total, j.variant, j.probe)
        self.summary.cached += len(jobs) - len(missing)
        return missing

    def run_variant(self, vp: VariantPlan, missing: list[Job]) -> None:
        """Build ``vp`` and run the probes of ``missing`` on it, storing each result (or its error)
        as soon as it is measured."""
        variant = self.build(vp)
        for job in missing:
            self.run_job(variant, job)
        self.context().forget(variant)

    def run_job(self, variant: Variant, job: Job) -> None:
        """Run the probe of ``job`` on ``variant`` (built from the job's variant) and store its
        result, or its error where the probe raises a :class:`CompauditError`."""
        probe = self.p.plan.probes[job.probe]
        ctx = self.context()
        seed_everything(derive_seed(self.exp.seed, job.key))
        start = time.perf_counter()
        try:
            result = probe.run(variant, ctx)
        except CompauditError as exc:
            self.put_error(job, str(exc), seconds=time.perf_counter() - start)
            return
        self.put_result(job, result, seconds=time.perf_counter() - start)

    def _write(self, job: Job, result: ProbeResult | None, seconds: float, error: str | None = None) -> None:
        self.store.put_result(
            job.key,
            variant_key=job.variant_key,
            variant=job.variant,
            probe=job.probe,
            spec=job.spec,
            result=result,
            seconds=seconds,
            error=error,
        )

    def put_result(self, job: Job, result: ProbeResult, *, seconds: float) -> None:
        """Store the result of ``job``."""
        self._write(job, result, seconds)
        self.summary.new += 1
        self._done += 1
        log.info("[%d/%d] done: %s x %s (%.1fs)", self._done, self._total, job.variant, job.probe, seconds)

    def put_error(self, job: Job, msg: str, *, seconds: float = 0.0) -> None:
        """Store that ``job`` failed with ``msg`` (a rerun tries it again)."""
        self._done += 1
        log.error("[%d/%d] %s x %s failed: %s", self._done, self._total, job.variant, job.probe, msg)
        self._write(job, None, seconds, msg)
        self.summary.failed.append(f"{job.variant} x {job.probe}: {msg}")

    def select_levels(self) -> None:
        for sweep in self.p.plan.sweeps:
            if sweep.select is not None:
                self._select(sweep)

    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        for vp in self.p.plan.all_variants:
            missing = self.missing_jobs(vp)
            if missing:
                self.run_variant(vp, missing)
        self.select_levels()
        self.summary.seconds = time.perf_counter() - t0
        return self.summary


def run_experiment(exp: Experiment, out: Path | None = None, *, report: bool = True) -> RunSummary:
    """Run ``exp`` into ``out`` (default: the experiment's ``output`` or ``runs/NAME``): validate,
    plan, build and probe what is not stored yet, then write the report (unless ``report`` is
    false). An experiment with several ``sources`` runs one cell per source into the same run
    folder. ``executor: ray`` builds and probes the variants as Ray tasks
    (:mod:`compaudit.run.ray`); this process still writes every result."""
    from compaudit.report import write_report

    out = Path(out or exp.output or Path("runs") / exp.name)
    check_out_dir(out)
    if exp.executor == "ray":
        from compaudit.run.ray import require_ray

        require_ray()
    # every input error is raised here, before anything is written
    cells = [prepare(cell, prefix) for prefix, cell in exp.cells()]
    created = not out.exists()
    try:
        store = Store(out, create=True)
    except Exception:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    with store, run_lock(out):
        removed = remove_stale_temporaries(out)
        if removed:
            log.info("removed %d file(s) left half-written by an interrupted run", removed)
        plan_rows = [row for p in cells for row in p.plan.to_json()]
        info: dict[str, str] = {}
        for p in cells:  # one cell per source: keep each source's own lines apart
            prefix = p.plan.baseline.name[: -len("baseline")]
            for k, v in data_info(p).items():
                info[k if k.startswith(("probe ", "domain ")) or not prefix else f"{prefix}{k}"] = v
        store.set_meta(
            experiment=exp.to_yaml(),
            name=exp.name,
            plan=plan_rows,
            status="running",
            started=time.time(),
            environment={
                **environment(cells[0].device, exp.seed),
                **({"seed": ", ".join(map(str, exp.seeds))} if exp.seeds else {}),
            },
            data=info,
            seeds=exp.seeds,
            sweeps=[
                {
                    "name": sw.name,
                    "param": sw.param,
                    "levels": [[n, lv] for n, lv in sw.levels],
                    "baseline": p.plan.baseline.name,
                }
                for p in cells
                for sw in p.plan.sweeps
            ],
        )
        summary = RunSummary(out, out / "report.html")
        selection: list[tuple[str, str, str]] = []
        with contextlib.ExitStack() as stack:
            if exp.executor == "ray":
                from compaudit.run.ray import RayExecutor, ray_session

                try:
                    stack.enter_context(ray_session(exp.ray))
                except BaseException as exc:
                    store.set_meta(status="failed", error=str(exc))
                    raise
            for prepared in cells:
                executor: LocalExecutor | RayExecutor = (
                    RayExecutor(prepared, store, exp.ray)
                    if exp.executor == "ray"
                    else LocalExecutor(prepared, store)
                )
                try:
                    part = executor.run()
                except BaseException as exc:
                    store.set_meta(
                        status="failed", error="".join(traceback.format_exception_only(exc)).strip()
                    )
                    raise
                summary.new += part.new
                summary.cached += part.cached
                summary.failed += part.failed
                summary.trained += part.trained
                summary.seconds += part.seconds
                selection += executor.selection_keys
                del executor, prepared
        plan_rows += [{"variant": v, "probe": p, "key": k, "variant_key": ""} for v, p, k in selection]
        store.set_meta(
            status="complete" if not summary.failed else "failed", finished=time.time(), plan=plan_rows
        )
        if report:
            write_report(store)
    return summary
