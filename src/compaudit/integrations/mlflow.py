"""Log a run folder to MLflow: its metrics, its experiment file and its report (extra ``mlflow``).

:func:`log_run` reads a run folder (``results.sqlite``) and writes one new MLflow run:

- a **parent run**, named after the compaudit experiment, with

  - tags ``compaudit.run_dir`` (the run folder, absolute), ``compaudit.status`` (``complete``,
    ``failed`` or ``running``), ``compaudit.version``, ``compaudit.started`` and, for each entry of
    the run's environment, ``compaudit.env.KEY`` (``compaudit.env.device``, ``compaudit.env.seed``,
    ``compaudit.env.torch``...). The experiment's ``description`` becomes the run's MLflow
    description. Start and end times are those of the compaudit run;
  - params: the experiment file as stored in the run, flattened to dotted keys (``model.name``,
    ``data.params.size``, ``variants.3.steps.0.params.ratio``), values written as in JSON
    (``null``, ``true``, ``0.05``, ``[]``), cut to MLflow's 6,000 characters;
  - artifacts ``report.html``, ``experiment.yaml`` (the whole experiment file, as stored) and
    ``results.csv`` (the table ``compaudit export -f csv`` prints);

- one **nested child run** per variant, ``baseline`` included, named after it (tag
  ``compaudit.variant``), with the variant's steps as params (``steps.0.method``,
  ``steps.0.params.sparsity``...) and every metric measured on it, the noisy wall-clock ones
  included. A metric's key is ``PROBE/METRIC``, then ``.PARAM-VALUE`` for each param that
  identifies the measurement, params sorted by name (as the store keeps them)::

      accuracy/accuracy.split-test
      adversarial/robust_accuracy.attack-pgd.eps-0.1
      efficiency/latency.batch_size-8.model-float.threads-2

  A character MLflow does not allow in a key (it allows letters, digits, ``_ - . /`` and space)
  becomes ``_``; a key is cut to 250 characters; a key met twice in one variant gets ``.2``,
  ``.3``... A value the run could not measure is logged as NaN (MLflow accepts it) and counted in
  the child's tag ``compaudit.nan_metrics``.

Where it logs to:

- the tracking URI is ``tracking_uri``, else the ``mlflow.tracking_uri`` of the run's experiment
  file, else the environment variable ``MLFLOW_TRACKING_URI``, else the local file store
  ``./mlruns``: the ``file:`` URI of ``mlruns`` in the working directory, made absolute. It is
  always set explicitly: MLflow 3's own default is an SQLite database, which needs the full
  ``mlflow`` package. A value without a ``scheme:`` is a folder, taken as a file store. MLflow 3
  refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``; :func:`log_run` sets that variable
  for its own duration when it logs to one and the variable is unset. To browse a file store,
  install the full ``mlflow`` package and run
  ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns``;
- the MLflow experiment is ``experiment``, else the ``mlflow.experiment`` of the experiment file,
  else the compaudit experiment's ``name``. It is created if it does not exist.

Each call creates a new MLflow run: logging the same run folder twice gives two MLflow runs (their
tags ``compaudit.run_dir`` and ``compaudit.started`` tell them apart from other runs).

``compaudit run`` and ``compaudit demo`` call :func:`log_run` after the run when asked to
(``--mlflow``, or ``mlflow:`` in the experiment file); ``compaudit mlflow RUN`` logs an existing run.
:func:`compaudit.run.run_experiment` never does: from Python, call
``log_run(run_experiment(exp).out)``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from compaudit._version import __version__
from compaudit.config import MLFLOW_EXTRA, is_uri
from compaudit.errors import CompauditError
from compaudit.export import dumps
from compaudit.records import CORE_COLUMNS
from compaudit.store import Store

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: the message of the error a call without the extra raises
MISSING_EXTRA = MLFLOW_EXTRA
#: the file store used when nothing else names one (relative to the working directory)
DEFAULT_STORE = "mlruns"
#: MLflow's limits (mlflow.utils.validation)
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_FILE_STORE_VAR = "MLFLOW_ALLOW_FILE_STORE"
_BAD_KEY_CHAR = re.compile(r"[^A-Za-z0-9_\-. /]")
_DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})
#: the columns of the results table that are no param (the variant's identity included)
_CORE = frozenset(CORE_COLUMNS)
_STATUS = {"complete": "FINISHED", "failed": "FAILED"}


def require_mlflow() -> None:
    """Raise a :class:`CompauditError` saying which extra to install if MLflow cannot be imported."""
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        name = exc.name or "mlflow"
        if name != "mlflow" and not name.startswith("mlflow."):
            raise CompauditError(f"MLflow is installed but cannot be imported: {exc}") from exc
        raise CompauditError(MISSING_EXTRA) from exc


def tracking_uri_for(uri: str | None = None) -> str:
    """The tracking URI :func:`log_run` uses: ``uri``, else ``MLFLOW_TRACKING_URI``, else
    ``./mlruns``; a folder becomes the absolute ``file:`` URI of that folder."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    return uri if is_uri(uri) else Path(uri).expanduser().resolve().as_uri()


