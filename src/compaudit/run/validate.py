"""Validating an experiment against the plugins: one layer above them, so the schema stays a leaf.

:mod:`compaudit.config` checks what the schema alone can; :func:`validate` checks the rest, before
anything runs:

- every named data set (``data``, ``domains``), model, method, probe and attack is registered;
- each plugin's parameters validate against its ``Params`` model (a sweep's every level too);
- chains are well formed (nothing follows a terminal step), a sweep's ``select`` has the accuracy
  it needs and ``match`` names a variant;
- each probe's ``check_experiment`` hook accepts the experiment, for every cell;
- every optional dependency is installed: a plugin registered with ``requires=`` whose package is
  missing (:meth:`compaudit.registry.Registry.missing`), ``executor: ray`` without Ray and, where
  asked (``mlflow=True``), ``mlflow:`` without MLflow are refused in one line naming the extra.

Every error is a :class:`~compaudit.errors.ConfigError` on one line naming the file and the field.
:func:`load_experiment` (read, resolve, validate) is what the command line and the Python API use.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from compaudit.attacks import ATTACKS
from compaudit.compress import METHODS
from compaudit.config import (
    MLFLOW_EXTRA,
    DataSpec,
    Experiment,
    ProbeSpec,
    VariantSpec,
    format_validation_error,
    parse_yaml,
    read_experiment_text,
    resolve_path,
)
from compaudit.data import DATASETS
from compaudit.errors import ConfigError
from compaudit.models import MODELS
from compaudit.models.adapters import missing as missing_library
from compaudit.probes import PROBES
from compaudit.registry import Registry

__all__ = [
    "experiment_from_dict",
    "experiment_from_yaml_text",
    "load_experiment",
    "read_experiment",
    "validate",
]


def load_experiment(path: str | Path) -> Experiment:
    """Read, resolve and fully validate an experiment file (raises a one-line :class:`ConfigError`)."""
    p = Path(path)
    return validate(read_experiment(p), source=str(p))


def read_experiment(path: str | Path) -> Experiment:
    """Read an experiment file and check it against the schema, its relative paths (probe
    parameters typed as paths included) resolved against its folder; not yet validated against
    the plugins (the command line applies its overrides before :func:`validate`)."""
    p = Path(path)
    return experiment_from_yaml_text(
        read_experiment_text(p), source=str(p), base_dir=p.resolve().parent, check=False
    )


def experiment_from_yaml_text(
    text: str, *, source: str = "experiment", base_dir: Path | None = None, check: bool = True
) -> Experiment:
    """Parse YAML ``text`` into a validated experiment (``check=False``: the schema only)."""
    return experiment_from_dict(
        parse_yaml(text, source=source), source=source, base_dir=base_dir, check=check
    )


def experiment_from_dict(
    raw: Any, *, source: str = "experiment", base_dir: Path | None = None, check: bool = True
) -> Experiment:
    """A parsed YAML document as a validated experiment; relative paths resolve against
    ``base_dir`` (``check=False``: the schema only)."""
    exp = Experiment.from_dict(raw, source=source, base_dir=base_dir)
    if base_dir is not None:
        exp = exp.model_copy(
            update={
                "probes": [_resolve_probe_paths(pr, base_dir) for pr in exp.probes],
                "variants": [_resolve_step_paths(v, base_dir) for v in exp.variants],
            }
        )
    return validate(exp, source=source) if check else exp


def _resolve_probe_paths(pr: ProbeSpec, base_dir: Path) -> ProbeSpec:
    """Resolve the probe parameters its ``Params`` model types as paths (a relative path in an
    experiment file means relative to that file)."""
    if pr.name not in PROBES:
        return pr
    fields = PROBES.get(pr.name).Params.model_fields
    params = dict(pr.params)
    for k, v in pr.params.items():
        if k in fields and "Path" in str(fields[k].annotation) and isinstance(v, str):
            params[k] = str(resolve_path(Path(v), base_dir))
    return pr.model_copy(update={"params": params})


def _resolve_step_paths(v: VariantSpec, base_dir: Path) -> VariantSpec:
    """Resolve the method parameters a method's ``Params`` types as paths (``deployed_file``'s
    ``path``), relative to the experiment file."""
    steps = []
    for st in v.steps:
        if st.method not in METHODS:
            steps.append(st)
            continue
        fields = METHODS.get(st.method).Params.model_fields
        params = dict(st.params)
        for k, val in st.params.items():
            if k in fields and "Path" in str(fields[k].annotation) and isinstance(val, str):
                params[k] = str(resolve_path(Path(val), base_dir))
        steps.append(st.model_copy(update={"params": params}))
    return v.model_copy(update={"steps": steps})


def validate(exp: Experiment, *, source: str = "experiment", mlflow: bool = False) -> Experiment:
    """Check ``exp`` against the plugins (see the module's docstring) and return it. ``mlflow``:
    also refuse ``mlflow:`` without the MLflow extra. Off by default: a run logs nothing to MLflow
    itself, and the command line's flags may override the file (``--no-mlflow``), so ``compaudit
    run`` checks the extra where it will log, before any work."""

    def fail(path: str, msg: str) -> None:
        raise ConfigError(f"{source}: {path}: {msg}")

    def params_ok(path: str, model: type[BaseModel], params: dict[str, Any]) -> None:
        try:
            model.model_validate(params)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {format_validation_error(exc, prefix=path)}") from None

    def plugin(path: str, registry: Registry[Any], kind: str, name: str) -> None:
        """``name`` is registered in ``registry`` and its optional dependencies are installed."""
        if name not in registry:
            fail(path, _unknown(kind, name, registry.names()))
        problem = registry.missing(name)
        if problem:
            fail(path, problem)

    specs: list[tuple[str, DataSpec]] = [] if exp.sources is not None else [("data", exp.data)]
    specs += [(f"domains.{n}", d) for n, d in exp.domains.items()]
    for where, spec in specs:
        plugin(f"{where}.name", DATASETS, "data set", spec.name)
        params_ok(f"{where}.params", DATASETS.get(spec.name).Params, spec.params)
    if ":" not in exp.model.name:  # a factory given as package.module:function is the user's own
        plugin("model.name", MODELS, "model", exp.model.name)
    elif problem := missing_library(exp.model.name):  # torchvision:, timm:, hf: need their library
        fail("model.name", problem)
    for i, v in enumerate(exp.variants):
        for j, step in enumerate(v.steps):
            plugin(f"variants[{i}].steps[{j}].method", METHODS, "method", step.method)
            if METHODS.get(step.method).terminal and j < len(v.steps) - 1:
                fail(
                    f"variants[{i}].steps[{j + 1}]",
                    f"no step may follow {step.method!r} (its result is deployed)",
                )
            if METHODS.get(step.method).standalone and (len(v.steps) > 1 or step.finetune or v.finetune):
                fail(
                    f"variants[{i}].steps[{j}]",
                    f"{step.method!r} must be its variant's only step, without fine-tuning (it is audited "
                    "against the experiment's model, the float model it came from)",
                )
        for e in v.expand():
            for j, step in enumerate(e.steps):
                where = f"variants[{i}].steps[{j}].params"
                if v.sweep is not None and j == v.sweep.step:
                    where = f"variants[{i}].sweep (value {step.params.get(v.sweep.param)!r}) -> {where}"
                params_ok(where, METHODS.get(step.method).Params, step.params)
    for i, pr in enumerate(exp.probes):
        plugin(f"probes[{i}].name", PROBES, "probe", pr.name)
        probe_cls = PROBES.get(pr.name)
        params_ok(f"probes[{i}].params", probe_cls.Params, pr.params)
        for where, attack in _named_attacks(pr.params, f"probes[{i}].params"):
            problem = ATTACKS.missing(attack) if attack in ATTACKS else None  # Params named the unknown
            if problem:
                fail(where, problem)
        for cell in exp.cell_specs():
            problem = probe_cls.from_spec(pr.name, pr.params).check_experiment(cell.experiment)
            if problem:
                fail(f"probes[{i}].params", problem)
    # after the probes: a select's needs are read from the accuracy probe's validated params
    names = {e.name for w in exp.variants for e in w.expand()}
    for i, v in enumerate(exp.variants):
        if v.select is None:
            continue
        acc = next((pr for pr in exp.probes if pr.name == "accuracy"), None)
        splits = (acc.params.get("splits", ["test", "val"]) if acc is not None else []) or []
        if not isinstance(splits, list) or v.select.split not in splits:
            fail(f"variants[{i}].select", f"needs the accuracy probe on the {v.select.split!r} split")
        if v.select.match is not None and v.select.match not in names | {"baseline"}:
            fail(f"variants[{i}].select.match", f"no variant named {v.select.match!r}")
    if exp.executor == "ray" and not _importable("ray"):
        fail("executor", "ray needs the ray extra: pip install 'compaudit[ray]'")
    if mlflow and exp.mlflow is not None and not _importable("mlflow"):
        fail("mlflow", MLFLOW_EXTRA)
    return exp


def _named_attacks(params: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(field path, attack name)`` of every ``attack: NAME`` inside a probe's parameters (the
    adversarial probe's ``attacks: [{attack: ...}]``, any probe's own ``attack``)."""
    if isinstance(params, dict):
        for k, v in params.items():
            if k == "attack" and isinstance(v, str):
                yield f"{path}.attack", v
            else:
                yield from _named_attacks(v, f"{path}.{k}")
    elif isinstance(params, list):
        for i, v in enumerate(params):
            yield from _named_attacks(v, f"{path}[{i}]")


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a module set to None in
    ``sys.modules`` counts as missing, as ``import`` treats it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _unknown(kind: str, name: str, choices: list[str]) -> str:
    return f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}"
