"""Preparing one cell of an experiment: everything checked before a run writes anything.

:func:`prepare` loads the data and the domains the probes evaluate, plans the cell, builds the base
model (loading its checkpoint) and runs it once on one image, so bad input (a missing folder, a
model factory that raises, a checkpoint of another architecture, a model whose output has the
wrong shape) is a one-line :class:`~compaudit.errors.CompauditError` before the run folder is
touched. Both executors and every Ray worker start from a :class:`Prepared` cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compaudit.compress import METHODS, Method
from compaudit.config import Experiment
from compaudit.data import DataBundle, load_dataset
from compaudit.data.base import DATASETS, ArrayDataset
from compaudit.errors import CompauditError, ConfigError, ModelError
from compaudit.inference import eval_mode
from compaudit.models import Pretrained, build_model, load_pretrained, pretrained_of, read_state_dict
from compaudit.probes import ProbeContext
from compaudit.run.plan import Plan, make_plan
from compaudit.runtime import derive_seed, resolve_device, seed_everything
from compaudit.variant import Variant


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
    #: the pretrained weights in the base model (``model.checkpoint``, or an adapter's own), if any
    pretrained: Pretrained | None = None

    @property
    def trains_baseline(self) -> bool:
        """Whether the baseline is trained here: without pretrained weights, or when their
        classifier was replaced for this data set's classes (then fine-tuned with ``model.train``)."""
        return self.pretrained is None or self.pretrained.head_replaced

    def probe_context(self, baseline: Variant, cache_dir: Path | None = None) -> ProbeContext:
        """The context every probe of this cell shares (its cache of clean predictions, and of
        the tensors probes compute once per run, kept in ``cache_dir``)."""
        return ProbeContext(
            data=self.data,
            baseline=baseline,
            device=self.device,
            seed=self.experiment.seed,
            domains=self.domains,
            source=self.experiment.source,
            cache_dir=cache_dir,
        )


def prepare(exp: Experiment, prefix: str = "", *, source: str = "", seed: int | None = None) -> Prepared:
    """Validate everything that can be validated without running: device, data, model, checkpoint,
    the domains the probes evaluate. ``exp`` is one cell of :meth:`Experiment.cell_specs`, whose
    ``prefix``, ``source`` and ``seed`` name its variants."""
    device = resolve_device(exp.device)
    data = load_dataset(exp.data.name, exp.data.root, exp.data.params)
    plan = make_plan(exp, prefix, source=source, seed=seed)
    for i, spec in enumerate(exp.probes):
        problem = plan.probes[spec.name].check_inputs(exp)
        if problem:
            raise CompauditError(f"probes[{i}].params.{problem}")
    check_step_inputs(exp, data)
    needed = [d for probe in plan.probes.values() for d in probe.needs_domains(exp)]
    domains = {name: load_domain(exp, name, data) for name in dict.fromkeys(needed)}
    # the initial weights depend only on the baseline's key, so a resumed run starts from the same ones
    seed_everything(derive_seed(exp.seed, plan.baseline.key, "init"))
    try:
        model = build_model(
            exp.model.name,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            params=exp.model.params,
        )
    except CompauditError:
        raise
    except Exception as exc:  # the user's own factory (package.module:function) raised
        raise ModelError(f"model.name: {exp.model.name!r} cannot be built: {error_line(exc)}") from None
    if exp.model.checkpoint is not None:
        path = exp.model.checkpoint
        load_pretrained(model, read_state_dict(path), source=repr(str(path)))
    pretrained = pretrained_of(model)
    if pretrained is not None and pretrained.head_replaced and exp.model.train.epochs == 0:
        raise ModelError(
            f"model.train.epochs: 0, but {pretrained.describe()}: the new head must be trained "
            "(give model.train.epochs >= 1)"
        )
    _check_forward(model, data)
    return Prepared(exp, data, plan, device, model, domains, pretrained)


def _steps_checking_inputs(exp: Experiment) -> list[tuple[str, Method[Any]]]:
    """``(field path, method)`` of every step whose method checks its inputs against the data."""
    out = []
    for i, v in enumerate(exp.variants):
        for e in v.expand():
            for j, st in enumerate(e.steps):
                cls = METHODS.get(st.method)
                if cls.check_inputs is not Method.check_inputs:
                    out.append((f"variants[{i}].steps[{j}].params", cls.from_spec(st.method, st.params)))
    return out


def check_step_inputs(exp: Experiment, data: DataBundle | None = None) -> None:
    """Each step's :meth:`~compaudit.compress.Method.check_inputs` against the data set (a user's
    deployed file whose input shape or class count does not fit): a one-line :class:`ConfigError`
    naming the field. ``data`` None: loaded here, only when a step checks its inputs (``compaudit
    check`` validates without loading data otherwise)."""
    steps = _steps_checking_inputs(exp)
    if not steps:
        return
    if data is None:
        data = load_dataset(exp.data.name, exp.data.root, exp.data.params)
    for where, method in steps:
        problem = method.check_inputs(data)
        if problem:
            raise ConfigError(f"{where}.{problem}")


def error_line(exc: BaseException) -> str:
    """One line naming an exception: its message for a :class:`CompauditError` (which names the
    culprit already), else its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if isinstance(exc, CompauditError):
        return " ".join(lines)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
    resize = exp.data.params.get("resize")
    if (
        resize is not None
        and spec.name in DATASETS
        and "resize" in DATASETS.get(spec.name).Params.model_fields
    ):
        params.setdefault("resize", resize)  # the source's crop, so both are read the same way
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
    try:
        with eval_mode(model), torch.inference_mode():
            out = model(x)
    except Exception as exc:
        raise CompauditError(
            f"model {type(model).__name__} cannot run on {data.name} inputs of shape {tuple(x.shape)}: {exc}"
        ) from None
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
