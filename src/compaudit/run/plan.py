"""Planning: from an experiment to content-keyed variants and (variant, probe) jobs.

A variant's key hashes everything its weights depend on (data, base model and its weights or
training recipe, seed, steps, fine-tuning); a job's key adds the probe and its parameters. Equal
keys mean equal results, which is what lets a rerun skip work already stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compaudit.compress import METHODS
from compaudit.config import Experiment, FinetuneSpec, StepSpec
from compaudit.probes import PROBES, Probe
from compaudit.runtime import file_digest, spec_key


@dataclass(frozen=True)
class VariantPlan:
    name: str
    key: str
    parent: str | None
    spec: dict[str, Any]
    steps: tuple[StepSpec, ...] = ()
    finetune: FinetuneSpec | None = None

    @property
    def is_baseline(self) -> bool:
        return self.parent is None


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


def make_plan(exp: Experiment) -> Plan:
    """Key every variant and job of ``exp``. Reads the checkpoint file (for its digest) if any."""
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
    baseline = VariantPlan("baseline", spec_key(base_spec), None, base_spec)
    variants: list[VariantPlan] = []
    for v in exp.variants:
        steps = [
            METHODS.get(s.method).from_spec(s.method, s.params).describe() for s in v.steps
        ]  # normalised params, so defaults spelled out or not give the same key
        spec = {
            "parent": baseline.key,
            "steps": steps,
            "finetune": v.finetune.model_dump(mode="json") if v.finetune else None,
            "seed": exp.seed,
        }
        variants.append(VariantPlan(v.name, spec_key(spec), baseline.key, spec, tuple(v.steps), v.finetune))
    plan = Plan(exp, baseline, variants)
    for pr in exp.probes:
        plan.probes[pr.name] = PROBES.get(pr.name).from_spec(pr.name, pr.params)
    for vp in plan.all_variants:
        for pr in exp.probes:
            probe = plan.probes[pr.name]
            jspec = {"variant": vp.key, **probe.describe(), "baseline": baseline.key, "seed": exp.seed}
            plan.jobs.append(Job(vp.name, vp.key, pr.name, spec_key(jspec), jspec))
    return plan
