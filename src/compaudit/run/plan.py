"""Planning: from an experiment to content-keyed variants and (variant, probe) jobs.

A variant's key hashes everything its weights depend on (data, base model and its weights or
training recipe, seed, steps, fine-tuning); a job's key adds the probe and its parameters. Equal
keys mean equal results, which is what lets a rerun skip work already stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compaudit.compress import METHODS
from compaudit.config import Experiment, SelectSpec, StepSpec
from compaudit.data.base import result_params
from compaudit.models import read_state_dict
from compaudit.probes import PROBES, Probe
from compaudit.results import VariantId
from compaudit.runtime import file_digest, spec_key


@dataclass(frozen=True)
class VariantPlan:
    """A variant to build. ``step_keys[i]`` keys the result of the chain up to step ``i`` (so two
    variants that share a prefix share its cached weights); the variant's key is the last one.
    ``identity`` says who it is as data (source domain, seed, name); ``name`` is its label."""

    name: str
    key: str
    parent: str | None
    spec: dict[str, Any]
    steps: tuple[StepSpec, ...] = ()
    step_keys: tuple[str, ...] = ()
    identity: VariantId | None = None

    @property
    def is_baseline(self) -> bool:
        return self.parent is None


@dataclass(frozen=True)
class SweepPlan:
    """The variants of one sweep, from least to most compressed, and how to pick a level."""

    name: str
    param: str
    levels: tuple[tuple[str, Any], ...]
    select: SelectSpec | None
    #: who the sweep is (its plain name, source, seed): how the report groups it over seeds
    identity: VariantId | None = None


@dataclass(frozen=True)
class Job:
    variant: str
    variant_key: str
    probe: str
    key: str
    spec: dict[str, Any]


@dataclass
class Plan:
    experiment: Experiment
    baseline: VariantPlan
    variants: list[VariantPlan]
    jobs: list[Job] = field(default_factory=list)
    probes: dict[str, Probe[Any]] = field(default_factory=dict)
    sweeps: list[SweepPlan] = field(default_factory=list)
    #: the prefix of every variant name of this cell (``"amazon/seed0/"``; see :class:`CellSpec`)
    prefix: str = ""
    #: the cell's source domain (``""``: the file has one source) and seed (``None``: one seed)
    source: str = ""
    seed: int | None = None

    @property
    def all_variants(self) -> list[VariantPlan]:
        return [self.baseline, *self.variants]

    def jobs_of(self, variant_key: str) -> list[Job]:
        return [j for j in self.jobs if j.variant_key == variant_key]

    def to_json(self) -> list[dict[str, Any]]:
        """The jobs as the run's ``plan`` meta stores them, each with its variant's identity
        (``name``, ``source``, ``seed``: what :func:`compaudit.store.plan_refs` reads back)."""
        ids = {vp.name: vp.identity for vp in self.all_variants if vp.identity is not None}
        rows: list[dict[str, Any]] = []
        for j in self.jobs:
            row: dict[str, Any] = {
                "variant": j.variant,
                "probe": j.probe,
                "key": j.key,
                "variant_key": j.variant_key,
            }
            if (ident := ids.get(j.variant)) is not None:
                row.update(name=ident.name, source=ident.source, seed=ident.seed)
            rows.append(row)
        return rows


def make_plan(exp: Experiment, prefix: str = "", *, source: str = "", seed: int | None = None) -> Plan:
    """Key every variant and job of ``exp`` (a single-source experiment, see
    :meth:`Experiment.cell_specs`), naming them ``PREFIX + name``; ``source`` and ``seed`` are the
    cell's, as its :class:`~compaudit.config.CellSpec` gives them (the variants' identity). Reads
    the checkpoint file (for its digest) if any."""
    if VariantId("v", source, seed).label != prefix + "v":
        raise ValueError(f"make_plan: prefix {prefix!r} is not that of source {source!r} and seed {seed!r}")
    # the training settings are part of the key even with a checkpoint: pretrained weights whose
    # classifier is replaced for the data set's classes are fine-tuned with them
    model_spec: dict[str, Any] = {
        "name": exp.model.name,
        "params": exp.model.params,
        "train": exp.model.train.model_dump(mode="json"),
    }
    if exp.model.checkpoint is not None:
        read_state_dict(exp.model.checkpoint)  # fails early with a clear error if missing/unsafe
        model_spec["checkpoint_sha256"] = file_digest(exp.model.checkpoint)
    if weights := weights_digest(exp.model.name, exp.model.params):
        model_spec["weights_sha256"] = weights
    data_spec = {
        "name": exp.data.name,
        "root": str(exp.data.root) if exp.data.root else None,
        "params": result_params(exp.data.name, exp.data.params),
    }
    base_spec = {"data": data_spec, "model": model_spec, "seed": exp.seed}
    baseline = VariantPlan(
        prefix + "baseline",
        spec_key(base_spec),
        None,
        base_spec,
        identity=VariantId("baseline", source, seed),
    )
    variants: list[VariantPlan] = []
    for v in exp.concrete_variants():
        chain = v.chain()
        keys: list[str] = []
        described: list[dict[str, Any]] = []
        parent = baseline.key
        for st in chain:
            # normalised params, so defaults spelled out or left out give the same key
            step = METHODS.get(st.method).from_spec(st.method, st.params).describe()
            step["finetune"] = st.finetune.model_dump(mode="json") if st.finetune else None
            described.append(step)
            parent = spec_key({"parent": parent, "step": step, "seed": exp.seed})
            keys.append(parent)
        spec = {"parent": baseline.key, "steps": described, "seed": exp.seed}
        variants.append(
            VariantPlan(
                prefix + v.name,
                keys[-1],
                baseline.key,
                spec,
                tuple(chain),
                tuple(keys),
                VariantId(v.name, source, seed),
            )
        )
    plan = Plan(exp, baseline, variants, prefix=prefix, source=source, seed=seed)
    for v in exp.variants:
        if v.sweep is not None:
            levels = tuple((prefix + e.name, val) for e, val in zip(v.expand(), v.sweep.values, strict=True))
            ordered = sorted(levels, key=lambda lv: _order(lv[1]), reverse=v.sweep.direction == "lower")
            select = v.select
            if select is not None and prefix:
                select = select.model_copy(update={"match": prefix + (select.match or "baseline")})
            plan.sweeps.append(
                SweepPlan(
                    prefix + v.name, v.sweep.param, tuple(ordered), select, VariantId(v.name, source, seed)
                )
            )
    for pr in exp.probes:
        plan.probes[pr.name] = PROBES.get(pr.name).from_spec(pr.name, pr.params)
    for vp in plan.all_variants:
        for pr in exp.probes:
            probe = plan.probes[pr.name]
            jspec = {"variant": vp.key, **probe.describe(), "baseline": baseline.key, "seed": exp.seed}
            domains = probe.needs_domains(exp)
            if domains:
                jspec["domains"] = {d: _domain_spec(exp, d) for d in domains}
            plan.jobs.append(Job(vp.name, vp.key, pr.name, spec_key(jspec), jspec))
    return plan


def make_plans(exp: Experiment) -> list[Plan]:
    """One plan per cell of ``exp`` (one per source and seed; just one without ``sources`` and
    ``seeds``)."""
    return [make_plan(c.experiment, c.prefix, source=c.source, seed=c.seed) for c in exp.cell_specs()]


def _order(value: Any) -> tuple[int, float | str]:
    return (0, float(value)) if isinstance(value, int | float) else (1, str(value))


def _domain_spec(exp: Experiment, name: str) -> dict[str, Any]:
    """What a job's key covers of a domain it evaluates: its spec without runtime-only parameters."""
    spec = exp.domains[name].model_dump(mode="json")
    spec["params"] = result_params(spec["name"], spec.get("params") or {})
    return spec


def weights_digest(name: str, params: dict[str, Any]) -> str | None:
    """A digest of local weights a model name or its ``weights`` parameter points at, so a result's
    key changes when they do: a ``weights`` file (timm's local checkpoints), or the files of an
    ``hf:`` folder (config, weights, preprocessor). None when there are none (named weights such as
    ``IMAGENET1K_V1`` carry their digest in their file name)."""
    files: list[Path] = []
    weights = params.get("weights")
    if isinstance(weights, str) and Path(weights).expanduser().is_file():
        files.append(Path(weights).expanduser())
    if name.startswith("hf:") and Path(name[3:]).expanduser().is_dir():
        folder = Path(name[3:]).expanduser()
        files += sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".bin"}
        )
    if not files:
        return None
    return spec_key({str(p.name): file_digest(p) for p in files})
