"""The Python API for notebooks: audit a model you hold in memory, get a table and a report.

::

    import compaudit

    result = compaudit.audit(
        model,                      # a trained torch.nn.Module, or a built-in model name to train
        data,                       # a DataBundle, or a data-set name such as "digits"
        variants=["quantize_int8", {"name": "filters-50", "steps": [{"method": "prune_filters",
                                                                      "params": {"ratio": 0.5}}]}],
        probes=["accuracy", "efficiency", {"name": "adversarial", "params": {"samples": 200}}],
    )
    result.table()                  # one row per variant, one column per summary metric
    result.report("audit.html")     # the same self-contained page as `compaudit run`

It builds an :class:`~compaudit.config.Experiment` from its arguments and runs it with
:func:`~compaudit.run.run_experiment`: the same planner, cache, store and report as the command
line. An in-memory model is registered for the run under ``memory.<ClassName>`` and its weights
are saved to ``OUT/inputs/`` (their SHA-256 is part of every result's key, so changed weights are
never served from the cache); an in-memory data set is registered as ``memory-<digest>``, the
digest of its tensors.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compaudit.data import DATASETS, DataBundle, DataParams, DataSource
from compaudit.data.base import ArrayDataset
from compaudit.errors import ConfigError
from compaudit.export import export_frame
from compaudit.models import MODELS
from compaudit.report import write_report
from compaudit.report.build import collect_warnings, summary_frame
from compaudit.run import RunSummary, run_experiment
from compaudit.run.validate import experiment_from_dict
from compaudit.runtime import atomic_torch_save
from compaudit.store import Store

__all__ = ["AuditResult", "audit"]

VariantArg = str | Mapping[str, Any]
ProbeArg = str | Mapping[str, Any]

DEFAULT_PROBES: tuple[str, ...] = ("accuracy", "efficiency", "classes")


class AuditResult:
    """What :func:`audit` returns: the run folder, what the run did, and views of its results."""

    def __init__(self, out: Path, summary: RunSummary) -> None:
        self.out = out
        self.summary = summary

    def table(self) -> Any:
        """One row per variant (the index), one column per summary metric of the report (its
        title, e.g. ``"Test accuracy"``, ``"Worst-case robust accuracy"``, ``"Flips"``) as plain
        numbers: shares as fractions (0.97, not 97%), sizes in bytes, latency in ms. A
        ``pandas.DataFrame``."""
        import pandas as pd

        with Store(self.out) as store:
            rows, columns = summary_frame(store)
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns, dtype="float64")
        frame.index.name = "variant"
        return frame

    def records(self) -> Any:
        """Every metric record, one row each: the table ``compaudit export`` writes (a
        ``pandas.DataFrame``; see :func:`compaudit.export.export_frame`)."""

        return export_frame(self.out)

    @property
    def warnings(self) -> list[str]:
        """Every warning of the run (gradient masking, simulated quantization, skipped layers...)."""

        with Store(self.out) as store:
            return collect_warnings(store)

    def report(self, path: str | Path | None = None) -> Path:
        """Write the HTML report to ``path`` (default ``OUT/report.html``) and return its path."""

        with Store(self.out) as store:
            return write_report(store, Path(path) if path is not None else None)

    def _repr_html_(self) -> str:  # a notebook shows the summary table
        html: str = self.table().to_html(float_format=lambda x: f"{x:.4g}", na_rep="–")
        return html

    def __repr__(self) -> str:
        s = self.summary
        return f"AuditResult(out={str(self.out)!r}, new={s.new}, cached={s.cached}, failed={len(s.failed)})"


def _digest_tensors(bundle: DataBundle) -> str:
    h = hashlib.sha256()
    h.update(repr((bundle.classes, bundle.input_shape, bundle.bounds)).encode())
    for split in (bundle.train, bundle.val, bundle.test):
        if isinstance(split, ArrayDataset):
            xs, ys = split.x, split.y
        else:  # any map-style data set: read it once
            items = [split[i] for i in range(len(split))]  # type: ignore[arg-type]
            xs = torch.stack([x for x, _ in items]) if items else torch.empty(0)
            ys = torch.as_tensor([int(y) for _, y in items])
        h.update(str(tuple(xs.shape)).encode())
        h.update(xs.detach().cpu().contiguous().numpy().tobytes())
        h.update(ys.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(str(v.dtype).encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _variant_specs(variants: Sequence[VariantArg] | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Normalise the shorthand forms into the experiment file's ``variants`` list:
    ``"quantize_int8"`` (a method with its defaults, named after it), a full mapping with ``name``
    and ``steps``, or ``{NAME: METHOD | STEP | [STEPS] | {steps: ...}}``."""

    def steps_of(value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            return {"steps": [{"method": value}]}
        if isinstance(value, Mapping) and "method" in value:
            return {"steps": [dict(value)]}
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, Sequence):
            return {"steps": [{"method": s} if isinstance(s, str) else dict(s) for s in value]}
        raise ConfigError(f"audit: variants: cannot read {value!r} as compression steps")

    if isinstance(variants, Mapping):
        return [{"name": name, **steps_of(value)} for name, value in variants.items()]
    out: list[dict[str, Any]] = []
    for i, v in enumerate(variants):
        if isinstance(v, str):
            out.append({"name": v, "steps": [{"method": v}]})
        elif isinstance(v, Mapping) and "name" in v:
            out.append(dict(v))
        else:
            raise ConfigError(
                f"audit: variants[{i}]: give a method name or a mapping with 'name' and 'steps', not {v!r}"
            )
    return out