@dataclass
class _RunFolder:
    """What :func:`log_run` reads from a run folder."""

    root: Path
    name: str
    status: str
    experiment_yaml: str
    experiment: dict[str, Any]
    environment: dict[str, Any]
    started: float | None
    finished: float | None
    rows: list[dict[str, Any]]
    #: variant name -> its key and its steps (from the store's lineage), in plan order
    variants: dict[str, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)


def _read(run_dir: Path) -> _RunFolder:

    with Store(run_dir) as store:
        plan: list[dict[str, str]] = store.meta("plan", []) or []
        rows = store.metric_rows([(j["variant"], j["probe"], j["key"]) for j in plan])
        text = str(store.meta("experiment", "") or "")
        try:
            experiment = yaml.safe_load(text) if text else {}
        except yaml.YAMLError:
            experiment = {}
        started, finished = store.meta("started"), store.meta("finished")
        run = _RunFolder(
            root=run_dir.resolve(),
            name=str(store.meta("name") or run_dir.resolve().name),
            status=str(store.meta("status") or "unknown"),
            experiment_yaml=text,
            experiment=experiment if isinstance(experiment, dict) else {},
            environment=dict(store.meta("environment", {}) or {}),
            started=float(started) if started is not None else None,
            finished=float(finished) if finished is not None else None,
            rows=rows,
        )
        for j in plan:
            name, key = j["variant"], j.get("variant_key") or ""
            if name in run.variants:
                continue
            info = store.variant_info(key) if key else None
            lineage = (info or {}).get("lineage") or []
            run.variants[name] = (key, [s for s in lineage if isinstance(s, dict)])
    return run


# ---------------------------------------------------------------------------- keys and values


