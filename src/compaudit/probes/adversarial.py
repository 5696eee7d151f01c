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

What an attack returns (see :mod:`compaudit.attacks.base`). Robustness is measured with success
meaning *fooled at any iterate* (``until="fooled"``): a sample counts as fooled when any iterate of
the attack fooled the model it runs on. Transfer examples are the exception: they are the
loss-maximising images of the full schedule on the float baseline (``until="end"``), seeded by the
baseline, so every variant is attacked with the same images.

Savings (the ``savings`` parameter, default on; off, everything is redone and the numbers are the
same, ``tests/test_adversarial_savings.py``): an attack stops working on a sample once it is fooled
or its input gradient is exactly zero (``early_exit``), and the transfer examples are crafted once
per run and kept in the run folder's cache, so a rerun and a Ray worker reuse them (the baseline's
own job crafts them, before the variants need them). A deterministic attack (DeepFool, C&W, DDN:
:attr:`Attack.deterministic`) is not run twice on the baseline: its white-box run there is the
very run that made its transfer examples.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from compaudit.attacks import ATTACKS, Attack, MinimizationAttack, Until, input_gradient
from compaudit.data.base import ArrayDataset
from compaudit.inference import execution_device
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams
from compaudit.probes.views import adversarial as views_adversarial
from compaudit.progress import progress
from compaudit.results import MetricSpec, ProbeResult, Role, Severity, View, summary
from compaudit.runtime import derive_seed, spec_key
from compaudit.units import format_value
from compaudit.variant import Variant


def runs_once(cls: type[Attack[Any]]) -> bool:
    """A minimum-norm attack without a required ``eps`` runs once; its strengths are thresholds on
    the norm it needed. Every other attack runs once per strength."""
    return issubclass(cls, MinimizationAttack) and not cls.eps_required


class AttackSpec(BaseModel):
    """One attack of the suite: a registered name, its strengths, its other parameters, and the
    label its rows carry (default: the attack's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: str
    eps: list[float] = Field(
        default_factory=list, description="strengths; thresholds for minimum-norm attacks"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(
        default=None,
        description="what the report and the rows call it (the `attack` column); default: attack",
    )

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

    @property
    def name(self) -> str:
        """The attack's name in the rows and the report: its label, else the registry name."""
        return self.label or self.attack

    @property
    def norm(self) -> str:
        return ATTACKS.get(self.attack).norm

    def strengths(self) -> list[float]:
        if self.eps:
            return list(self.eps)
        return [float(self.params["eps"])] if "eps" in self.params else []

    def iterative(self) -> bool:
        """A multi-step attack that maximises the loss inside the eps-ball (PGD, APGD): the strongest
        kind a gradient-free attack is held against, and the kind whose convergence is checked."""
        cls = ATTACKS.get(self.attack)
        if cls.gradient_free or issubclass(cls, MinimizationAttack):
            return False
        steps = cls.Params.model_fields.get("steps")
        if steps is None:
            return False
        n = self.params.get("steps", steps.default)
        return isinstance(n, int) and n > 1


