"""Adversarial probe: attacks on every variant, every route to a quantized model, and an honest
verdict on gradient masking.

For each attack and strength it reports clean and robust accuracy on the same reproducibly drawn
test samples, the attack's success rate, pre- and post-attack accuracy and mean confidence and time
to fool per sample (seed 000, ``000_a193888e59fb5ab2.txt``, Table II), the median perturbation norm of
minimum-norm attacks, and the average adversarial accuracy over the suite (seed 001,
``001_5343f4a55429e52f.txt``, Tables 4-5).

Routes. A float variant is attacked white-box (its own gradients) and, unless it is the baseline,
by transfer from the baseline. A variant with a *deployed* model (real int8 kernels) has no usable
gradient, so it is attacked by every route and each is reported, plus the per-sample worst case:

1. ``naive``: gradients of the deployed model, as seeds 000/001 did (an int8 model has none: the
   attack cannot move);
2. ``bpda``: white-box on the differentiable surrogate (fake-quant with straight-through
   gradients), evaluated on the deployed model (Athalye et al. 2018);
3. ``transfer``: crafted on the float baseline, evaluated on the deployed model;
4. gradient-free attacks (Square, Salt&Pepper) run on the deployed model itself.

Verdict. Following Athalye et al. 2018 and Carlini et al. 2019, the probe flags **gradient
masking** when the route the seeds used (naive / white-box) is contradicted: its accuracy is far
above another route's or a gradient-free attack's at the same strength; input gradients are zero or
non-finite on a share of samples; or accuracy does not fall towards zero as eps grows large. The
report then shows the reasons next to the numbers, so masking cannot be read as robustness.

Minimum-norm attacks (DeepFool, C&W, DDN, EAD) run once; each strength is a threshold on the norm
they needed (a sample is robust at eps if the attack failed or needed more than eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from compaudit.attacks import ATTACKS, Attack, input_gradient
from compaudit.data.base import ArrayDataset
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams, ProbeResult, SummaryColumn
from compaudit.progress import progress
from compaudit.runtime import derive_seed
from compaudit.variant import Variant


def runs_once(cls: type[Attack]) -> bool:
    """A minimum-norm attack without a required ``eps`` runs once; its strengths are thresholds on
    the norm it needed. Every other attack runs once per strength."""
    field = cls.Params.model_fields.get("eps")
    return cls.minimum_norm and (field is None or not field.is_required())


class AttackSpec(BaseModel):
    """One attack of the suite: a registered name, its strengths, its other parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: str
    eps: list[float] = Field(
        default_factory=list, description="strengths; thresholds for minimum-norm attacks"
    )
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("attack")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ATTACKS:
            raise ValueError(f"unknown attack {v!r}; choose one of: {', '.join(ATTACKS.names())}")
        return v

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        cls = ATTACKS.get(self.attack)
        if not runs_once(cls) and not self.eps and "eps" not in self.params:
            raise ValueError(f"eps: give the strengths of {self.attack!r} as a list")
        strengths: list[float | None] = list(self.eps) or [None]
        for eps in strengths:
            params = dict(self.params)
            if eps is not None and not runs_once(cls):
                params["eps"] = eps
            cls.Params.model_validate(params)
        return self

    def strengths(self) -> list[float]:
        if self.eps:
            return list(self.eps)
        return [float(self.params["eps"])] if "eps" in self.params else []


#: the seeds' attack settings. seed 001 (Tables 4 and 5): light and heavy strengths per attack;
#: seed 002: PGD-20 with step 0.01, eps 0.1 (Fashion-MNIST) or 8/255 (CIFAR-10); seed 000: C&W L2,
#: 40 iterations
PRESETS: dict[str, list[dict[str, Any]]] = {
    "seed001_light": [
        {"attack": "deepfool_linf", "eps": [0.0003]},
        {"attack": "pgd", "eps": [0.0003]},
        {"attack": "fgsm", "eps": [0.0003]},
        {"attack": "cw", "eps": [0.03]},
        {"attack": "ddn", "eps": [0.003]},
        {"attack": "ead", "eps": [1.0]},
        {"attack": "salt_pepper", "eps": [1.0]},
    ],
    "seed001_heavy": [
        {"attack": "deepfool_linf", "eps": [0.004]},
        {"attack": "pgd", "eps": [0.004]},
        {"attack": "fgsm", "eps": [0.004]},
        {"attack": "cw", "eps": [0.4]},
        {"attack": "ddn", "eps": [0.24]},
        {"attack": "ead", "eps": [10.0]},
        {"attack": "salt_pepper", "eps": [15.0]},
    ],
    "seed002_fmnist": [{"attack": "pgd", "eps": [0.1], "params": {"steps": 20, "step_size": 0.01}}],
    "seed002_cifar10": [{"attack": "pgd", "eps": [8 / 255], "params": {"steps": 20, "step_size": 0.01}}],
    "seed000": [{"attack": "cw", "eps": [0.5, 1.0, 2.0], "params": {"steps": 40}}],
}


