"""The ``compaudit`` command line. Choices come from the registries."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from compaudit.compare import compare_command
from compaudit.compress import METHODS
from compaudit.config import Experiment
from compaudit.data import DATASETS
from compaudit.errors import CompauditError
from compaudit.export import dumps, export_format, write_export
from compaudit.export import export_rows as export_rows
from compaudit.integrations.mlflow import log_run, require_mlflow
from compaudit.models import MODELS
from compaudit.probes import PROBES
from compaudit.progress import on_terminal
from compaudit.report import write_report
from compaudit.run import run_experiment
from compaudit.run.plan import make_plans
from compaudit.run.prepare import check_step_inputs
from compaudit.run.validate import experiment_from_yaml_text, load_experiment, read_experiment, validate
from compaudit.store import Store, is_run_dir
from compaudit.units import format_spread

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit what compressing a CNN changes besides test accuracy.",
    pretty_exceptions_enable=False,
)

OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="run folder (report.html and results.sqlite)")
]


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of the
    moment it was created (which a caller, a notebook or a test harness may have closed since)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:

        if not on_terminal():
            super().emit(record)
            return
        # on a terminal, print above the progress bars instead of through them
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="compaudit: %(message)s",
        handlers=[_Stderr()],
        force=True,
    )


MlflowOpt = Annotated[
    bool | None,
    typer.Option(
        "--mlflow/--no-mlflow",
        help="log the run to MLflow when it ends (default: as the experiment file's mlflow says)",
    ),
]
MlflowUriOpt = Annotated[
    str | None,
    typer.Option("--mlflow-uri", metavar="URI", help="MLflow tracking URI or folder; implies --mlflow"),
]
MlflowExperimentOpt = Annotated[
    str | None,
    typer.Option("--mlflow-experiment", metavar="NAME", help="MLflow experiment; implies --mlflow"),
]


@dataclass(frozen=True)
class _MlflowTarget:
    """Where ``run`` and ``demo`` log to MLflow (``None`` fields: the run's own settings)."""

    tracking_uri: str | None
    experiment: str | None


def _mlflow_target(
    exp: Experiment, flag: bool | None, uri: str | None, experiment: str | None
) -> _MlflowTarget | None:
    """Whether to log the run to MLflow, checked before it starts: the extra must be there."""
    if flag is False:
        if uri is not None or experiment is not None:
            raise CompauditError("--no-mlflow: cannot be combined with --mlflow-uri or --mlflow-experiment")
        return None
    if not (flag or uri is not None or experiment is not None or exp.mlflow is not None):
        return None

    require_mlflow()
    return _MlflowTarget(uri, experiment)


def _finish(summary: Any, mlflow: _MlflowTarget | None = None) -> None:
    log = logging.getLogger("compaudit")
    log.info(
        "%d new result(s), %d cached, %d failed in %.1fs; report: %s",
        summary.new,
        summary.cached,
        len(summary.failed),
        summary.seconds,
        summary.report,
    )
    if mlflow is not None:
        try:
            log_run(summary.out, tracking_uri=mlflow.tracking_uri, experiment=mlflow.experiment)
        except CompauditError as exc:
            raise CompauditError(
                f"the run is stored in {summary.out}, but logging it to MLflow failed: {exc} "
                f"(log it again with: compaudit mlflow {summary.out})"
            ) from exc
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    out: OutOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    mlflow: MlflowOpt = None,
    mlflow_uri: MlflowUriOpt = None,
    mlflow_experiment: MlflowExperimentOpt = None,
    executor: Annotated[
        str | None,
        typer.Option(
            "--executor",
            help="run in this process (local) or as Ray tasks (ray); default: the file's executor",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="the Ray cluster to use (implies --executor ray); default: the file's ray.address, "
            "else a local cluster started for the run",
        ),
    ] = None,
) -> None:
    """Run an experiment: build every variant, run every probe, write the report; optionally log
    the run to MLflow."""

    _setup_logging(quiet)
    exp = read_experiment(experiment)
    if executor not in (None, "local", "ray"):
        raise CompauditError(f"--executor: unknown executor {executor!r}; choose local or ray")
    if address is not None:
        if executor == "local":
            raise CompauditError("--address names a Ray cluster; it needs --executor ray")
        exp = exp.model_copy(
            update={"executor": "ray", "ray": exp.ray.model_copy(update={"address": address})}
        )
    elif executor is not None:
        exp = exp.model_copy(update={"executor": executor})
    # validated with the overrides applied: `--executor local` runs a file written for Ray without it
    exp = validate(exp, source=str(experiment))
    target = _mlflow_target(exp, mlflow, mlflow_uri, mlflow_experiment)
    _finish(run_experiment(exp, out), target)


def demo_experiment_text() -> str:
    return resources.files("compaudit").joinpath("examples/demo.yaml").read_text(encoding="utf-8")


@app.command()
def demo(
    out: OutOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    mlflow: MlflowOpt = None,
    mlflow_uri: MlflowUriOpt = None,
    mlflow_experiment: MlflowExperimentOpt = None,
) -> None:
    """Run the built-in demo: VGG-6 on the embedded digits data, compressed and audited."""

    _setup_logging(quiet)
    exp = experiment_from_yaml_text(demo_experiment_text(), source="demo.yaml", check=False)
    exp = validate(exp, source="demo.yaml")  # MLflow: as the flags say, checked below
    target = _mlflow_target(exp, mlflow, mlflow_uri, mlflow_experiment)
    _finish(run_experiment(exp, out or Path("runs/demo")), target)


