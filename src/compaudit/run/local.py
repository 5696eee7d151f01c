"""The local executor: build each variant, run its missing probes, store every result at once.

Order of work: the baseline first, then each variant in the order of the experiment file. A
variant all of whose results are stored is not even loaded. A variant whose build raises gives an
error row for each of its missing jobs and the run goes on; a probe that raises gives an error row
(:func:`compaudit.run.jobs.run_job`); a baseline that cannot be built or trained stops the run
(see :mod:`compaudit.run`).
"""

from __future__ import annotations

import time

from compaudit.probes import ProbeContext
from compaudit.results import ResultSink
from compaudit.run.build import Builder
from compaudit.run.jobs import Ledger, RunSummary, build_failed, run_job
from compaudit.run.plan import Job, VariantPlan
from compaudit.run.prepare import Prepared
from compaudit.variant import Variant


class LocalExecutor:
    """Runs a prepared cell in this process, writing through ``sink`` (the run's store)."""

    def __init__(self, prepared: Prepared, sink: ResultSink, summary: RunSummary) -> None:
        self.p = prepared
        self.sink = sink
        self.summary = summary
        self.builder = Builder(prepared, sink)
        self.ledger = Ledger(prepared.plan, sink, summary)
        self._ctx: ProbeContext | None = None

    def context(self) -> ProbeContext:
        if self._ctx is None:
            self._ctx = self.p.probe_context(self.builder.baseline(), self.sink.cache_dir)
        return self._ctx

    def run_variant(self, vp: VariantPlan, missing: list[Job]) -> None:
        """Build ``vp`` and run the probes of ``missing`` on it, storing each result (or its error)
        as soon as it is measured; a build that raises gives each of them an error row."""
        self.builder.baseline()  # outside the guard below: a failed baseline stops the run
        try:
            variant = self.builder.build(vp)
        except Exception as exc:
            msg = build_failed(vp.name, exc)
            for job in missing:
                self.ledger.put_error(job, msg)
            return
        self._run_jobs(variant, missing)

    def _run_jobs(self, variant: Variant, missing: list[Job]) -> None:
        ctx = self.context()
        for job in missing:
            outcome = run_job(self.p.plan.probes[job.probe], variant, ctx, job, seed=self.p.experiment.seed)
            self.ledger.record(job, outcome)
        ctx.forget(variant)

    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        for vp in self.p.plan.all_variants:
            missing = self.ledger.missing(vp)
            if missing:
                self.run_variant(vp, missing)
        for name in self.builder.trained:
            if name not in self.summary.trained:
                self.summary.trained.append(name)
        self.summary.seconds += time.perf_counter() - t0
        return self.summary
