"""Running (variant, probe) jobs and keeping their books: the error policy lives here.

:func:`run_job` runs one probe on one variant and never lets the probe's failure escape: a probe
that raises (a :class:`~compaudit.errors.CompauditError` or any other exception: a bug in a probe
is a failed measurement, not a failed run) gives an error row, as a variant whose build raises
gives one error row per missing job of it. Both executors, and a Ray worker, call it, so a local
run and a Ray run record the same rows for the same failures.

:class:`Ledger` writes outcomes to a :class:`~compaudit.results.ResultSink`, counts them for the
:class:`RunSummary` and logs the ``[done/total]`` progress lines.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compaudit.errors import CompauditError
from compaudit.probes import Probe, ProbeContext
from compaudit.results import ProbeResult, ResultSink
from compaudit.run.plan import Job, Plan, VariantPlan
from compaudit.run.prepare import error_line
from compaudit.runtime import derive_seed, seed_everything
from compaudit.variant import Variant

log = logging.getLogger("compaudit")


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

    def add(self, other: RunSummary) -> None:
        """Count ``other`` (one cell's part of the run) in this summary."""
        self.new += other.new
        self.cached += other.cached
        self.failed += other.failed
        self.trained += [t for t in other.trained if t not in self.trained]
        self.seconds += other.seconds


@dataclass(frozen=True)
class Outcome:
    """What running one job gave: a result, or the one-line error that replaces it."""

    result: ProbeResult | None
    error: str | None
    seconds: float


def run_job(probe: Probe[Any], variant: Variant, ctx: ProbeContext, job: Job, *, seed: int) -> Outcome:
    """Run ``probe`` on ``variant`` (built from ``job``'s variant), seeded from ``job``'s key.
    Whatever the probe raises becomes the outcome's error (a :class:`CompauditError` by its
    message, anything else by its type and first line, its traceback logged)."""
    seed_everything(derive_seed(seed, job.key))
    start = time.perf_counter()
    try:
        result = probe.run(variant, ctx)
    except CompauditError as exc:
        return Outcome(None, error_line(exc), time.perf_counter() - start)
    except Exception as exc:
        # a bug in the probe: the row says what, the log keeps where
        log.error("%s x %s: probe %r raised", job.variant, job.probe, probe.name, exc_info=True)
        return Outcome(None, error_line(exc), time.perf_counter() - start)
    return Outcome(result, None, time.perf_counter() - start)


def build_failed(variant: str, exc: BaseException) -> str:
    """The error of every job of a variant whose build raised ``exc``."""
    return f"build of {variant} failed: {error_line(exc)}"


class Ledger:
    """The books of one cell: writes each job's outcome to ``sink`` as soon as it is known, counts
    it and logs a progress line."""

    def __init__(self, plan: Plan, sink: ResultSink, summary: RunSummary) -> None:
        self.plan = plan
        self.sink = sink
        self.summary = summary
        self._total, self._done = len(plan.jobs), 0

    def missing(self, vp: VariantPlan) -> list[Job]:
        """The jobs of ``vp`` not stored yet (a failed one counts as missing, so a rerun retries
        it); the stored ones are logged and counted as cached."""
        jobs = self.plan.jobs_of(vp.key)
        missing = [j for j in jobs if not self.sink.has_result(j.key)]
        for j in jobs:
            if j not in missing:
                self._done += 1
                log.info("[%d/%d] cached: %s x %s (skipped)", self._done, self._total, j.variant, j.probe)
        self.summary.cached += len(jobs) - len(missing)
        return missing

    def _write(self, job: Job, result: ProbeResult | None, seconds: float, error: str | None = None) -> None:
        self.sink.put_result(
            job.key,
            variant_key=job.variant_key,
            variant=job.variant,
            probe=job.probe,
            spec=job.spec,
            result=result,
            seconds=seconds,
            error=error,
        )

    def record(self, job: Job, outcome: Outcome) -> None:
        """Store ``outcome`` of ``job``: its result, or its error."""
        if outcome.error is not None or outcome.result is None:
            self.put_error(job, outcome.error or "no result", seconds=outcome.seconds)
        else:
            self.put_result(job, outcome.result, seconds=outcome.seconds)

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