def _probe_specs(probes: Sequence[ProbeArg]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, p in enumerate(probes):
        if isinstance(p, str):
            out.append({"name": p})
        elif isinstance(p, Mapping) and "name" in p:
            out.append(dict(p))
        else:
            raise ConfigError(f"audit: probes[{i}]: give a probe name or a mapping with 'name', not {p!r}")
    return out


@contextlib.contextmanager
def _memory_data(bundle: DataBundle) -> Iterator[str]:
    digest = _digest_tensors(bundle)[:16]
    name = f"memory-{digest}"

    class InMemory(DataSource[DataParams]):
        """The data set handed to compaudit.audit()."""

        needs_root = False

        def _load(self, root: Path | None) -> DataBundle:
            return bundle

    if name in DATASETS:  # the same tensors, already registered by an enclosing call
        yield name
        return
    with DATASETS.temporary(name, InMemory):
        yield name


@contextlib.contextmanager
def _memory_model(model: nn.Module) -> Iterator[str]:
    cls = type(model)
    name = f"memory.{cls.__qualname__}"

    def factory(**_: Any) -> nn.Module:
        return copy.deepcopy(model).cpu()

    factory.__doc__ = f"the {cls.__name__} handed to compaudit.audit()"
    if name in MODELS:
        raise ConfigError(f"audit: a model named {name!r} is already registered; nested audits of one class")
    with MODELS.temporary(name, factory):
        yield name


def audit(
    model: nn.Module | str,
    data: DataBundle | str,
    *,
    variants: Sequence[VariantArg] | Mapping[str, Any],
    probes: Sequence[ProbeArg] = DEFAULT_PROBES,
    out: str | Path | None = None,
    name: str = "audit",
    seed: int = 0,
    device: str = "cpu",
    data_params: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    model_params: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    domains: Mapping[str, Any] | None = None,
) -> AuditResult:
    """Compress ``model`` into each of ``variants``, run ``probes`` on every variant and the
    baseline, store the results in ``out`` (default ``runs/NAME``) and write ``out/report.html``.

    ``model``: a trained ``nn.Module`` (left as it is: compaudit works on copies), or the name of a
    built-in model (``compaudit plugins``) that compaudit trains with ``train`` (a ``TrainSpec``
    mapping: ``{"epochs": 6, "lr": 0.05}``). ``data``: a :class:`~compaudit.data.DataBundle` (an
    empty ``val`` split is carved from ``train``) or a registered data-set name read with
    ``data_params`` / ``data_root``. ``variants`` and ``probes`` take the experiment file's forms
    or shorthands: a method or probe name with its defaults. Everything else is the experiment
    file's field of the same name. Bad input raises :class:`~compaudit.errors.CompauditError` with
    a one-line message before anything is written. Rerunning with the same arguments reuses every
    stored result.
    """
    cfg: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "device": device,
        "variants": _variant_specs(variants),
        "probes": _probe_specs(probes),
    }
    if domains:
        cfg["domains"] = dict(domains)
    out_dir = Path(out) if out is not None else Path("runs") / name
    with contextlib.ExitStack() as stack:
        if isinstance(data, DataBundle):
            cfg["data"] = {"name": stack.enter_context(_memory_data(data)), "params": dict(data_params or {})}
        else:
            cfg["data"] = {"name": data, "params": dict(data_params or {})}
            if data_root is not None:
                cfg["data"]["root"] = str(data_root)
        checkpoint: Path | None = None
        if isinstance(model, nn.Module):
            if train is not None:
                raise ConfigError("audit: train is for a built-in model name; a module is audited as it is")
            cfg["model"] = {
                "name": stack.enter_context(_memory_model(model)),
                "params": dict(model_params or {}),
            }
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compaudit-")))
            checkpoint = tmp / f"{_state_digest(model)[:16]}.pt"
            atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, checkpoint)
            cfg["model"]["checkpoint"] = str(checkpoint)
        else:
            cfg["model"] = {"name": model, "params": dict(model_params or {})}
            if train is not None:
                cfg["model"]["train"] = dict(train)
        exp = experiment_from_dict(cfg, source="audit()")
        summary = run_experiment(exp, out_dir, report=False)
        if checkpoint is not None:
            # keep the weights with the run, and name them in the stored experiment file
            kept = out_dir / "inputs" / checkpoint.name
            kept.parent.mkdir(exist_ok=True)
            if not kept.is_file():
                shutil.copyfile(checkpoint, kept)
            exp = exp.model_copy(update={"model": exp.model.model_copy(update={"checkpoint": kept})})
            with Store(out_dir) as store:
                store.set_meta(experiment=exp.to_yaml())
    result = AuditResult(out_dir, summary)
    result.report()
    return result
