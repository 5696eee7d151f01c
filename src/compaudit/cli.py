"""The ``compaudit`` command line. Choices come from the registries."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from compaudit.errors import CompauditError

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


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="compaudit: %(message)s",
        handlers=[_Stderr()],
        force=True,
    )


def _finish(summary: Any) -> None:
    log = logging.getLogger("compaudit")
    log.info(
        "%d new result(s), %d cached, %d failed in %.1fs; report: %s",
        summary.new,
        summary.cached,
        len(summary.failed),
        summary.seconds,
        summary.report,
    )
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    out: OutOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run an experiment: build every variant, run every probe, write the report."""
    from compaudit.config import load_experiment
    from compaudit.run import run_experiment

    _setup_logging(quiet)
    exp = load_experiment(experiment)
    _finish(run_experiment(exp, out))


def demo_experiment_text() -> str:
    return resources.files("compaudit").joinpath("examples/demo.yaml").read_text(encoding="utf-8")


@app.command()
def demo(out: OutOpt = None, quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
    """Run the built-in demo: VGG-6 on the embedded digits data, compressed and audited."""
    from compaudit.config import Experiment
    from compaudit.run import run_experiment

    _setup_logging(quiet)
    exp = Experiment.from_yaml_text(demo_experiment_text(), source="demo.yaml")
    _finish(run_experiment(exp, out or Path("runs/demo")))


@app.command()
def check(experiment: Annotated[Path, typer.Argument(help="experiment YAML file")]) -> None:
    """Validate an experiment file and print its plan, without running anything."""
    from compaudit.config import load_experiment
    from compaudit.run.plan import make_plans

    exp = load_experiment(experiment)
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
            pick = f"; select within {sw.select.within:.0%} on {sw.select.split}" if sw.select else ""
            typer.echo(f"  sweep {sw.name}: {sw.param} over {[v for _, v in sw.levels]}{pick}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")]) -> None:
    """Rebuild the HTML report of a run folder."""
    from compaudit.report import write_report
    from compaudit.store import Store

    with Store(run_dir) as store:
        path = write_report(store)
    typer.echo(str(path))


@app.command("list")
def list_runs(
    root: Annotated[Path, typer.Argument(help="folder holding run folders")] = Path("runs"),
) -> None:
    """List the runs under a folder (default: runs/)."""
    from compaudit.store import Store, is_run_dir

    if not root.is_dir():
        raise CompauditError(f"folder {str(root)!r} does not exist")
    dirs = [root] if is_run_dir(root) else sorted(d for d in root.iterdir() if d.is_dir() and is_run_dir(d))
    if not dirs:
        typer.echo(f"no runs under {root}")
        return
    typer.echo(f"{'run':<32} {'name':<20} {'status':<9} {'results':>7}  finished")
    import datetime as dt

    for d in dirs:
        with Store(d) as s:
            ts = s.meta("finished") or s.meta("started")
            when = dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M") if ts else "-"
            name, status = s.meta("name", "-"), s.meta("status", "-")
            typer.echo(f"{d!s:<32} {name!s:<20} {status!s:<9} {s.count_results():>7}  {when}")


def export_rows(run_dir: Path) -> list[dict[str, Any]]:
    from compaudit.store import Store

    with Store(run_dir) as store:
        plan = store.meta("plan", []) or []
        return store.metric_rows([(j["variant"], j["probe"], j["key"]) for j in plan])


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="run folder")],
    format: Annotated[str, typer.Option("--format", "-f", help="json or csv")] = "json",
) -> None:
    """Print the flat results table (variant, probe, metric, value, params...) as JSON or CSV."""
    rows = export_rows(run_dir)
    if format == "json":
        typer.echo(json.dumps(rows, indent=1))
    elif format == "csv":
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        typer.echo(buf.getvalue(), nl=False)
    else:
        raise CompauditError(f"unknown export format {format!r}; choose one of: csv, json")


@app.command()
def plugins() -> None:
    """List the registered data sets, models, compression methods and probes."""
    from compaudit.compress import METHODS
    from compaudit.data import DATASETS
    from compaudit.models import MODELS
    from compaudit.probes import PROBES

    for reg in (DATASETS, MODELS, METHODS, PROBES):
        typer.echo(f"{reg.kind}s:")
        for name in reg.names():
            typer.echo(f"  {name:<22} {reg.doc(name)}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with code 2."""
    try:
        app(args=argv, standalone_mode=False)
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
    sys.exit(0)


if __name__ == "__main__":
    main()
