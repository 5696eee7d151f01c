"""A run session: validate, prepare, lock the run folder, record its metadata, pick the executor,
select sweep levels, write the report; and apply the error policy of :mod:`compaudit.run`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from compaudit.config import Experiment
from compaudit.errors import CompauditError
from compaudit.report import write_report
from compaudit.run.jobs import RunSummary
from compaudit.run.local import LocalExecutor
from compaudit.run.prepare import Prepared, data_info, error_line, prepare
from compaudit.run.ray import RayExecutor, ray_session
from compaudit.run.select import select_levels
from compaudit.run.validate import validate
from compaudit.runtime import environment
from compaudit.store import DB_NAME, Store, is_run_dir

log = logging.getLogger("compaudit")


class Executor(Protocol):
    """Runs the missing jobs of one prepared cell, writing through the run's sink."""

    def run(self) -> RunSummary: ...


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder: two runs writing one folder would corrupt it."""
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


def _remove_created(out: Path, *, created_folder: bool) -> None:
    """Remove what a run that stopped created in ``out``: the folder itself if it created it, else
    everything in it (it was empty: :func:`check_out_dir` refuses a non-empty folder that is not a
    run, and a run folder is never removed)."""
    if created_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _write_meta(store: Store, exp: Experiment, cells: list[Prepared]) -> list[dict[str, str]]:
    """Record the experiment, its plan, environment and data in the store; returns the plan rows."""
    plan_rows = [row for p in cells for row in p.plan.to_json()]
    info: dict[str, str] = {}
    for p in cells:  # one cell per source or seed: keep each cell's own lines apart
        prefix = p.plan.prefix
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
                **(
                    {"sweep": sw.identity.name, "source": sw.identity.source, "seed": sw.identity.seed}
                    if sw.identity is not None
                    else {}
                ),
            }
            for p in cells
            for sw in p.plan.sweeps
        ],
    )
    return plan_rows


def _executor(exp: Experiment, prepared: Prepared, store: Store, summary: RunSummary) -> Executor:
    if exp.executor == "ray":
        return RayExecutor(prepared, store, summary, exp.ray)
    return LocalExecutor(prepared, store, summary)


def run_experiment(exp: Experiment, out: Path | None = None, *, report: bool = True) -> RunSummary:
    """Run ``exp`` into ``out`` (default: the experiment's ``output`` or ``runs/NAME``): validate,
    plan, build and probe what is not stored yet, then write the report (unless ``report`` is
    false). An experiment with several ``sources`` or ``seeds`` runs one cell per source and seed
    into the same run folder. ``executor: ray`` builds and probes the variants as Ray tasks
    (:mod:`compaudit.run.ray`); this process still writes every result.

    Errors follow the policy of :mod:`compaudit.run`: bad input and a baseline that cannot be
    built or trained raise a one-line :class:`CompauditError`, and the run folder this call
    created is removed (one being resumed is left as it was); failed variants and probes are
    error rows, listed in the summary's ``failed``."""
    exp = validate(exp)
    out = Path(out or exp.output or Path("runs") / exp.name)
    check_out_dir(out)
    # every input error is raised here, before anything is written
    cells = [prepare(c.experiment, c.prefix, source=c.source, seed=c.seed) for c in exp.cell_specs()]
    created_folder = not out.exists()
    fresh = not (out / DB_NAME).is_file()
    try:
        store = Store(out, create=True)
    except Exception:
        if fresh:
            _remove_created(out, created_folder=created_folder)
        raise
    try:
        return _run(exp, cells, store, report=report)
    except CompauditError:
        if fresh:
            _remove_created(out, created_folder=created_folder)
        raise


def _run(exp: Experiment, cells: list[Prepared], store: Store, *, report: bool) -> RunSummary:
    out = store.root
    with store, run_lock(out):
        removed = remove_stale_temporaries(out)
        if removed:
            log.info("removed %d file(s) left half-written by an interrupted run", removed)
        plan_rows = _write_meta(store, exp, cells)
        summary = RunSummary(out, out / "report.html")
        try:
            with contextlib.ExitStack() as stack:
                if exp.executor == "ray":
                    stack.enter_context(ray_session(exp.ray))
                for prepared in cells:
                    _executor(exp, prepared, store, summary).run()
                    selection = select_levels(prepared.plan, store)
                    plan_rows += [
                        {"variant": v, "probe": p, "key": k, "variant_key": ""} for v, p, k in selection
                    ]
        except BaseException as exc:
            store.set_meta(status="failed", error=error_line(exc))
            raise
        store.set_meta(
            status="complete" if not summary.failed else "failed", finished=time.time(), plan=plan_rows
        )
        if report:
            write_report(store)
    return summary