class AdversarialParams(ProbeParams):
    attacks: list[AttackSpec] = Field(default_factory=list)
    preset: (
        Literal["seed001_light", "seed001_heavy", "seed002_fmnist", "seed002_cifar10", "seed000"] | None
    ) = None
    samples: int = Field(default=1000, ge=1, description="test samples, drawn reproducibly (seed 000: 1000)")
    batch_size: int = Field(default=256, ge=1)
    #: PGD L-inf at this eps must bring accuracy near zero on the white-box/naive route (None: skip)
    sanity_eps: float | None = Field(default=0.5, gt=0.0, le=1.0)
    sanity_steps: int = Field(default=10, ge=1)
    #: accuracy gap (share) between routes that counts as a contradiction
    masking_gap: float = Field(default=0.1, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _some(self) -> AdversarialParams:
        if not self.attacks and self.preset is None:
            raise ValueError("give attacks, a preset, or both")
        return self

    def suite(self) -> list[AttackSpec]:
        specs = [AttackSpec.model_validate(a) for a in PRESETS.get(self.preset or "", [])]
        return specs + list(self.attacks)


class _NoGradient(nn.Module):
    """The deployed model as a gradient attack sees it: outputs unchanged, input gradient exactly
    zero (a real int8 model has no gradient; the seeds attacked it anyway). It computes where the
    deployed model does (int8: the CPU)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def compute_device(self) -> torch.device | None:
        declared: torch.device | None = getattr(self.model, "compute_device", None)
        return declared

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x.detach())
        # (x * 0) first, so the (zero) input gradient is a real tensor, not an expanded view
        return out + (x * 0.0).flatten(1).sum(dim=1, keepdim=True)


@dataclass
class _Route:
    name: str
    source: nn.Module  # the model the attack computes gradients of
    target: nn.Module  # the model the adversarial inputs are evaluated on


def _predict(model: nn.Module, x: Tensor, batch_size: int, desc: str, device: torch.device) -> Tensor:
    """Logits of ``model`` on ``x``, in batches on ``device``; on the CPU."""
    chunks = torch.split(x, batch_size)
    with torch.no_grad():
        out = [model(xb.to(device)) for xb in progress(chunks, desc=desc, total=len(chunks))]
    return torch.cat(out).cpu()


def _strength(attack: str, eps: float | None, route: str) -> str:
    """What an attack run is called in progress lines: ``pgd eps=0.1 (bpda)``."""
    at = f" eps={eps:g}" if eps is not None and eps != float("inf") else ""
    return f"{attack}{at} ({route})"


@PROBES.register("adversarial")
class Adversarial(Probe):
    """Robust accuracy per attack, strength and route; worst case; gradient-masking verdict."""

    Params: ClassVar[type[ProbeParams]] = AdversarialParams
    summary: ClassVar[tuple[SummaryColumn, ...]] = (
        SummaryColumn("Worst-case robust accuracy", "robust_accuracy_worst", {}, "pct", "high"),
        SummaryColumn("Avg adversarial accuracy", "average_adversarial_accuracy", {}, "pct", "high"),
        SummaryColumn("Gradient masking", "gradient_masking", {}, "int", None),
    )

    def _sample(self, ctx: ProbeContext) -> tuple[Tensor, Tensor, Tensor]:
        """(test indices, images, labels) of the reproducible sample, on the CPU (each batch goes
        to the device of the model it is run on)."""
        p = self.params
        assert isinstance(p, AdversarialParams)
        test = ctx.data.test
        n = len(test)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(derive_seed(ctx.seed, "adversarial-samples"))
        idx = torch.randperm(n, generator=g)[: min(p.samples, n)].sort().values
        if isinstance(test, ArrayDataset):
            return idx, test.x[idx], test.y[idx]
        items = [test[int(i)] for i in progress(idx, desc="adversarial: reading samples", total=len(idx))]
        x = torch.stack([a for a, _ in items])
        return idx, x.cpu(), torch.as_tensor([int(b) for _, b in items])

    def _routes(self, variant: Variant, ctx: ProbeContext, gradient_free: bool) -> list[_Route]:
        target = variant.inference_model
        if gradient_free:
            return [_Route("black-box", target, target)]
        routes: list[_Route] = []
        if variant.deployed is not None:
            routes.append(_Route("naive", _NoGradient(variant.deployed), variant.deployed))
            if variant.surrogate is not None:
                routes.append(_Route("bpda", variant.surrogate, variant.deployed))
        else:
            routes.append(_Route("white-box", variant.model, target))
        if not variant.is_baseline:
            routes.append(_Route("transfer", ctx.baseline.model, target))
        return routes

    def _attack(
        self, attack: Attack, route: _Route, x: Tensor, y: Tensor, ctx: ProbeContext, seed: int, desc: str
    ) -> tuple[Tensor, Tensor, float]:
        """Adversarial inputs crafted on the route's source, batched, on the source's device;
        (adv on that device, norms on the CPU, seconds). ``desc`` names the run in progress lines."""
        p = self.params
        assert isinstance(p, AdversarialParams)
        device = ctx.device_for(route.source)
        gen = torch.Generator().manual_seed(seed)
        advs, norms, seconds = [], [], 0.0
        pairs = list(zip(torch.split(x, p.batch_size), torch.split(y, p.batch_size), strict=True))
        for xb, yb in progress(pairs, desc=desc, total=len(pairs)):
            res = attack.run(
                route.source, xb.to(device), yb.to(device), bounds=ctx.data.bounds, generator=gen
            )
            advs.append(res.adv)
            norms.append(res.norm)
            seconds += res.seconds
        return torch.cat(advs), torch.cat(norms).cpu(), seconds

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        assert isinstance(p, AdversarialParams)
        res = ProbeResult()
        idx, x, y = self._sample(ctx)
        n = len(y)
        target = variant.inference_model
        # clean predictions come from the run's shared cache: one forward pass per variant for all probes
        clean_logits = ctx.predictions(variant, "test").logits[idx]
        res.measured_on("outputs", ctx.device_for(target))
        clean_ok = clean_logits.argmax(1) == y
        clean_conf = torch.softmax(clean_logits.double(), 1).amax(1)
        res.add("clean_accuracy", float(clean_ok.double().mean()), samples=n)
        # per (attack, eps): per-route robust masks, for the worst case
        robust: dict[tuple[str, float], dict[str, Tensor]] = {}
        for spec in p.suite():
            cls = ATTACKS.get(spec.attack)
            for route in self._routes(variant, ctx, cls.gradient_free):
                res.measured_on(f"attack ({route.name})", ctx.device_for(route.source))
                seed = derive_seed(ctx.seed, variant.key, spec.attack, route.name)
                runs: list[tuple[float, Tensor, Tensor, float]] = []
                once = runs_once(cls)
                if once:
                    attack = cls.from_spec(spec.attack, dict(spec.params))
                    desc = f"{variant.name}: {_strength(spec.attack, None, route.name)}"
                    adv, norm, secs = self._attack(attack, route, x, y, ctx, seed, desc)
                    runs = [(eps, adv, norm, secs) for eps in spec.strengths()] or [
                        (float("inf"), adv, norm, secs)
                    ]
                else:
                    for eps in spec.strengths():
                        attack = cls.from_spec(spec.attack, {**spec.params, "eps": eps})
                        desc = f"{variant.name}: {_strength(spec.attack, eps, route.name)}"
                        adv, norm, secs = self._attack(attack, route, x, y, ctx, seed, desc)
                        runs.append((eps, adv, norm, secs))
                for eps, adv, norm, secs in runs:
                    what = _strength(spec.attack, eps, route.name)
                    desc = f"{variant.name}: predict {what}"
                    logits = _predict(target, adv, p.batch_size, desc, ctx.device_for(target))
                    fooled = logits.argmax(1) != y
                    if once:
                        fooled = fooled & (norm <= eps + 1e-9)
                    ok = clean_ok & ~fooled
                    robust.setdefault((spec.attack, eps), {})[route.name] = ok
                    conf = torch.softmax(logits.double(), 1).amax(1)
                    tags: dict[str, Any] = {"attack": spec.attack, "eps": eps, "route": route.name}
                    res.add("robust_accuracy", float(ok.double().mean()), **tags)
                    correct = int(clean_ok.sum())
                    res.add(
                        "success_rate", float((clean_ok & fooled).sum()) / correct if correct else 0.0, **tags
                    )
                    res.add("confidence_pre", float(clean_conf.mean()), **tags)
                    res.add("confidence_post", float(conf.mean()), **tags)
                    res.add("seconds_per_sample", secs / n, "s", noisy=True, **tags)
                    if cls.minimum_norm:
                        hit = norm[(logits.argmax(1) != y) & clean_ok]
                        res.add("median_norm", float(hit.median()) if len(hit) else float("nan"), **tags)
        worst: list[float] = []
        for (name, eps), by_route in robust.items():
            all_ok = torch.stack(list(by_route.values())).all(dim=0)
            acc = float(all_ok.double().mean())
            worst.append(acc)
            if len(by_route) > 1:
                res.add("robust_accuracy", acc, attack=name, eps=eps, route="worst")
        if worst:
            res.add("robust_accuracy_worst", min(worst))
            res.add("average_adversarial_accuracy", sum(worst) / len(worst))
        self._verdict(variant, ctx, x, y, clean_ok, robust, res)
        return res

    def _verdict(
        self,
        variant: Variant,
        ctx: ProbeContext,
        x: Tensor,
        y: Tensor,
        clean_ok: Tensor,
        robust: dict[tuple[str, float], dict[str, Tensor]],
        res: ProbeResult,
    ) -> None:
        p = self.params
        assert isinstance(p, AdversarialParams)
        reasons: list[str] = []
        primary = "naive" if variant.deployed is not None else "white-box"
        gap = p.masking_gap

        def acc(mask: Tensor) -> float:
            return float(mask.double().mean())

        # 1. the seeds' route is contradicted by another route at the same attack and strength
        for (name, eps), by_route in robust.items():
            if primary not in by_route:
                continue
            for other, mask in by_route.items():
                if other != primary and acc(by_route[primary]) >= acc(mask) + gap:
                    reasons.append(
                        f"{name} at eps {eps:g}: {primary} accuracy {acc(by_route[primary]):.1%} vs "
                        f"{acc(mask):.1%} by {other}"
                    )
        # 2. a gradient-free attack beats the gradient attacks of the same norm and strength
        for (name, eps), by_route in robust.items():
            cls = ATTACKS.get(name)
            if not cls.gradient_free or "black-box" not in by_route:
                continue
            for (other, oeps), oroutes in robust.items():
                ocls = ATTACKS.get(other)
                if ocls.gradient_free or ocls.norm != cls.norm or oeps != eps or primary not in oroutes:
                    continue
                if acc(oroutes[primary]) >= acc(by_route["black-box"]) + gap:
                    reasons.append(
                        f"gradient-free {name} ({acc(by_route['black-box']):.1%}) beats {other} "
                        f"({acc(oroutes[primary]):.1%}) at eps {eps:g}"
                    )
        # 3. zero or non-finite input gradients of the model the seeds attacked
        source = _NoGradient(variant.deployed) if variant.deployed is not None else variant.model
        where = ctx.device_for(source)
        pairs = list(zip(torch.split(x, p.batch_size), torch.split(y, p.batch_size), strict=False))
        desc = f"{variant.name}: input gradients"
        dead_parts: list[Tensor] = []
        for xb, yb in progress(pairs, desc=desc, total=len(pairs)):
            g = input_gradient(source, xb.to(where), yb.to(where)).flatten(1)
            dead_parts.append((~torch.isfinite(g).all(1)) | (g.abs().amax(1) == 0))
        dead = torch.cat(dead_parts).cpu()
        share = float(dead.double().mean())
        res.add("zero_or_nan_gradient_share", share)
        if share > 0.05:
            reasons.append(f"input gradients are zero or non-finite on {share:.0%} of the samples")
        # 4. accuracy must fall towards zero as eps grows large
        if p.sanity_eps is not None and "pgd" in ATTACKS:
            attack = ATTACKS.get("pgd").from_spec(
                "pgd", {"eps": p.sanity_eps, "steps": p.sanity_steps, "step_size": p.sanity_eps / 4}
            )
            route = _Route(primary, source, variant.inference_model)
            what = f"{_strength('pgd', p.sanity_eps, primary)} sanity"
            seed = derive_seed(ctx.seed, variant.key, "sanity")
            adv, _, _ = self._attack(attack, route, x, y, ctx, seed, f"{variant.name}: {what}")
            target = variant.inference_model
            desc = f"{variant.name}: predict {what}"
            logits = _predict(target, adv, p.batch_size, desc, ctx.device_for(target))
            ok = clean_ok & (logits.argmax(1) == y)
            res.add("robust_accuracy", acc(ok), attack="pgd", eps=p.sanity_eps, route=f"{primary} (sanity)")
            if acc(ok) > 0.1:
                reasons.append(
                    f"accuracy stays at {acc(ok):.1%} under PGD at eps {p.sanity_eps:g} (should be ~0)"
                )
        res.add("gradient_masking", float(bool(reasons)))
        if reasons:
            res.warnings.append(
                f"{variant.name}: GRADIENT MASKING - its {primary} robustness is not real robustness: "
                + "; ".join(reasons)
            )
        res.tables["masking_reasons"] = [{"variant": variant.name, "reason": r} for r in reasons]
