"""Embedding probe: does compression keep the classes apart in feature space?

Seed 000 (``000_a193888e59fb5ab2.txt``, §IV-C1 and Fig. 2) draws t-SNE maps of the first
fully-connected layer of every compressed VGG and reads off them that "no compression method does
worse than the baseline" and that the quantized model "shows the most distinct clusters". Seed 002
(``002_ac3fedcbc364a839.txt``, §6, Fig. 2 and A.2: scikit-learn t-SNE, perplexity 30, flattened
features of the last three layers) embeds clean and PGD-attacked images together and sees the
clusters of standard models scatter under attack while robust ones hold.

This probe draws the same maps and measures what the papers only looked at, per layer, on a fixed
stratified subset of the test split (the same images for every variant), with
:mod:`compaudit.explain.embedding`:

- ``silhouette`` (Rousseeuw 1987) of the classes in the t-SNE map, and ``silhouette_features`` in
  the features themselves (Euclidean) — the map's number depends on t-SNE's settings, the features'
  does not;
- ``knn_accuracy_embedding`` / ``knn_accuracy_features``: out-of-fold accuracy of a k-nearest-
  neighbour classifier (``k`` = 5; stratified 5-fold cross-validation, shuffled with a seed derived
  from the run's), i.e. how often a point's neighbours share its class;
- ``silhouette_ci_low`` / ``silhouette_ci_high`` and ``silhouette_features_ci_low`` / ``_ci_high``
  (param ``level``, 0.95 by default): bootstrap intervals of the two silhouettes, the points (with
  adversarial inputs, each image's two points together) resampled ``bootstrap`` times (200) and the
  silhouette recomputed on the fixed map and features
  (:func:`compaudit.stats.silhouette_bootstrap_ci`; seeded from the run's seed, the variant and the
  layer). What separates two variants' silhouettes from noise; about 0.3 s per silhouette for a
  thousand points on one CPU thread (0.1 s for 359);
- ``trustworthiness`` (Venna & Kaski 2001) of the map with the same ``k``: whether the clusters
  one sees are there in the features (1: no neighbour in the map is an intruder from far away);
- with ``adversarial: true`` (seed 002): PGD (L-inf ``eps``, ``steps`` steps of eps/4, random
  start seeded per run) crafted white-box on the variant's differentiable model — its fake-quant
  surrogate for an int8 variant (BPDA) — and the clean and adversarial versions embedded together:
  the metrics again (``inputs: clean+adversarial``; adversarial points carry their true class, and
  the k-NN folds keep both versions of an image together so none is classified by its own twin),
  ``adversarial_knn_accuracy_features`` (a k-NN fitted on the clean features classifying the
  adversarial ones: 1 when attacked images stay among their class, low when they move into other
  classes' regions) and ``adversarial_accuracy`` (the variant's accuracy on those inputs, to read
  the rest against).

Every metric but ``surrogate`` and ``adversarial_accuracy`` has params ``layer`` and ``inputs``
(``clean`` — always measured on its own t-SNE map — or ``clean+adversarial``). Layers: see
:data:`compaudit.explain.embedding.LAYER_ALIASES` (``penultimate``, ``first_fc``, ``logits``,
``last3``) or any module name. Features of an int8 variant are read from the deployed int8 model
(its FX graph; ``surrogate`` = 0); those of an ONNX Runtime variant (``onnx``, ``onnx_int8``, a
``deployed_file`` .onnx exported with PyTorch's dynamo exporter) from ONNX Runtime's own
intermediate values, under the float model's layer names (the runtime model's ``feature_graph``,
:mod:`compaudit.compress.onnx_features`; ``surrogate`` = 0; a layer the runtime computes no value
for, such as a linear layer's output whose ReLU int8 quantization folded away, is skipped with a
note); only a deployed model that cannot be hooked or mapped (OpenVINO, a file without the
exporter's metadata) is replaced by the surrogate (``surrogate`` = 1). A layer a variant lacks
(a module name on a distilled student, a ReLU fused away by int8 conversion, ``last3[1]`` on a
model with one linear layer) is skipped for that variant with a row in the ``notes`` table; a
module name the baseline lacks is an error.

Cost: the t-SNE maps (about 1 s per layer for a thousand points on one CPU thread) and, with
``adversarial``, the PGD steps (a forward and a backward pass of every sample per step), which
dominate on a CPU: VGG-6 on the demo's 359 digits takes about 1 s per variant for one layer and
about 8 s with ``adversarial``.

Tables: ``tsne`` — up to ``plot_points`` rows per layer (``layer``, ``inputs``, ``index`` in the
test split, ``x``, ``y``, ``label``: class name, ``adversarial``), the same images for every variant;
with ``adversarial`` they are the joint map's points (each image's clean and adversarial point),
otherwise the clean map's. ``notes`` — ``layer``, ``note`` for skipped layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field, field_validator
from torch import Tensor, nn

from compaudit.attacks import ATTACKS
from compaudit.data.base import ArrayDataset, sample_indices
from compaudit.errors import ProbeError
from compaudit.explain.embedding import (
    MIN_POINTS,
    LayerPlan,
    Tap,
    is_alias,
    knn_transfer_accuracy,
    plan_layers,
    read_features,
    structure_metrics,
    tsne,
    unknown_layer_message,
)
from compaudit.inference import predict
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams
from compaudit.probes.views import embedding as views_embedding
from compaudit.progress import progress, stage
from compaudit.results import MetricSpec, ProbeResult, summary
from compaudit.runtime import derive_seed
from compaudit.stats import silhouette_bootstrap_ci
from compaudit.variant import Variant

#: images a runtime's feature graph is checked on against the surrogate (see :func:`feature_model`)
FEATURE_CHECK = 8

#: the silhouettes reported with bootstrap intervals (``<name>_ci_low`` / ``_ci_high``, param ``level``)
SILHOUETTES = ("silhouette", "silhouette_features")


class EmbeddingParams(ProbeParams):
    layers: list[str] = Field(
        default_factory=lambda: ["penultimate"],
        min_length=1,
        description="aliases (penultimate, first_fc, logits, last3) or module names",
    )
    samples: int = Field(default=1000, ge=10, description="test images embedded (a fixed stratified subset)")
    adversarial: bool = Field(
        default=False, description="also embed PGD versions of the same images (seed 002)"
    )
    eps: float = Field(default=0.1, gt=0.0, description="L-inf radius of the PGD attack")
    steps: int = Field(default=10, ge=1, description="PGD steps (step size eps/4)")
    k: int = Field(default=5, ge=1, description="neighbours of the k-NN accuracies and trustworthiness")
    perplexity: float = Field(default=30.0, gt=0.0, description="t-SNE perplexity (clipped to (N-1)/3)")
    plot_points: int = Field(default=500, ge=0, description="points per layer kept for the report's plot")
    batch_size: int = Field(default=256, ge=1)
    bootstrap: int = Field(
        default=200, ge=0, description="resamples of the silhouettes' bootstrap intervals; 0 disables them"
    )
    level: float = Field(default=0.95, gt=0.0, lt=1.0, description="level of the bootstrap intervals")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip():
                raise ValueError("a layer name is empty")
        if len(set(v)) != len(v):
            raise ValueError("a layer is listed twice")
        return v


def feature_model(variant: Variant, example: Tensor | None = None) -> tuple[nn.Module, bool]:
    """The model whose features are read, and whether it is the surrogate: the deployed model
    when it can be hooked (the float model when there is none); else the module a runtime's model
    offers for it (``feature_graph(reference, example)``: the float model's module tree whose
    modules see the runtime's own values, checked on the inputs ``example``; ONNX Runtime's
    models, :mod:`compaudit.compress.onnx_features`) when it offers one for this surrogate;
    else the surrogate."""
    deployed = variant.deployed
    if deployed is None:
        return variant.model, False
    if variant.graph is not None or variant.surrogate is None:
        return variant.layers, False
    offered = getattr(deployed, "feature_graph", None)
    if callable(offered) and example is not None:
        graph: nn.Module | None = offered(variant.surrogate, example)
        if graph is not None:
            return graph, False
    return variant.surrogate, True


def readable(plan: LayerPlan, model: nn.Module) -> LayerPlan:
    """``plan`` without the taps ``model`` declares it cannot read (``unread_layers``: (module,
    side) → why; a runtime's feature graph, whose runtime computes no value for them): they are
    missing, with that reason."""
    unread = getattr(model, "unread_layers", None)
    if not unread:
        return plan
    out = LayerPlan(missing=dict(plan.missing))
    for label, tap in plan.taps.items():
        why = unread.get((tap.module, tap.side))
        if why is None:
            out.taps[label] = tap
        else:
            out.missing[label] = why
    return out


@PROBES.register("embedding")
class Embedding(Probe[EmbeddingParams]):
    """t-SNE maps of a layer's features and how well classes separate there (silhouette, k-NN)."""

    #: its part of the report (:mod:`compaudit.probes.views.embedding`)
    section = staticmethod(views_embedding.section)

    Params: ClassVar[type[ProbeParams]] = EmbeddingParams
    #: 2: bootstrap intervals of the silhouettes (``silhouette_ci_low`` / ``_ci_high``, ...)
    version: ClassVar[int] = 2
    #: silhouettes lie in [-1, 1] and trustworthiness is a rank-based score in [0, 1] (neither is
    #: a share of anything): scores; k-NN accuracies are shares of points classified correctly
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("surrogate", "flag", doc="the features are those of the differentiable surrogate"),
        MetricSpec("adversarial_accuracy", "fraction", better="high"),
        MetricSpec(
            "silhouette",
            "score",
            better="high",
            views=(summary("Silhouette (t-SNE)", layer="penultimate", inputs="clean"),),
        ),
        MetricSpec("silhouette_features", "score", better="high"),
        MetricSpec("knn_accuracy_embedding", "fraction", better="high"),
        MetricSpec(
            "knn_accuracy_features",
            "fraction",
            better="high",
            views=(summary("k-NN acc (features)", layer="penultimate", inputs="clean"),),
        ),
        MetricSpec("trustworthiness", "score", better="high"),
        MetricSpec("adversarial_knn_accuracy_features", "fraction", better="high"),
        *(MetricSpec(f"{m}_ci_{end}", "score") for m in SILHOUETTES for end in ("low", "high")),
    )

    @property
    def p(self) -> EmbeddingParams:
        return self.params

    def _subset(self, ctx: ProbeContext) -> Tensor:
        """Positions in the test split of the embedded images (the same for every variant)."""
        test = ctx.data.test
        assert isinstance(test, ArrayDataset)
        n = self.p.samples

        def make() -> Tensor:
            return sample_indices(test.y, n, seed=derive_seed(ctx.seed, "embedding-subset"))

        return ctx.shared(f"embedding/subset/{n}", make)

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.p
        res = ProbeResult()
        test = ctx.data.test
        assert isinstance(test, ArrayDataset)
        idx = self._subset(ctx)
        x, y = test.x[idx], test.y[idx]
        if len(y) < MIN_POINTS:
            raise ProbeError(f"embedding: the test split has {len(y)} images; t-SNE needs {MIN_POINTS}")

        model, on_surrogate = feature_model(variant, x[:FEATURE_CHECK])
        res.measured_on("outputs", ctx.device_for(variant.inference_model))
        res.measured_on("features", ctx.device_for(model))
        plan = readable(plan_layers(model, p.layers, x[:2]), model)
        known = {n for n, _ in ctx.baseline.layers.named_modules()}
        notes: list[dict[str, object]] = []
        for label, why in plan.missing.items():
            if not is_alias(label) and label not in known:
                raise ProbeError(f"embedding: {unknown_layer_message(label, ctx.baseline.model)}")
            notes.append({"layer": label, "note": f"{variant.name}: skipped ({why})"})
        res.tables["notes"] = notes
        res.add("surrogate", float(on_surrogate))

        vname = variant.name
        clean = read_features(model, x, plan, batch_size=p.batch_size, desc=f"{vname}: features")
        adv: dict[str, Tensor] | None = None
        if p.adversarial:
            x_adv = self._attack(variant, ctx, x, y)
            source = variant.surrogate if variant.surrogate is not None else variant.model
            res.measured_on("attack", ctx.device_for(source))
            what = f"pgd eps={p.eps:g}"
            adv = read_features(model, x_adv, plan, batch_size=p.batch_size, desc=f"{vname}: features {what}")
            pred = predict(
                variant.inference_model,
                ArrayDataset(x_adv, y),
                batch_size=p.batch_size,
                device=ctx.device,
                desc=f"{vname}: predict {what}",
            )
            res.add("adversarial_accuracy", pred.accuracy, attack="pgd", eps=p.eps)

        labels = y.numpy()
        shown = min(len(labels), p.plot_points // 2 if p.adversarial else p.plot_points)
        plot: list[int] = (
            sample_indices(y, shown, seed=derive_seed(ctx.seed, "embedding-plot")).tolist() if shown else []
        )
        names = ctx.data.classes
        done: dict[Tap, _Maps] = {}  # aliases of one tap (penultimate = last3[2]) are measured once
        rows: list[dict[str, object]] = []
        for label, tap in plan.taps.items():
            if tap not in done:
                fa = adv[label].numpy() if adv is not None else None
                done[tap] = self._maps(
                    clean[label].numpy(), fa, labels, ctx, f"{vname}: {label}", (variant.key, label)
                )
            maps = done[tap]
            for (key, inputs), value in maps.metrics.items():
                level: dict[str, Any] = {"level": p.level} if key.endswith(("_ci_low", "_ci_high")) else {}
                res.add(key, value, layer=label, inputs=inputs, **level)
            shown_inputs = "clean" if adv is None else "clean+adversarial"
            for i in plot:
                name, at = names[labels[i]], int(idx[i])
                rows.append(_row(label, shown_inputs, at, maps.embedding[i], name, False))
                if adv is not None:
                    rows.append(_row(label, shown_inputs, at, maps.embedding[len(labels) + i], name, True))
        res.tables["tsne"] = rows
        return res

    def _maps(
        self,
        clean: NDArray[Any],
        adv: NDArray[Any] | None,
        labels: NDArray[Any],
        ctx: ProbeContext,
        desc: str,
        key: tuple[str, str],
    ) -> _Maps:
        """The metrics of one layer's features, and the map its plot shows (the joint one with
        adversarial inputs: clean points first, then their adversarial versions). ``desc`` (variant
        and layer) names the steps in progress lines; ``key`` (variant key, layer) seeds the
        bootstrap."""
        p = self.p
        tsne_seed = derive_seed(ctx.seed, "embedding-tsne")
        knn_seed = derive_seed(ctx.seed, "embedding-knn")
        with stage(f"{desc} t-SNE clean"):
            emb = tsne(clean, seed=tsne_seed, perplexity=p.perplexity)
        with stage(f"{desc} metrics clean"):
            got = structure_metrics(clean, emb, labels, k=p.k, seed=knn_seed)
            got.update(self._intervals(clean, emb, labels, None, ctx, (*key, "clean")))
        metrics = {(name, "clean"): value for name, value in got.items()}
        if adv is None:
            return _Maps(metrics, emb)
        n = len(labels)
        joint = np.concatenate([clean, adv])
        with stage(f"{desc} t-SNE clean+adversarial"):
            emb = tsne(joint, seed=tsne_seed, perplexity=p.perplexity)
        groups = np.concatenate([np.arange(n), np.arange(n)])
        both = np.concatenate([labels, labels])
        with stage(f"{desc} metrics clean+adversarial"):
            got = structure_metrics(joint, emb, both, k=p.k, seed=knn_seed, groups=groups)
            got.update(self._intervals(joint, emb, both, groups, ctx, (*key, "clean+adversarial")))
        for name, value in got.items():
            metrics[(name, "clean+adversarial")] = value
        metrics[("adversarial_knn_accuracy_features", "clean+adversarial")] = knn_transfer_accuracy(
            clean, labels, adv, labels, k=p.k
        )
        return _Maps(metrics, emb)

    def _intervals(
        self,
        features: NDArray[Any],
        emb: NDArray[Any],
        labels: NDArray[Any],
        groups: NDArray[Any] | None,
        ctx: ProbeContext,
        key: tuple[str, ...],
    ) -> dict[str, float]:
        """Bootstrap intervals of the two silhouettes (:func:`compaudit.stats.silhouette_bootstrap_ci`:
        the points, or with ``groups`` each image's clean and adversarial points together, resampled
        ``bootstrap`` times; the map is not recomputed), seeded from the run's seed and ``key``
        (variant, layer, inputs)."""
        p = self.p
        out: dict[str, float] = {}
        if p.bootstrap == 0:
            return out
        feats = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        for name, data in zip(SILHOUETTES, (emb, feats), strict=True):
            seed = derive_seed(ctx.seed, "embedding-bootstrap", *key, name)
            lo, hi = silhouette_bootstrap_ci(
                data, labels, groups=groups, resamples=p.bootstrap, level=p.level, seed=seed
            )
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
        return out

    def _attack(self, variant: Variant, ctx: ProbeContext, x: Tensor, y: Tensor) -> Tensor:
        """PGD versions of ``x``, crafted white-box on the variant's differentiable model: the full
        schedule's last iterate (``until="end"``), the loss-maximising image whose features seed 002
        plots, not the first iterate that crosses the boundary."""
        p = self.p
        attack = ATTACKS.get("pgd").from_spec("pgd", {"eps": p.eps, "steps": p.steps})
        source = variant.surrogate if variant.surrogate is not None else variant.model
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "embedding-pgd"))
        device = ctx.device_for(source)
        out = []
        pairs = list(zip(torch.split(x, p.batch_size), torch.split(y, p.batch_size), strict=True))
        desc = f"{variant.name}: pgd eps={p.eps:g}"
        for xb, yb in progress(pairs, desc=desc, total=len(pairs)):
            result = attack.run(
                source, xb.to(device), yb.to(device), bounds=ctx.data.bounds, generator=gen, until="end"
            )
            out.append(result.adv)
        return torch.cat(out).cpu()


@dataclass(frozen=True)
class _Maps:
    """One layer's results: ``metrics`` by (name, inputs), and the map its plot shows."""

    metrics: dict[tuple[str, str], float]
    embedding: NDArray[np.float64]


def _row(
    layer: str, inputs: str, index: int, point: NDArray[np.float64], label: str, adversarial: bool
) -> dict[str, object]:
    return {
        "layer": layer,
        "inputs": inputs,
        "index": index,
        "x": round(float(point[0]), 3),  # a map's coordinates span tens of units: 3 decimals plot exactly
        "y": round(float(point[1]), 3),
        "label": label,
        "adversarial": adversarial,
    }
