"""Planning: from an experiment to content-keyed variants and (variant, probe) jobs.

A variant's key hashes everything its weights depend on (data, base model and its weights or
training recipe, seed, steps, fine-tuning); a job's key adds the probe and its parameters. Equal
keys mean equal results, which is what lets a rerun skip work already stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compaudit.compress import METHODS
from compaudit.config import Experiment, SelectSpec, StepSpec
from compaudit.probes import PROBES, Probe
from compaudit.runtime import file_digest, spec_key


@dataclass(frozen=True)
class VariantPlan:
    """A variant to build. ``step_keys[i]`` keys the result of the chain up to step ``i`` (so two
    variants that share a prefix share its cached weights); the variant's key is the last one."""

    name: str
    key: str
    parent: str | None
    spec: dict[str, Any]
    steps: tuple[StepSpec, ...] = ()
    step_keys: tuple[str, ...] = ()

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
    probes: dict[str, Probe] = field(default_factory=dict)
    sweeps: list[SweepPlan] = field(default_factory=list)

    @property
    def all_variants(self) -> list[VariantPlan]:
        return [self.baseline, *self.variants]

    def jobs_of(self, variant_key: str) -> list[Job]:
        return [j for j in self.jobs if j.variant_key == variant_key]

    def to_json(self) -> list[dict[str, str]]:
        return [
            {"variant": j.variant, "probe": j.probe, "key": j.key, "variant_key": j.variant_key}
            for j in self.jobs
        ]


def make_plan(exp: Experiment, prefix: str = "") -> Plan:
    """Key every variant and job of ``exp`` (a single-source experiment, see
    :meth:`Experiment.cells`), naming them ``PREFIX + name``. Reads the checkpoint file (for its
    digest) if any."""
    model_spec: dict[str, Any] = {"name": exp.model.name, "params": exp.model.params}
    if exp.model.checkpoint is not None:
        from compaudit.models.base import read_state_dict

        read_state_dict(exp.model.checkpoint)  # fails early with a clear error if missing/unsafe
        model_spec["checkpoint_sha256"] = file_digest(exp.model.checkpoint)
    else:
        model_spec["train"] = exp.model.train.model_dump(mode="json")
    data_spec = {
        "name": exp.data.name,
        "root": str(exp.data.root) if exp.data.root else None,
        "params": exp.data.params,
    }
    base_spec = {"data": data_spec, "model": model_spec, "seed": exp.seed}
    baseline = VariantPlan(prefix + "baseline", spec_key(base_spec), None, base_spec)
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
        variants.append(VariantPlan(prefix + v.name, keys[-1], baseline.key, spec, tuple(chain), tuple(keys)))
    plan = Plan(exp, baseline, variants)
    for v in exp.variants:
        if v.sweep is not None:
            levels = tuple((prefix + e.name, val) for e, val in zip(v.expand(), v.sweep.values, strict=True))
            ordered = sorted(levels, key=lambda lv: _order(lv[1]), reverse=v.sweep.direction == "lower")
            select = v.select
            if select is not None and prefix:
                select = select.model_copy(update={"match": prefix + (select.match or "baseline")})
            plan.sweeps.append(SweepPlan(prefix + v.name, v.sweep.param, tuple(ordered), select))
    for pr in exp.probes:
        plan.probes[pr.name] = PROBES.get(pr.name).from_spec(pr.name, pr.params)
    for vp in plan.all_variants:
        for pr in exp.probes:
            probe = plan.probes[pr.name]
            jspec = {"variant": vp.key, **probe.describe(), "baseline": baseline.key, "seed": exp.seed}
            domains = probe.needs_domains(exp)
            if domains:
                jspec["domains"] = {d: exp.domains[d].model_dump(mode="json") for d in domains}
            plan.jobs.append(Job(vp.name, vp.key, pr.name, spec_key(jspec), jspec))
    return plan


def make_plans(exp: Experiment) -> list[Plan]:
    """One plan per cell of ``exp`` (one per source; just one without ``sources``)."""
    return [make_plan(cell, prefix) for prefix, cell in exp.cells()]


def _order(value: Any) -> tuple[int, float | str]:
    return (0, float(value)) if isinstance(value, int | float) else (1, str(value))
