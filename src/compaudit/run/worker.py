"""One variant's work away from the run folder: what a Ray task runs (no Ray needed here).

A task builds one variant and runs its missing probes with the local executor's own code
(:meth:`LocalExecutor.run_variant`), but writes into a :class:`Recorder` instead of the run's
store: the weights and rows it produces come back to the driver, which alone writes the store.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compaudit.config import Experiment
from compaudit.probes.base import ProbeResult


@dataclass
class TaskOutput:
    """What one task did, for the driver to store: model files (bytes of state dicts) by key, then
    the rows of steps, variants and results in the order the store received them."""

    models: dict[str, bytes] = field(default_factory=dict)
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)


class Recorder:
    """Stands in for :class:`~compaudit.store.Store` where the store is out of reach: keeps every
    write in memory and answers reads from what the driver sent (the info of cached steps, the
    variants it already stores). Model files go to a private folder."""

    def __init__(
        self,
        root: Path,
        *,
        steps: dict[str, dict[str, Any]],
        variants: set[str],
        done: set[str],
    ) -> None:
        self.root = root
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._steps = dict(steps)
        self._variants = set(variants)
        self._done = set(done)
        self.out = TaskOutput()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def put_step(self, key: str, info: dict[str, Any]) -> None:
        self._steps[key] = info
        self.out.steps.append((key, info))

    def step_info(self, key: str) -> dict[str, Any]:
        return dict(self._steps.get(key, {}))

    def put_variant(
        self, key: str, *, name: str, parent: str | None, spec: Any, lineage: Any, info: dict[str, Any]
    ) -> None:
        self._variants.add(key)
        self.out.variants.append(
            {"key": key, "name": name, "parent": parent, "spec": spec, "lineage": lineage, "info": info}
        )

    def variant_info(self, key: str) -> dict[str, Any] | None:
        return {} if key in self._variants else None

    def has_result(self, key: str) -> bool:
        return key in self._done

    def put_result(
        self,
        key: str,
        *,
        variant_key: str,
        variant: str,
        probe: str,
        spec: Any,
        result: ProbeResult | None,
        seconds: float,
        error: str | None = None,
    ) -> None:
        if error is None:
            self._done.add(key)
        self.out.results.append(
            {
                "key": key,
                "variant_key": variant_key,
                "variant": variant,
                "probe": probe,
                "spec": spec,
                "result": result,
                "seconds": seconds,
                "error": error,
            }
        )


def run_variant_task(
    exp: Experiment,
    prefix: str,
    variant_key: str,
    missing: list[str],
    models: dict[str, bytes],
    steps: dict[str, dict[str, Any]],
    variants: set[str],
    threads: int,
) -> TaskOutput:
    """Build variant ``variant_key`` of cell ``(prefix, exp)`` and run the jobs keyed ``missing``.

    ``models`` holds the weights the driver has cached (the baseline's, the variant's finished
    steps'), ``steps`` those steps' stored info, ``variants`` the keys of the variants it stores.
    Returns every weight file and row produced; a probe's :class:`CompauditError` is one error row,
    as in the local executor; anything else fails the task."""
    from compaudit.run.local import LocalExecutor, prepare

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="compaudit-task-") as tmp:
        plan_missing = set(missing)
        prepared = prepare(exp, prefix)
        jobs = [j for j in prepared.plan.jobs if j.key in plan_missing]
        vp = next(v for v in prepared.plan.all_variants if v.key == variant_key)
        rec = Recorder(
            Path(tmp),
            steps=steps,
            variants=variants,
            done={j.key for j in prepared.plan.jobs if j.key not in plan_missing},
        )
        for key, data in models.items():
            (rec.models_dir / f"{key}.pt").write_bytes(data)
        executor = LocalExecutor(prepared, rec)
        executor.run_variant(vp, jobs)
        for key in (*vp.step_keys, vp.key):
            path = rec.models_dir / f"{key}.pt"
            if key not in models and path.is_file():
                rec.out.models[key] = path.read_bytes()
        rec.out.trained = executor.summary.trained
        return rec.out