def _text(value: Any) -> str:
    """A param value as MLflow stores it: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mlflow_key(text: str) -> str:
    """``text`` as a valid MLflow metric or param key: other characters than letters, digits,
    ``_ - . /`` and space become ``_``, at most 250 characters, and no path trickery (MLflow
    refuses a key that a path normalisation would change, such as ``a//b`` or ``a/../b``)."""
    key = _BAD_KEY_CHAR.sub("_", text)[:MAX_KEY_LENGTH]
    if not _path_safe(key):
        key = key.replace("/", "_")
    if not _path_safe(key):  # "", "." or starting with ".."
        key = f"_{key}"[:MAX_KEY_LENGTH]
    return key


def _path_safe(key: str) -> bool:
    """MLflow's own test (``mlflow.utils.validation.path_not_unique``), negated."""
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


def _unique(key: str, seen: set[str]) -> str:
    """``key``, or ``key.2``, ``key.3``... (cut to fit) when ``seen`` already holds it."""
    n, out = 1, key
    while out in seen:
        n += 1
        suffix = f".{n}"
        out = mlflow_key(key[: MAX_KEY_LENGTH - len(suffix)] + suffix)
    seen.add(out)
    return out


def _key_part(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "_".join(_key_part(v) for v in value)
    return _text(value).replace("/", "_")


def metric_key(row: dict[str, Any]) -> str:
    """The MLflow key of one record of the results table (before deduplication):
    ``PROBE/METRIC.PARAM-VALUE...``."""
    parts = [f"{_key_part(row['probe'])}/{_key_part(row['metric'])}"]
    parts += [f"{_key_part(k)}-{_key_part(v)}" for k, v in row.items() if k not in _CORE and v is not None]
    return mlflow_key(".".join(parts))


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of nested mappings and lists under dotted keys: ``{"a": [{"b": 1}]}`` gives
    ``("a.0.b", 1)``. An empty mapping or list is a leaf."""
    if isinstance(value, dict | list) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif prefix:
        yield prefix, value


def _params(pairs: Iterator[tuple[str, Any]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    return [(_unique(mlflow_key(k), seen), _cut(_text(v), MAX_PARAM_LENGTH)) for k, v in pairs]


def _step_params(steps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """A variant's compression steps, as recorded in its lineage: method, params, fine-tuning."""
    out: list[dict[str, Any]] = []
    for st in steps:
        step: dict[str, Any] = {"method": st.get("method"), "params": st.get("params") or {}}
        ft = st.get("finetune")
        if isinstance(ft, dict) and ft.get("objective"):
            step["finetune"] = ft["objective"]
        out.append(step)
    return _params(flatten({"steps": out})) if out else []


# ---------------------------------------------------------------------------- logging


def _check_database_store(uri: str) -> None:
    """A database store (``sqlite:``, ``postgresql:``...) needs SQLAlchemy, which the full ``mlflow``
    package brings and ``mlflow-skinny`` does not; MLflow's own error says something else."""
    from importlib.util import find_spec

    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in _DATABASE_SCHEMES and find_spec("sqlalchemy") is None:
        raise CompauditError(
            f"MLflow ({uri}): a {scheme} tracking store needs the full MLflow package "
            "(pip install mlflow); the mlflow extra installs only its tracking client"
        )


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is true: set it while
    logging to one, unless the user set it."""
    if not uri.startswith("file:") or _FILE_STORE_VAR in os.environ:
        yield
        return
    os.environ[_FILE_STORE_VAR] = "true"
    try:
        yield
    finally:
        os.environ.pop(_FILE_STORE_VAR, None)


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def _experiment_id(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise CompauditError(
            f"the MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
            "or log to another experiment"
        )
    return str(exp.experiment_id)


def _log_batches(
    client: MlflowClient,
    run_id: str,
    *,
    params: Sequence[tuple[str, str]] = (),
    metrics: Sequence[tuple[str, float]] = (),
    timestamp: int,
) -> None:
    from mlflow.entities import Metric, Param

    param_list = [Param(k, v) for k, v in params]
    for i in range(0, len(param_list), _PARAMS_PER_BATCH):  # MLflow's limit per batch
        client.log_batch(run_id, params=param_list[i : i + _PARAMS_PER_BATCH])
    metric_list = [Metric(k, v, timestamp, 0) for k, v in metrics]
    for i in range(0, len(metric_list), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metric_list[i : i + _METRICS_PER_BATCH])


def _variant_metrics(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """Each variant's metrics as ``(key, value)``, keys unique within the variant, in table order."""
    out: dict[str, list[tuple[str, float]]] = {}
    seen: dict[str, set[str]] = {}
    for r in rows:
        v = str(r["variant"])
        value = r.get("value")
        out.setdefault(v, []).append(
            (
                _unique(metric_key(r), seen.setdefault(v, set())),
                math.nan if value is None else float(value),
            )
        )
    return out


def _log_contents(client: MlflowClient, run: _RunFolder, exp_id: str, parent: str, *, timestamp: int) -> None:
    """The parent's params and artifacts, and one finished child run per variant."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    _log_batches(client, parent, params=_params(flatten(run.experiment)), timestamp=timestamp)
    start, end = _ms(run.started), _ms(run.finished)
    status = _STATUS.get(run.status, "KILLED")  # "running": still running, or interrupted
    for variant, metrics in _variant_metrics(run.rows).items():
        key, steps = run.variants.get(variant, ("", []))
        tags = {
            MLFLOW_PARENT_RUN_ID: parent,
            "compaudit.variant": variant,
            "compaudit.nan_metrics": str(sum(math.isnan(v) for _, v in metrics)),
        }
        if key:
            tags["compaudit.variant_key"] = key
        child = client.create_run(exp_id, start_time=start, tags=tags, run_name=variant).info.run_id
        _log_batches(client, child, params=_step_params(steps), metrics=metrics, timestamp=timestamp)
        client.set_terminated(child, status=status, end_time=end)
    with tempfile.TemporaryDirectory(prefix="compaudit-mlflow-") as tmp:
        files = [run.root / "report.html"]
        if run.experiment_yaml:
            files.append(Path(tmp) / "experiment.yaml")
            files[-1].write_text(run.experiment_yaml, encoding="utf-8")
        files.append(Path(tmp) / "results.csv")
        table = dumps(run.rows, "csv") if run.rows else ",".join(CORE_COLUMNS) + "\n"
        files[-1].write_text(table, encoding="utf-8")
        for f in files:
            if f.is_file():
                client.log_artifact(parent, str(f))


def log_run(run_dir: Path | str, *, tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """Log the run folder ``run_dir`` to MLflow as one new parent run with a nested child run per
    variant (see the module documentation for what goes where); return the parent's run id.

    ``tracking_uri`` defaults to the experiment file's ``mlflow.tracking_uri``, then
    ``MLFLOW_TRACKING_URI``, then the local file store ``./mlruns`` (the absolute ``file:`` URI
    of ``mlruns`` in the working directory); ``experiment`` (the MLflow experiment) to the file's
    ``mlflow.experiment``, then the compaudit experiment's name.

    Raises :class:`CompauditError` when the mlflow extra is missing (before reading anything),
    when ``run_dir`` is no run folder, and when MLflow refuses the logging (its message included).
    """
    require_mlflow()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    run = _read(Path(run_dir))
    spec = run.experiment.get("mlflow")
    spec = spec if isinstance(spec, dict) else {}
    uri = tracking_uri_for(tracking_uri or spec.get("tracking_uri"))
    exp_name = experiment or spec.get("experiment") or run.name
    _check_database_store(uri)
    start, end = _ms(run.started), _ms(run.finished)
    status = _STATUS.get(run.status, "KILLED")  # "running": still running, or interrupted
    stamp = end or int(time.time() * 1000)  # the time of every metric

    tags = {
        "compaudit.run_dir": str(run.root),
        "compaudit.status": run.status,
        "compaudit.version": str(run.environment.get("compaudit", __version__)),
    }
    if run.started is not None:
        tags["compaudit.started"] = dt.datetime.fromtimestamp(run.started, tz=dt.timezone.utc).isoformat()
    tags.update({f"compaudit.env.{mlflow_key(k)}": _text(v) for k, v in run.environment.items()})
    description = str(run.experiment.get("description") or "")
    if description:
        tags[MLFLOW_RUN_NOTE] = description

    try:
        with _file_store_allowed(uri):
            client = MlflowClient(tracking_uri=uri)
            exp_id = _experiment_id(client, exp_name)
            tags = {k: _cut(v, MAX_TAG_LENGTH) for k, v in tags.items()}
            parent = client.create_run(exp_id, start_time=start, tags=tags, run_name=run.name).info.run_id
            try:
                _log_contents(client, run, exp_id, parent, timestamp=stamp)
            except BaseException:
                with suppress(Exception):  # keep the error that stopped the logging
                    client.set_terminated(parent, status="FAILED")
                raise
            client.set_terminated(parent, status=status, end_time=end)
    except MlflowException as exc:
        lines = str(exc).strip().splitlines()
        raise CompauditError(f"MLflow ({uri}): {lines[0] if lines else type(exc).__name__}") from exc
    log.info("logged %s to MLflow: run %s in experiment %r at %s", run_dir, parent, exp_name, uri)
    return str(parent)