class HeadlineSpec(BaseModel):
    """The (norm, eps) of the worst-case robust accuracy the overview shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    norm: Literal["linf", "l2", "l1", "l0"]
    eps: float = Field(gt=0.0)


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
    # seed 000's own C&W settings: 40 iterations, learning rate 0.5e-4, one fixed c (no search)
    "seed000": [
        {
            "attack": "cw",
            "label": "C&W, fixed c",
            "eps": [0.5, 1.0, 2.0],
            "params": {"steps": 40, "lr": 5e-5, "c": 1.0, "binary_search_steps": 1, "abort_early": False},
        }
    ],
}


class AdversarialParams(ProbeParams):
    attacks: list[AttackSpec] = Field(default_factory=list)
    preset: (
        Literal["seed001_light", "seed001_heavy", "seed002_fmnist", "seed002_cifar10", "seed000"] | None
    ) = None
    samples: int = Field(default=1000, ge=1, description="test samples, drawn reproducibly (seed 000: 1000)")
    batch_size: int = Field(default=256, ge=1)
    headline: HeadlineSpec | None = Field(
        default=None,
        description="the (norm, eps) whose worst-case robust accuracy the overview shows; default: the "
        "first attack of the suite with a strength, at its first strength",
    )
    #: the unbounded sanity check: L-inf PGD at this eps must bring accuracy to at most chance (None:
    #: the whole range of the input bounds, which can reach any image)
    sanity_eps: float | None = Field(default=None, gt=0.0)
    sanity_steps: int = Field(default=10, ge=1)
    #: accuracy gap (share) between routes that counts as a contradiction
    masking_gap: float = Field(default=0.1, gt=0.0, le=1.0)
    #: the convergence check reruns the strongest iterative attack with this many times its steps
    convergence_factor: int = Field(default=4, ge=2)
    #: accuracy drop (share) from the longer run beyond which the attack has not converged, and rise
    #: of accuracy with eps beyond which it is not monotone
    sanity_margin: float = Field(default=0.05, ge=0.0, le=1.0)
    savings: bool = Field(
        default=True,
        description="skip work whose result is known: transfer examples crafted once per run and "
        "cached, and an attack stops on a sample once it is fooled or its input gradient is exactly "
        "zero; false: all of it is redone, for the same numbers (only slower)",
    )

    @model_validator(mode="after")
    def _some(self) -> AdversarialParams:
        if not self.attacks and self.preset is None:
            raise ValueError("give attacks, a preset, or both")
        seen: set[tuple[str, float]] = set()
        for spec in self.suite():
            for eps in spec.strengths() or [math.inf]:
                if (spec.name, eps) in seen:
                    raise ValueError(f"two attacks named {spec.name!r} at eps {eps:g}: give one a label")
                seen.add((spec.name, eps))
        if self.headline is not None:
            h = self.headline
            if not any(spec.norm == h.norm and h.eps in spec.strengths() for spec in self.suite()):
                raise ValueError(f"headline: no attack of the suite measures {h.norm} at eps {h.eps:g}")
        return self

    def suite(self) -> list[AttackSpec]:
        specs = [AttackSpec.model_validate(a) for a in PRESETS.get(self.preset or "", [])]
        return specs + list(self.attacks)

    def headline_key(self) -> tuple[str, float] | None:
        """(norm, eps) of the overview's worst case."""
        if self.headline is not None:
            return self.headline.norm, self.headline.eps
        for spec in self.suite():
            if spec.strengths():
                return spec.norm, spec.strengths()[0]
        return None


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


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018, §4.1): the forward value is
    exactly the deployed model's logits, the gradient the surrogate's.

    ``deployed(x).detach() + (g(x) - g(x).detach())`` with ``g`` the surrogate: ``g - g.detach()``
    is exactly zero, so the value is the deployed logits bit for bit (``g + (d - g).detach()`` equals
    them only up to rounding, which moves minimum-norm attacks' decision boundaries). An attack run on
    this module therefore makes every success check, early stop and binary search on the deployed
    model, while stepping along the surrogate's gradient. It computes on the surrogate's device and
    sends the deployed model's inputs where its kernels are (int8: the CPU).
    """

    def __init__(self, deployed: nn.Module, surrogate: nn.Module) -> None:
        super().__init__()
        self.deployed = deployed
        self.surrogate = surrogate

    def forward(self, x: Tensor) -> Tensor:
        g: Tensor = self.surrogate(x)
        where = execution_device(self.deployed, x.device)
        with torch.no_grad():
            d: Tensor = self.deployed(x.detach().to(where))
        return d.to(device=g.device, dtype=g.dtype) + (g - g.detach())


@dataclass
class _Route:
    name: str
    source: nn.Module  # the model the attack runs on (its gradients and its success checks)
    target: nn.Module  # the model the adversarial inputs are evaluated on


@dataclass
class _Run:
    """One attack at one strength on one route: per-sample results on the probe's samples."""

    spec: AttackSpec
    eps: float
    route: str
    ok: Tensor  # (N,) bool: correct before and after the attack
    fooled: Tensor  # (N,) bool: correct before, wrong after (within eps for minimum-norm attacks)

    @property
    def accuracy(self) -> float:
        return float(self.ok.double().mean())


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


def _params(spec: AttackSpec, eps: float | None) -> dict[str, Any]:
    """The attack parameters of ``spec`` at strength ``eps`` (None: a minimum-norm attack's one run)."""
    return dict(spec.params) if eps is None else {**spec.params, "eps": eps}


def _pct(x: float) -> str:
    return format_value(x, "fraction")


@PROBES.register("adversarial")
class Adversarial(Probe[AdversarialParams]):
    """Robust accuracy per attack, strength and route; per-sample worst case per norm and strength;
    a gradient-masking verdict made of measured contradictions."""

    #: its part of the report (:mod:`compaudit.probes.views.adversarial`)
    section = staticmethod(views_adversarial.section)

    Params: ClassVar[type[ProbeParams]] = AdversarialParams
    #: 3: success is "fooled at any iterate"; transfer examples crafted once per run (full schedule,
    #: seeded by the baseline); random starts drawn per sample
    version: ClassVar[int] = 3
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("clean_accuracy", "fraction", better="high"),
        MetricSpec("robust_accuracy", "fraction", better="high"),
        MetricSpec("success_rate", "fraction", better="low"),
        MetricSpec("confidence_pre", "fraction"),
        MetricSpec("confidence_post", "fraction"),
        MetricSpec("seconds_per_sample", "s", noisy=True),
        MetricSpec("time_to_fool", "s", nan="no sample was fooled", noisy=True),
        MetricSpec("fooled", "count"),
        MetricSpec("median_norm", "norm", nan="no sample was fooled", better="high"),
        MetricSpec("robust_accuracy_worst", "fraction", better="high"),
        MetricSpec(
            "robust_accuracy_headline",
            "fraction",
            better="high",
            views=(
                summary("Worst-case robust accuracy"),
                View(
                    (Role.HEADLINE, Role.PARETO),
                    "Worst-case robust acc",
                    note="per sample, robust only if every attack and route of the headline norm and "
                    "strength failed",
                    order=40,
                    key="robust",
                    axis="worst-case robust accuracy",
                ),
            ),
        ),
        MetricSpec(
            "average_adversarial_accuracy",
            "fraction",
            better="high",
            views=(summary("Avg adversarial accuracy"),),
        ),
        MetricSpec("zero_or_nan_gradient_share", "fraction"),
        MetricSpec("no_gradient_path", "flag", doc="information, not evidence of masking"),
        MetricSpec("masking_checks_failed", "count", better="low"),
        MetricSpec("gradient_masking", "flag", better="low", views=(summary("Gradient masking"),)),
        MetricSpec("attack_not_converged", "flag", better="low"),
    )

    def _sample(self, ctx: ProbeContext) -> tuple[Tensor, Tensor, Tensor]:
        """(test indices, images, labels) of the reproducible sample, on the CPU (each batch goes
        to the device of the model it is run on)."""
        p = self.params
        test = ctx.data.test
        n = len(test)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(derive_seed(ctx.seed, "adversarial-samples"))
        idx = torch.randperm(n, generator=g)[: min(p.samples, n)].sort().values
        if isinstance(test, ArrayDataset):
            return idx, test.x[idx], test.y[idx]
        items = [test[int(i)] for i in progress(idx, desc="adversarial: reading samples", total=len(idx))]
        x = torch.stack([a for a, _ in items])
        return idx, x.cpu(), torch.as_tensor([int(b) for _, b in items])

    @staticmethod
    def primary(variant: Variant) -> str:
        """The route the seeds reported: ``naive`` on a model without a gradient path (int8 kernels),
        else ``white-box``."""
        return "white-box" if variant.gradient_path else "naive"

    def _routes(self, variant: Variant, ctx: ProbeContext, gradient_free: bool) -> list[_Route]:
        target = variant.inference_model
        if gradient_free:
            return [_Route("black-box", target, target)]
        routes: list[_Route] = []
        if not variant.gradient_path:
            routes.append(_Route("naive", _NoGradient(target), target))
            if variant.surrogate is not None:
                routes.append(_Route("bpda", BPDA(target, variant.surrogate), target))
        else:
            routes.append(_Route("white-box", target, target))
        if not variant.is_baseline:
            routes.append(_Route("transfer", ctx.baseline.model, target))
        return routes

    def _attack(
        self,
        attack: Attack[Any],
        route: _Route,
        x: Tensor,
        y: Tensor,
        ctx: ProbeContext,
        seed: int,
        desc: str,
        until: Until = "fooled",
    ) -> tuple[Tensor, Tensor, float, Tensor]:
        """Adversarial inputs crafted on the route's source, batched, on the source's device;
        (adv on that device, norms on the CPU, seconds, per-sample seconds until first fooled from
        the start of its batch). ``desc`` names the run in progress lines; ``until``: what the
        attack returns (:mod:`compaudit.attacks.base`)."""
        p = self.params
        device = ctx.device_for(route.source)
        gen = torch.Generator().manual_seed(seed)
        advs, norms, times, seconds = [], [], [], 0.0
        pairs = list(zip(torch.split(x, p.batch_size), torch.split(y, p.batch_size), strict=True))
        for xb, yb in progress(pairs, desc=desc, total=len(pairs)):
            res = attack.run(
                route.source,
                xb.to(device),
                yb.to(device),
                bounds=ctx.data.bounds,
                generator=gen,
                until=until,
                early_exit=p.savings,
            )
            advs.append(res.adv)
            norms.append(res.norm)
            times.append(res.fooled_seconds)
            seconds += res.seconds
        return torch.cat(advs), torch.cat(norms).cpu(), seconds, torch.cat(times)

    def _evaluate(
        self,
        attack: Attack[Any],
        route: _Route,
        x: Tensor,
        y: Tensor,
        ctx: ProbeContext,
        seed: int,
        what: str,
    ) -> Tensor:
        """Per-sample: is the target right on the route's adversarial inputs (a bounded attack)."""
        p = self.params
        adv, _, _, _ = self._attack(attack, route, x, y, ctx, seed, what)
        target = route.target
        logits = _predict(target, adv, p.batch_size, f"{what}: predict", ctx.device_for(target))
        return logits.argmax(1) == y

    def _transfer(
        self, spec: AttackSpec, eps: float | None, x: Tensor, y: Tensor, ctx: ProbeContext
    ) -> tuple[Tensor, Tensor, float, Tensor]:
        """The transfer examples of ``spec`` at ``eps`` (None: the one run of a minimum-norm attack),
        as :meth:`_attack` returns them: crafted on the float baseline with the full schedule
        (``until="end"``: the loss-maximising image, not one that just crosses the baseline's
        boundary), seeded by the baseline, once per run (:meth:`ProbeContext.tensors`, keyed by
        the baseline, the seed, the attack and the samples)."""
        cls = ATTACKS.get(spec.attack)
        params = _params(spec, eps)
        samples = hashlib.sha256(x.contiguous().numpy().tobytes() + y.contiguous().numpy().tobytes())
        key = "adversarial-transfer-" + spec_key(
            {
                "version": self.version,
                "baseline": ctx.baseline.key,
                "seed": ctx.seed,
                "attack": spec.attack,
                "params": params,
                "bounds": list(ctx.data.bounds),
                "samples": samples.hexdigest(),
            }
        )

        def craft() -> dict[str, Tensor]:
            attack = cls.from_spec(spec.attack, params)
            source = ctx.baseline.model
            route = _Route("transfer", source, source)
            seed = derive_seed(ctx.seed, ctx.baseline.key, "transfer", spec.name)
            desc = f"{ctx.baseline.name}: craft {_strength(spec.name, eps, 'transfer')}"
            adv, norm, secs, times = self._attack(attack, route, x, y, ctx, seed, desc, until="end")
            spent = torch.tensor(secs, dtype=torch.float64)
            return {"adv": adv, "norm": norm, "seconds": spent, "times": times}

        if not self.params.savings:
            return self._unpack(craft())
        return self._unpack(ctx.tensors(key, craft))

    @staticmethod
    def _unpack(got: dict[str, Tensor]) -> tuple[Tensor, Tensor, float, Tensor]:
        return got["adv"], got["norm"], float(got["seconds"]), got["times"]

    def _crafted(
        self,
        spec: AttackSpec,
        route: _Route,
        variant: Variant,
        x: Tensor,
        y: Tensor,
        ctx: ProbeContext,
    ) -> list[tuple[float, Tensor, Tensor, float, Tensor]]:
        """``(eps, adv, norms, seconds, times)`` of ``spec`` on ``route`` per strength (a
        minimum-norm attack: its one run, for each strength; ``inf`` when it has none)."""
        cls = ATTACKS.get(spec.attack)
        seed = derive_seed(ctx.seed, variant.key, spec.name, route.name)

        # the baseline's own run of a deterministic attack is its transfer examples' run: the same
        # attack, parameters, model and samples (no seed, no ``until`` read), so it is done once
        shared = (
            route.name == "white-box" and variant.is_baseline and self.params.savings and cls.deterministic
        )

        def craft(eps: float | None) -> tuple[Tensor, Tensor, float, Tensor]:
            if route.name == "transfer" or shared:
                return self._transfer(spec, eps, x, y, ctx)
            attack = cls.from_spec(spec.attack, _params(spec, eps))
            desc = f"{variant.name}: {_strength(spec.name, eps, route.name)}"
            return self._attack(attack, route, x, y, ctx, seed, desc)

        if runs_once(cls):
            once = craft(None)
            return [(eps, *once) for eps in spec.strengths()] or [(math.inf, *once)]
        return [(eps, *craft(eps)) for eps in spec.strengths()]

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        res = ProbeResult()
        idx, x, y = self._sample(ctx)
        if variant.is_baseline and p.savings:
            # every other variant is attacked by transfer from the baseline: craft the examples now,
            # once (under Ray the baseline's jobs run before the variants' probes)
            for spec in p.suite():
                cls = ATTACKS.get(spec.attack)
                if not cls.gradient_free:
                    for eps in [None] if runs_once(cls) else spec.strengths():
                        self._transfer(spec, eps, x, y, ctx)
        n = len(y)
        target = variant.inference_model
        # clean predictions come from the run's shared cache: one forward pass per variant for all probes
        clean_logits = ctx.predictions(variant, "test").logits[idx]
        res.measured_on("outputs", ctx.device_for(target))
        clean_ok = clean_logits.argmax(1) == y
        clean_conf = torch.softmax(clean_logits.double(), 1).amax(1)
        res.add("clean_accuracy", float(clean_ok.double().mean()), samples=n)
        correct = int(clean_ok.sum())
        runs: list[_Run] = []
        for spec in p.suite():
            cls = ATTACKS.get(spec.attack)
            once = runs_once(cls)
            for route in self._routes(variant, ctx, cls.gradient_free):
                res.measured_on(f"attack ({route.name})", ctx.device_for(route.source))
                for eps, adv, norm, secs, times in self._crafted(spec, route, variant, x, y, ctx):
                    what = _strength(spec.name, eps, route.name)
                    desc = f"{variant.name}: predict {what}"
                    logits = _predict(route.target, adv, p.batch_size, desc, ctx.device_for(route.target))
                    wrong = logits.argmax(1) != y
                    if once:
                        wrong = wrong & (norm <= eps + 1e-9)
                    ok = clean_ok & ~wrong
                    fooled = clean_ok & wrong
                    runs.append(_Run(spec, eps, route.name, ok, fooled))
                    conf = torch.softmax(logits.double(), 1).amax(1)
                    tags: dict[str, Any] = {"attack": spec.name, "eps": eps, "route": route.name}
                    res.add("robust_accuracy", float(ok.double().mean()), **tags)
                    res.add("success_rate", float(fooled.sum()) / correct if correct else 0.0, **tags)
                    res.add("confidence_pre", float(clean_conf.mean()), **tags)
                    res.add("confidence_post", float(conf.mean()), **tags)
                    res.add("seconds_per_sample", secs / n, noisy=True, **tags)
                    # seed 000, Table II: time until each fooled sample was first fooled, fooled ones only
                    hit = times[fooled & torch.isfinite(times)]
                    res.add("fooled", int(fooled.sum()), **tags)
                    res.add(
                        "time_to_fool",
                        float(hit.mean()) if len(hit) else math.nan,
                        noisy=True,
                        batch_size=p.batch_size,
                        **tags,
                    )
                    if issubclass(cls, MinimizationAttack):
                        mn = norm[fooled]
                        res.add("median_norm", float(mn.median()) if len(mn) else math.nan, **tags)
        self._worst_case(runs, res)
        self._verdict(variant, ctx, x, y, clean_ok, runs, res)
        return res

    def _worst_case(self, runs: list[_Run], res: ProbeResult) -> None:
        """Per (attack, eps): the worst over routes; per (norm, eps): robust only if every attack of
        that norm and strength and every route failed on the sample (AutoAttack's definition)."""
        p = self.params
        by_attack: dict[tuple[str, float], list[Tensor]] = {}
        by_norm: dict[tuple[str, float], list[Tensor]] = {}
        for r in runs:
            by_attack.setdefault((r.spec.name, r.eps), []).append(r.ok)
            by_norm.setdefault((r.spec.norm, r.eps), []).append(r.ok)
        per_attack: list[float] = []
        for (name, eps), oks in by_attack.items():
            acc = float(torch.stack(oks).all(dim=0).double().mean())
            per_attack.append(acc)
            if len(oks) > 1:
                res.add("robust_accuracy", acc, attack=name, eps=eps, route="worst")
        if per_attack:
            # seed 001's "average adversarial accuracy": the mean over the suite's attacks and strengths
            res.add("average_adversarial_accuracy", sum(per_attack) / len(per_attack))
        worst = {k: float(torch.stack(oks).all(dim=0).double().mean()) for k, oks in by_norm.items()}
        for (norm, eps), acc in worst.items():
            res.add("robust_accuracy_worst", acc, norm=norm, eps=eps)
        head = p.headline_key()
        if head is not None and head in worst:
            res.add("robust_accuracy_headline", worst[head], norm=head[0], eps=head[1])

    def _verdict(
        self,
        variant: Variant,
        ctx: ProbeContext,
        x: Tensor,
        y: Tensor,
        clean_ok: Tensor,
        runs: list[_Run],
        res: ProbeResult,
    ) -> None:
        """Gradient masking as measured contradictions (Athalye et al. 2018; Carlini et al. 2019), one
        row per check in the table ``masking_checks``; the verdict is that some check failed."""
        p = self.params
        primary = self.primary(variant)
        gap, margin = p.masking_gap, p.sanity_margin
        checks: list[dict[str, Any]] = []

        def check(
            name: str, route: str, passed: bool, value: float, reference: float, tol: float, **kw: Any
        ) -> None:
            checks.append(
                {
                    "variant": variant.name,
                    "check": name,
                    "verdict": kw.get("verdict", "gradient masking"),
                    "route": route,
                    "attack": kw.get("attack", ""),
                    "eps": kw.get("eps", math.nan),
                    "value": value,
                    "reference": reference,
                    "margin": tol,
                    "unit": "fraction",  # of value and reference (robust accuracies); margin: pp
                    "passed": passed,
                    "detail": kw["detail"],
                }
            )

        # the routes whose numbers are reported as robustness: the seeds' route, and BPDA
        evaluated = [primary] + (
            ["bpda"] if not variant.gradient_path and variant.surrogate is not None else []
        )
        stronger = {"naive": ("bpda", "transfer"), "white-box": ("transfer",), "bpda": ("transfer",)}
        table = {(r.spec.name, r.eps, r.route): r for r in runs}
        # (a) a route far above another route at the same attack and strength
        for r in runs:
            if r.route not in evaluated:
                continue
            for other in stronger[r.route]:
                o = table.get((r.spec.name, r.eps, other))
                if o is None:
                    continue
                passed = r.accuracy < o.accuracy + gap
                check(
                    f"{other} beats {r.route}",
                    r.route,
                    passed,
                    r.accuracy,
                    o.accuracy,
                    gap,
                    attack=r.spec.name,
                    eps=r.eps,
                    detail=f"{r.spec.name} at eps {r.eps:g}: {r.route} {_pct(r.accuracy)} vs {other} "
                    f"{_pct(o.accuracy)} (contradiction if ≥ {format_value(gap, 'pp')} above)",
                )
        # (b) a gradient-free attack beats the strongest iterative gradient attack of the same norm and
        # strength on the strongest non-naive route
        strongest_route = "bpda" if "bpda" in evaluated else primary
        for g in runs:
            if g.route != "black-box" or runs_once(ATTACKS.get(g.spec.attack)):
                continue
            rivals = [
                r
                for r in runs
                if r.route == strongest_route
                and r.spec.iterative()
                and r.spec.norm == g.spec.norm
                and r.eps == g.eps
            ]
            if not rivals:
                continue
            best = min(rivals, key=lambda r: r.accuracy)
            passed = best.accuracy < g.accuracy + gap
            check(
                "gradient-free beats iterative",
                strongest_route,
                passed,
                best.accuracy,
                g.accuracy,
                gap,
                attack=best.spec.name,
                eps=g.eps,
                detail=f"{g.spec.name} (gradient-free) {_pct(g.accuracy)} vs {best.spec.name} on "
                f"{strongest_route} {_pct(best.accuracy)} at {g.spec.norm} eps {g.eps:g}",
            )
        # (c1) robust accuracy must not rise with eps
        for route in evaluated:
            series: dict[str, list[_Run]] = {}
            for r in runs:
                if r.route == route and not runs_once(ATTACKS.get(r.spec.attack)):
                    series.setdefault(r.spec.name, []).append(r)
            for name, rs in series.items():
                rs = sorted(rs, key=lambda r: r.eps)
                for lo, hi in itertools.pairwise(rs):
                    passed = hi.accuracy <= lo.accuracy + margin
                    check(
                        "accuracy rises with eps",
                        route,
                        passed,
                        hi.accuracy,
                        lo.accuracy,
                        margin,
                        attack=name,
                        eps=hi.eps,
                        detail=f"{name} on {route}: {_pct(lo.accuracy)} at eps {lo.eps:g}, "
                        f"{_pct(hi.accuracy)} at eps {hi.eps:g}",
                    )
        models = {r.name: r for r in self._routes(variant, ctx, gradient_free=False)}
        chance = 1.0 / int(ctx.predictions(variant, "test").logits.shape[1])
        lo_b, hi_b = ctx.data.bounds
        # (c2) an unbounded attack reaches at most chance accuracy
        if "pgd" in ATTACKS:
            eps = p.sanity_eps if p.sanity_eps is not None else float(hi_b - lo_b)
            for route in evaluated:
                # from the clean input (a random start in so large a ball is a random image: it would
                # pass without any gradient)
                attack = ATTACKS.get("pgd").from_spec(
                    "pgd", {"eps": eps, "steps": p.sanity_steps, "step_size": eps / 4, "random_start": False}
                )
                what = f"{variant.name}: {_strength('pgd', eps, route)} unbounded"
                seed = derive_seed(ctx.seed, variant.key, "sanity", route)
                ok = clean_ok & self._evaluate(attack, models[route], x, y, ctx, seed, what)
                acc = float(ok.double().mean())
                res.add("robust_accuracy", acc, attack="pgd", eps=eps, route=f"{route} (unbounded)")
                check(
                    "unbounded attack above chance",
                    route,
                    acc <= chance,
                    acc,
                    chance,
                    0.0,
                    attack="pgd",
                    eps=eps,
                    detail=f"PGD at eps {eps:g} ({p.sanity_steps} steps) on {route}: {_pct(acc)} "
                    f"(chance {_pct(chance)})",
                )
        # (c3) more iterations do not lower robust accuracy: the attack has converged
        head = p.headline_key()
        # (on the naive route of a model without a gradient path the attack cannot move: nothing to check)
        iterative = [r for r in runs if r.route in evaluated and r.route != "naive" and r.spec.iterative()]
        if iterative:
            at_head = [r for r in iterative if head is not None and (r.spec.norm, r.eps) == head]
            chosen_eps = (at_head or sorted(iterative, key=lambda r: r.eps))[0]
            for r in [r for r in iterative if r.spec is chosen_eps.spec and r.eps == chosen_eps.eps]:
                cls = ATTACKS.get(r.spec.attack)
                steps_field = cls.Params.model_fields["steps"]
                steps = int(r.spec.params.get("steps", steps_field.default)) * p.convergence_factor
                attack = cls.from_spec(r.spec.attack, {**r.spec.params, "eps": r.eps, "steps": steps})
                what = (
                    f"{variant.name}: {_strength(r.spec.name, r.eps, r.route)} x{p.convergence_factor} steps"
                )
                seed = derive_seed(ctx.seed, variant.key, "convergence", r.spec.name, r.route)
                ok = clean_ok & self._evaluate(attack, models[r.route], x, y, ctx, seed, what)
                acc = float(ok.double().mean())
                res.add(
                    "robust_accuracy",
                    acc,
                    attack=r.spec.name,
                    eps=r.eps,
                    route=f"{r.route} (x{p.convergence_factor} steps)",
                )
                check(
                    "more iterations lower accuracy",
                    r.route,
                    acc >= r.accuracy - margin,
                    acc,
                    r.accuracy,
                    margin,
                    verdict="attack not converged",
                    attack=r.spec.name,
                    eps=r.eps,
                    detail=f"{r.spec.name} at eps {r.eps:g} on {r.route}: {_pct(r.accuracy)} with "
                    f"{steps // p.convergence_factor} steps, {_pct(acc)} with {steps} (raise its steps)",
                )
        # information about the model, not evidence: whether it has a gradient path at all, and how
        # often the input gradient of the route the seeds attacked is zero or non-finite
        res.add("no_gradient_path", float(not variant.gradient_path))
        source = models[primary].source
        where = ctx.device_for(source)
        pairs = list(zip(torch.split(x, p.batch_size), torch.split(y, p.batch_size), strict=False))
        dead_parts: list[Tensor] = []
        for xb, yb in progress(pairs, desc=f"{variant.name}: input gradients", total=len(pairs)):
            grad = input_gradient(source, xb.to(where), yb.to(where)).flatten(1)
            dead_parts.append((~torch.isfinite(grad).all(1)) | (grad.abs().amax(1) == 0))
        res.add("zero_or_nan_gradient_share", float(torch.cat(dead_parts).cpu().double().mean()))

        failed = [c for c in checks if not c["passed"] and c["verdict"] == "gradient masking"]
        unconverged = [c for c in checks if not c["passed"] and c["verdict"] == "attack not converged"]
        res.add("masking_checks_failed", len(failed))
        res.add("gradient_masking", float(bool(failed)))
        res.add("attack_not_converged", float(bool(unconverged)))
        res.tables["masking_checks"] = checks
        if unconverged:
            # a sound model under a too-short attack: its robust accuracy is overstated, but nothing
            # about the model's gradients is wrong, so this is its own verdict, not gradient masking
            res.warn(
                "attack_not_converged",
                f"{variant.name}: ATTACK NOT CONVERGED - robust accuracy is overstated: "
                + "; ".join(c["detail"] for c in unconverged),
            )
        if failed:
            routes = list(dict.fromkeys(c["route"] for c in failed))
            res.warn(
                "gradient_masking",
                f"{variant.name}: GRADIENT MASKING - its {' and '.join(routes)} robustness is not real "
                f"robustness, by {len(failed)} measured contradiction(s): "
                + "; ".join(f"{c['check']}: {c['detail']}" for c in failed),
                severity=Severity.INVALIDATES,
            )
