"""Contract tests generated over the probe registry (as Captum's over its attribution methods): every
registered probe, on a tiny real model and its pruned child,

- leaves the variant as it found it (weights, train/eval flags, hooks);
- returns finite floats or NaN, each metric declared, each NaN with a reason (a warning or a note);
- describes itself with a stable key (the same params spelled with or without defaults);
- renders its report section from its own results.

A probe added to the registry is checked here without an edit, once it has fast parameters in
:data:`FAST` (a probe missing there fails, so it cannot be skipped by accident)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from compaudit.data import DataBundle
from compaudit.elements import Section, SectionData
from compaudit.probes import PROBES, ProbeContext
from compaudit.runtime import spec_key
from compaudit.variant import Variant

#: small parameters under which each probe reports in seconds on a CPU
FAST: dict[str, dict[str, Any]] = {
    "accuracy": {},
    "efficiency": {"batch_sizes": [1], "repeats": 1, "warmup": 0},
    "classes": {"bootstrap": 20, "exemplars": 1},
    "shift": {"corruptions": ["gaussian_noise"], "severities": [1], "samples": 40},
    "explain": {"methods": ["gradcam"], "samples": 16, "grid": 1, "batch_size": 16},
    "embedding": {"samples": 30, "steps": 1, "plot_points": 10},
    "adversarial": {
        "samples": 24,
        "sanity_steps": 2,
        "convergence_factor": 2,
        "attacks": [
            {"attack": "fgsm", "eps": [0.1]},
            {"attack": "pgd", "eps": [0.1], "params": {"steps": 2}},
        ],
    },
}


def _state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], int]:
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, [m.training for m in model.modules()], hooks


def _same(
    a: tuple[dict[str, torch.Tensor], list[bool], int], b: tuple[dict[str, torch.Tensor], list[bool], int]
) -> bool:
    return (
        a[1] == b[1]
        and a[2] == b[2]
        and a[0].keys() == b[0].keys()
        and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    )


def test_every_registered_probe_has_fast_parameters_here() -> None:
    assert set(PROBES.names()) <= set(FAST), set(PROBES.names()) - set(FAST)


@pytest.mark.parametrize("name", PROBES.names())
def test_probe_contract(name: str, trained_cnn: nn.Module, digits16: DataBundle) -> None:
    base = Variant("baseline", "base-key", trained_cnn)
    pruned = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_((torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.3).to(p.dtype))
    pruned.train()  # a mode the probe must restore
    child = Variant(
        "pruned", "pruned-key", pruned, lineage=[{"method": "test", "params": {}}], parent="base-key"
    )
    ctx = ProbeContext(
        data=digits16,
        baseline=base,
        device=torch.device("cpu"),
        seed=0,
        domains={"other": digits16},
        source="digits",
    )
    cls = PROBES.get(name)
    probe = cls.from_spec(name, FAST[name])

    # a stable key: the same params, with the defaults spelled out, describe the same probe
    spelled = cls.from_spec(name, probe.params.model_dump(mode="json"))
    assert spec_key(probe.describe()) == spec_key(spelled.describe())

    records: list[dict[str, Any]] = []
    tables: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for variant in (base, child):
        before = _state(variant.model)
        res = probe.run(variant, ctx)
        assert _same(before, _state(variant.model)), f"{name} changed {variant.name}"
        specs = cls.specs()
        reasons = [w.text for w in res.warnings] + [str(r) for r in res.tables.get("notes", [])]
        for m in res.metrics:
            assert m.name in specs and m.unit == specs[m.name].unit
            assert isinstance(m.value, float) and not math.isinf(m.value), (name, m.name, m.value)
            if math.isnan(m.value):
                why = specs[m.name].nan or reasons
                assert why, f"{name}: {m.name} is NaN without a declared reason, a warning or a note"
            records.append(
                {
                    "variant": variant.name,
                    "probe": name,
                    "metric": m.name,
                    "value": m.value,
                    **m.params,
                    "unit": m.unit,
                    "noisy": m.noisy,
                }
            )
        tables[variant.name] = res.tables

    section = cls.section(
        SectionData(name, records, tables, ["baseline", "pruned"], cls.specs(), PROBES.doc(name))
    )
    assert isinstance(section, Section) and section.title and section.blocks