@app.command()
def check(experiment: Annotated[Path, typer.Argument(help="experiment YAML file")]) -> None:
    """Validate an experiment file and print its plan, without running anything."""

    exp = load_experiment(experiment)
    for cell in exp.cell_specs():  # a user's deployed file must fit the data set
        check_step_inputs(cell.experiment)
    plans = make_plans(exp)
    n_variants = sum(len(p.all_variants) for p in plans)
    typer.echo(f"{experiment}: valid; {n_variants} variant(s) x {len(plans[0].probes)} probe(s)")
    for plan in plans:
        for vp in plan.all_variants:
            parts = []
            for st in vp.steps:
                ft = (
                    f" + {st.finetune.objective} fine-tune {st.finetune.epochs} epoch(s)"
                    if st.finetune
                    else ""
                )
                parts.append(f"{st.method}{ft}")
            typer.echo(f"  {vp.name:<24} {vp.key}  {' -> '.join(parts) or '(base model)'}")
        for sw in plan.sweeps:
            pick = (
                f"; select within {format_spread(sw.select.within, 'fraction')} on {sw.select.split}"
                if sw.select
                else ""
            )
            typer.echo(f"  sweep {sw.name}: {sw.param} over {[v for _, v in sw.levels]}{pick}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")]) -> None:
    """Rebuild the HTML report of a run folder."""

    with Store(run_dir) as store:
        path = write_report(store)
    typer.echo(str(path))


RUN_STATUSES = ("complete", "failed", "running")


def _since(text: str) -> float:
    """Local midnight of a ``YYYY-MM-DD`` date, as a timestamp."""
    import datetime as dt
    import re

    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise CompauditError(f"--since: {text!r} is not a valid date of the form YYYY-MM-DD") from None
    return dt.datetime(day.year, day.month, day.day).timestamp()


@app.command("list")
def list_runs(
    root: Annotated[Path, typer.Argument(help="folder holding run folders")] = Path("runs"),
    name: Annotated[
        str | None, typer.Option("--name", help="only experiments whose name matches this glob")
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="only runs with this status: complete, failed or running")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="only runs started or finished on or after YYYY-MM-DD")
    ] = None,
) -> None:
    """List the runs under a folder (default: runs/), optionally filtered."""
    import datetime as dt
    from fnmatch import fnmatchcase

    if status is not None and status not in RUN_STATUSES:
        raise CompauditError(f"--status: unknown status {status!r}; choose one of: {', '.join(RUN_STATUSES)}")
    after = None if since is None else _since(since)
    if not root.is_dir():
        raise CompauditError(f"folder {str(root)!r} does not exist")
    dirs = [root] if is_run_dir(root) else sorted(d for d in root.iterdir() if d.is_dir() and is_run_dir(d))
    lines: list[str] = []
    for d in dirs:
        with Store(d) as s:
            run_name, run_status = s.meta("name"), s.meta("status")
            started, finished = s.meta("started"), s.meta("finished")
            count = s.count_results()
        if name is not None and not (isinstance(run_name, str) and fnmatchcase(run_name, name)):
            continue
        if status is not None and run_status != status:
            continue
        stamps = [float(t) for t in (started, finished) if t is not None]
        if after is not None and not (stamps and max(stamps) >= after):
            continue
        ts = finished or started
        when = dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M") if ts else "-"
        lines.append(f"{d!s:<32} {run_name or '-'!s:<20} {run_status or '-'!s:<9} {count:>7}  {when}")
    if not lines:
        filtered = name is not None or status is not None or since is not None
        typer.echo(f"no runs under {root}" + (" match the filters" if filtered and dirs else ""))
        return
    typer.echo(f"{'run':<32} {'name':<20} {'status':<9} {'results':>7}  finished")
    for line in lines:
        typer.echo(line)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    format: Annotated[str, typer.Option("--format", "-f", help="json, csv or parquet")] = "json",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="write this file (atomically) instead of printing; parquet needs it"
        ),
    ] = None,
) -> None:
    """Print or write the flat results table (variant, probe, metric, value, params...)."""

    fmt = export_format(format)
    if out is not None:
        write_export(run_dir, out, fmt)
        typer.echo(str(out))
    elif fmt == "parquet":
        raise CompauditError("parquet is binary: give --out FILE")
    else:
        typer.echo(dumps(export_rows(run_dir), fmt), nl=False)


@app.command("mlflow")
def mlflow_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri",
            metavar="URI",
            help="tracking URI or folder (default: the experiment file's, MLFLOW_TRACKING_URI, ./mlruns)",
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment", metavar="NAME", help="MLflow experiment (default: the experiment's name)"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Log a run folder to MLflow (extra mlflow): one new run, a nested run per variant; prints its id."""

    _setup_logging(quiet)
    typer.echo(log_run(run_dir, tracking_uri=uri, experiment=experiment))


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(metavar="RUN_A", help="the earlier run")],
    run_b: Annotated[Path, typer.Argument(metavar="RUN_B", help="the later run (deltas are B - A)")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML page (default RUN_B/compare-RUN_A.html)")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="absolute difference below which values count as equal")
    ] = 0.0,
) -> None:
    """Compare two runs: metrics that differ, variants whose weights changed, experiment and environment."""

    typer.echo(compare_command(run_a, run_b, out, tolerance))


@app.command()
def plugins() -> None:
    """List the registered data sets, models, compression methods and probes."""

    for reg in (DATASETS, MODELS, METHODS, PROBES):
        typer.echo(f"{reg.kind}s:")
        for name in reg.names():
            typer.echo(f"  {name:<22} {reg.doc(name)}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with code 2."""
    try:
        # without standalone mode, click returns the code of a `typer.Exit` instead of raising it
        code = app(args=argv, standalone_mode=False)
    except CompauditError as exc:
        msg = " ".join(str(exc).split())
        print(f"compaudit: error: {msg}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("compaudit: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        sys.exit(int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
