"""Building variants: train (or load) the baseline, apply each variant's steps, fine-tune, cache.

Every step's weights are cached under the step's key (:func:`weights_path`: the one place the
path of a weights file is spelled), so a rerun after a crash rebuilds nothing it already has,
two variants whose chains share a prefix share its weights, and a killed training resumes from
its last finished epoch (the ``.train-state.pt`` / ``.finetune-state.pt`` files beside them).

The :class:`Builder` writes only through a :class:`~compaudit.results.ResultSink`: the run's store
locally, a recorder inside a Ray task. It attaches to each variant what its methods state it can
do (the :class:`~compaudit.variant.Deployment` of the last step, whether its bit width is only
simulated) and who it is (:class:`~compaudit.results.VariantId`, from the plan, never parsed from
its name).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compaudit.compress import METHODS, CompressContext, Method, make_permanent
from compaudit.compress.base import FitFn, copy_model
from compaudit.config import TrainSpec
from compaudit.errors import CompauditError
from compaudit.inference import channels_last
from compaudit.models import load_state_strict
from compaudit.results import ResultSink
from compaudit.run.plan import VariantPlan
from compaudit.run.prepare import Prepared, error_line
from compaudit.runtime import atomic_torch_save, derive_seed, seed_everything
from compaudit.train import Objective, fit
from compaudit.variant import Variant

log = logging.getLogger("compaudit")


class BaselineError(CompauditError):
    """The baseline could not be built or trained: nothing else of the run can be measured."""


def weights_path(models_dir: Path, key: str, state: str = "") -> Path:
    """Where the weights of the model keyed ``key`` live in a run folder's ``models_dir``; with
    ``state`` (``"train"``, ``"finetune"``) the resume file of a training of that model."""
    return models_dir / (f"{key}.{state}-state.pt" if state else f"{key}.pt")


class Builder:
    """Builds the baseline and the variants of one prepared cell, writing through ``sink``.

    ``baseline``: the baseline already built (a Ray worker keeps it between tasks); default: built
    (trained, or loaded from the cache) on first use."""

    def __init__(self, prepared: Prepared, sink: ResultSink, *, baseline: Variant | None = None) -> None:
        self.p = prepared
        self.sink = sink
        self.exp = prepared.experiment
        self._baseline = baseline
        #: names of the variants this builder trained (the baseline, fine-tuned steps), in order
        self.trained: list[str] = []

    def weights(self, key: str) -> Path:
        return weights_path(self.sink.models_dir, key)

    def has_weights(self, key: str) -> bool:
        return self.weights(key).is_file()

    def _save(self, key: str, model: nn.Module) -> None:
        atomic_torch_save(model.state_dict(), self.weights(key))

    def _load_cached(self, key: str, model: nn.Module) -> bool:
        path = self.weights(key)
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_state_strict(model, state, source=repr(str(path)))
        return True

    def _trained(self, name: str) -> None:
        if name not in self.trained:
            self.trained.append(name)

    # ---------------------------------------------------------------- the baseline

    def baseline(self) -> Variant:
        """The baseline: the prepared base model, trained here unless a checkpoint or the cache has
        its weights. Any failure (training diverged, the user's model raised) is a one-line
        :class:`CompauditError`: without a baseline the run cannot go on."""
        if self._baseline is None:
            try:
                self._baseline = self._build_baseline()
            except CompauditError:
                raise
            except Exception as exc:
                name = self.p.plan.baseline.name
                raise BaselineError(f"{name}: cannot be built or trained: {error_line(exc)}") from exc
        return self._baseline

    def _build_baseline(self) -> Variant:
        vp = self.p.plan.baseline
        model = self.p.base_model
        pretrained = self.p.pretrained
        weights = {"pretrained": pretrained.to_json()} if pretrained is not None else {}
        if self.p.trains_baseline and not self._load_cached(vp.key, model):
            log.info(
                "%s: %s %s on %s for %d epochs",
                vp.name,
                "fine-tuning" if pretrained is not None else "training",
                self.exp.model.name,
                self.p.data.name,
                self.exp.model.train.epochs,
            )
            result = fit(
                model,
                self.p.data,
                self.exp.model.train,
                seed=derive_seed(self.exp.seed, vp.key, "train"),
                device=self.p.device,
                desc=vp.name,
                resume_path=weights_path(self.sink.models_dir, vp.key, "train"),
            )
            self._save(vp.key, model)
            self._trained(vp.name)
            info: dict[str, Any] = {
                **weights,
                "train": result.history,
                "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy,
                "seconds": result.seconds,
            }
            self._put_variant(vp, [], info)
        elif self.sink.variant_info(vp.key) is None:
            self._put_variant(vp, [], weights)
        # trained and saved in the layout the user gave; probed in the faster one (steps get a
        # contiguous copy: Method.apply)
        channels_last(model.to(self.p.device)).eval()
        return Variant(vp.name, vp.key, model, identity=vp.identity)

    def _put_variant(self, vp: VariantPlan, lineage: list[dict[str, Any]], info: dict[str, Any]) -> None:
        self.sink.put_variant(
            vp.key,
            name=vp.name,
            parent=vp.parent,
            spec=vp.spec,
            lineage=lineage,
            info=info,
            identity=vp.identity,
        )

    # ---------------------------------------------------------------- variants

    def _fit_for(self, key: str, seed: int, variant: str, record: dict[str, Any]) -> FitFn:
        """The one training loop bound to one step: its seed, device and resume file; what it
        trains is recorded in the step's lineage and in :attr:`trained`."""

        def bound(
            model: nn.Module, spec: TrainSpec, *, objective: Objective | None = None, desc: str = ""
        ) -> Any:
            self._trained(variant)
            result = fit(
                model,
                self.p.data,
                spec,
                seed=seed,
                objective=objective,
                device=self.p.device,
                desc=f"{variant}: {desc}" if desc else variant,
                resume_path=weights_path(self.sink.models_dir, key, "train"),
            )
            record.setdefault("train", []).append(result.history)
            return result

        return bound

    def build(self, vp: VariantPlan) -> Variant:
        """Apply the chain step by step; each step's result is cached under its prefix key, so a
        rerun (or another variant with the same prefix) loads it instead of recomputing it."""
        if vp.is_baseline:
            return self.baseline()
        model = self.baseline().model
        lineage: list[dict[str, Any]] = []
        skipped: list[str] = []
        bits: float | None = None
        simulated = False
        last_method: Method[Any] | None = None
        last_ctx: CompressContext | None = None
        for step, key in zip(vp.steps, vp.step_keys, strict=True):
            method = METHODS.get(step.method).from_spec(step.method, step.params)
            cached = self.has_weights(key)
            seed = derive_seed(self.exp.seed, key)
            trained: dict[str, Any] = {}
            ctx = CompressContext(
                self.p.data,
                seed,
                self.p.device,
                restoring=cached,
                fit=self._fit_for(key, seed, vp.name, trained),
                variant=vp.name,
            )
            seed_everything(seed)
            if method.needs_plain_weights:
                model = make_permanent(copy_model(model))
            if not cached:
                log.info("%s: applying %s", vp.name, method.name)
            model = method.apply(model, ctx).to(self.p.device)
            record = method.describe()
            record.update(trained)
            if cached:
                self._load_cached(key, model)
                record.update(self.sink.step_info(key))
            else:
                if step.finetune is not None and step.finetune.epochs > 0:
                    log.info(
                        "%s: %s fine-tuning for %d epoch(s) after %s",
                        vp.name,
                        step.finetune.objective,
                        step.finetune.epochs,
                        method.name,
                    )
                    result = fit(
                        model,
                        self.p.data,
                        step.finetune,
                        seed=derive_seed(seed, "finetune"),
                        device=self.p.device,
                        desc=vp.name,
                        resume_path=weights_path(self.sink.models_dir, key, "finetune"),
                    )
                    record["finetune"] = {"objective": step.finetune.objective, "history": result.history}
                    self._trained(vp.name)
                record["skipped"] = list(ctx.skipped)
                self._save(key, model)
                self.sink.put_step(
                    key, {k: record[k] for k in ("finetune", "skipped", "train") if k in record}
                )
            skipped.extend(record.get("skipped", []))
            lineage.append(record)
            step_bits = method.weight_bits()
            if step_bits:
                # the step that sets the bit width says whether it is stored or only simulated
                bits, simulated = step_bits, method.simulated()
            last_method, last_ctx = method, ctx
        final = make_permanent(copy_model(model)).eval()
        variant = Variant(
            vp.name,
            vp.key,
            final,
            lineage=lineage,
            parent=vp.parent,
            bits=bits,
            skipped=skipped,
            simulated=simulated,
            identity=vp.identity,
        )
        if last_method is not None and last_ctx is not None:
            last_ctx.restoring = True  # deploying never trains
            deployment = last_method.deploy(final, last_ctx)
            if deployment is not None:
                variant.deploy(deployment)
                variant.surrogate = final  # the differentiable float model the deployed one came from
        channels_last(final)  # probed in the faster layout, once built and deployed
        self._put_variant(
            vp,
            lineage,
            {
                "skipped": skipped,
                "bits": bits,
                "deployed": variant.deployed is not None,
                "runtime": variant.runtime,
                "surrogate": variant.surrogate_kind,
            },
        )
        return variant
