"""Explain probe: what compression does to saliency maps — their quality and their drift.

Three seeds look at it: seed 004 (``004_9257ed4b372e5512.txt``) compares the CAMs of a teacher and
its distilled student with Poppi et al.'s metrics over 1000 test samples; seed 003
(``003_7af53373951fb382.txt``) finds that saliency maps move by a mean absolute deviation of about
7.5% after pruning and quantization; seed 000 (``000_a193888e59fb5ab2.txt``, Figure 5) shows CAMs
(guided backprop) of the baseline and every compressed VGG-6 side by side.

For each saliency method (:data:`compaudit.explain.saliency.SALIENCY`; default ``gradcam``,
``guided_gradcam``, ``cam``) the probe computes the maps of the variant on a fixed, stratified subset
of the **test** split (``samples``, drawn from the run's seed: the same images for every variant;
the whole split when it is smaller), normalises each to ``[0, 1]`` at the input resolution, and
reports, each with the params ``method`` and ``layer`` (what the method read: the conv layer, the
GAP module whose input CAM reads, or ``input``), as **fractions** (0..1; the report shows percent):

- Poppi et al. 2021 (:mod:`compaudit.explain.metrics`): ``average_drop``, ``increase_in_confidence``,
  ``coherency`` (Pearson), ``coherency_ssim`` (SSIM, as seed 004 reported it), ``complexity``,
  ``adcc`` (per image, then averaged). Confidences are softmax probabilities of the model **as it
  ships** (``variant.inference_model``), the model in eval mode;
- drift against the baseline's maps of the same method, images and classes (non-baseline variants):
  ``saliency_mad`` (mean absolute deviation), ``saliency_spearman`` (rank correlation),
  ``saliency_topk_iou`` (IoU of the top ``topk`` share of pixels; param ``k``);
- with each of these means (all are means of per-image values), its percentile bootstrap interval
  over the images: ``<metric>_ci_low`` / ``<metric>_ci_high`` with the param ``level`` (``bootstrap``
  resamples, 1000 by default, at ``level`` 0.95; seeded from the run's seed, the variant, the method
  and the metric; a few milliseconds per metric). What a comparison of two variants' means needs.

The class explained (``target``) is by default each model's **predicted** class (the argmax of the
model as it ships), as seed 004 shows its CAMs ("the CAM of the image for the predicted class for
that model", §4) and as Poppi et al.'s reference code scores them: the class whose map is drawn is
the class whose probability is read on the image (``Y_c``) and on the image ⊙ map (``O_c``), and
whose map of the image ⊙ map Coherency compares. Drift then compares each model's explanation of
its own decision, so a sample whose prediction changed counts as drift too (the classes probe
counts those flips). ``target: label`` explains the true label instead, so that every variant
explains the same class of the same image.

Int8 variants: the deployed int8 model has no gradient, so its maps come from ``variant.surrogate``
(the calibrated fake-quant model that rounds where the int8 kernels round, with straight-through
gradients), while ``Y_c`` and ``O_c`` of Average Drop come from the deployed int8 model. Such a
variant gets the metric ``surrogate = 1`` (else 0) and a row in the ``notes`` table.

CAM needs a global-average-pooling + one linear layer head (``resnet*``, ``wrn``, ``student_cnn``,
``mobile_cnn``) or a conv classifier head (``squeezenet1_0``, ``squeezenet1_1``: the class map
itself); on other models (``vgg6``, ``cnn8``, ``lenet5``, ``vgg16`` and their ablations) the method
is skipped for that variant with a row in ``notes`` (``{"method", "note"}``), which is not a
failure. ``layer`` names the conv layer of the Grad-CAM family (default: the last conv whose output
is spatial, not SqueezeNet's class conv; see :mod:`compaudit.explain.layers`); it is not passed to
the methods that read no layer.

Tables: ``grid`` — one row per method and each of the first ``grid`` samples of the subset (the same
for every variant): ``method``, ``index`` (row of the test split), ``label``, ``image`` and
``overlay`` (the normalised map in the ``jet`` colormap blended over the image, alpha 0.5): PNG
data URIs about 64 pixels wide; ``layer``. ``notes`` — what was skipped or substituted, and why.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from compaudit.data.base import ArrayDataset, sample_indices
from compaudit.errors import ProbeError
from compaudit.explain.layers import NotApplicableError
from compaudit.explain.metrics import (
    adcc,
    average_drop,
    coherency,
    complexity,
    increase_in_confidence,
    mean_absolute_deviation,
    nanmean,
    pearson,
    spearman,
    ssim,
    topk_iou,
)
from compaudit.explain.saliency import SALIENCY, SaliencyMethod, normalize
from compaudit.imaging import to_png_data_uri
from compaudit.inference import eval_mode
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams
from compaudit.probes.views import explain as views_explain
from compaudit.progress import progress
from compaudit.results import MetricSpec, ProbeResult, Role, View, summary
from compaudit.runtime import derive_seed
from compaudit.stats import bootstrap_ci
from compaudit.variant import Variant

#: edge of the grid's PNGs, in pixels (images are enlarged by an integer factor or shrunk to it)
THUMBNAIL = 64
#: SSIM's Gaussian window is 11 pixels wide
SSIM_MIN_SIZE = 11
#: the means reported with bootstrap intervals, by unit
_FRACTION_MEANS = (
    "average_drop",
    "increase_in_confidence",
    "coherency",
    "complexity",
    "adcc",
    "saliency_mad",
    "saliency_topk_iou",
)
_SCORE_MEANS = ("coherency_ssim", "saliency_spearman")


class ExplainParams(ProbeParams):
    methods: list[str] = Field(
        default_factory=lambda: ["gradcam", "guided_gradcam", "cam"],
        min_length=1,
        description="saliency methods (compaudit.explain.saliency.SALIENCY)",
    )
    layer: str | None = Field(
        default=None, description="conv layer of the Grad-CAM family (default: the last spatial conv)"
    )
    samples: int = Field(default=1000, ge=1, description="test images (a fixed stratified subset)")
    target: Literal["label", "predicted"] = Field(
        default="predicted",
        description="class explained: each model's prediction (seed 004, Poppi et al.), or the true label",
    )
    grid: int = Field(default=6, ge=0, le=64, description="samples shown in the report's map grid")
    topk: float = Field(default=0.1, gt=0.0, le=1.0, description="share of pixels of the top-k IoU")
    batch_size: int = Field(default=64, ge=1)
    bootstrap: int = Field(
        default=1000, ge=0, description="resamples of the bootstrap intervals of the means; 0 disables them"
    )
    level: float = Field(default=0.95, gt=0.0, lt=1.0, description="level of the bootstrap intervals")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in SALIENCY:
                raise ValueError(f"unknown saliency method {name!r}; choose from: {', '.join(SALIENCY)}")
        if len(set(v)) != len(v):
            raise ValueError("a method is listed twice")
        return v


@dataclass(frozen=True)
class _Subset:
    """The explained images: rows of the test split, images, labels."""

    index: Tensor
    x: Tensor
    y: Tensor


@dataclass(frozen=True)
class _Maps:
    """Normalised maps of one model and method on the subset, and what the method read."""

    maps: Tensor
    layer: str


@PROBES.register("explain")
class Explain(Probe[ExplainParams]):
    """Saliency maps (CAM, Grad-CAM, ...): quality (Poppi et al.: ADCC) and drift from the baseline."""

    #: its part of the report (:mod:`compaudit.probes.views.explain`)
    section = staticmethod(views_explain.section)

    Params: ClassVar[type[ProbeParams]] = ExplainParams
    #: 2: the class explained is by default each model's prediction (was: the true label);
    #: 3: bootstrap intervals of every mean (``<metric>_ci_low`` / ``<metric>_ci_high``)
    version: ClassVar[int] = 3
    #: Poppi et al.'s metrics are stored on a 0-1 scale (:mod:`compaudit.explain.metrics`) and
    #: reported by them in %: fractions. Average Drop is a relative drop of a probability, Increase
    #: in Confidence the share of images whose probability rose, Complexity the share of the image
    #: a [0, 1] map lights up (its mean), Coherency the Pearson correlation mapped to [0, 1], ADCC
    #: the harmonic mean of three such fractions. SSIM (in [-1, 1], seed 004 prints 0.669) and
    #: Spearman's rank correlation are scores, not shares. MAD is the mean |a - b| of two maps
    #: normalised to [0, 1], a share of the maps' full range (seed 003: "about 7.5%"); the top-k
    #: IoU a share of the union of the two top-k pixel sets.
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("surrogate", "flag", doc="the maps are those of the differentiable surrogate"),
        MetricSpec("average_drop", "fraction", better="low"),
        MetricSpec("increase_in_confidence", "fraction", better="high"),
        MetricSpec("coherency", "fraction", better="high"),
        MetricSpec("coherency_ssim", "score", better="high"),
        MetricSpec("complexity", "fraction", better="low"),
        MetricSpec("adcc", "fraction", better="high", views=(summary("ADCC", method="gradcam"),)),
        MetricSpec(
            "saliency_mad",
            "fraction",
            better="low",
            views=(
                summary("Saliency drift (MAD)", method="gradcam"),
                View(
                    (Role.HEADLINE,),
                    "Explanation drift",
                    prefer={"method": "gradcam"},
                    note="saliency-map mean absolute deviation from the baseline",
                    order=80,
                    key="drift",
                ),
            ),
        ),
        MetricSpec("saliency_spearman", "score", better="high"),
        MetricSpec("saliency_topk_iou", "fraction", better="high"),
        # the bootstrap intervals of the means carry their point estimate's unit
        *(MetricSpec(f"{m}_ci_{end}", "fraction") for m in _FRACTION_MEANS for end in ("low", "high")),
        *(MetricSpec(f"{m}_ci_{end}", "score") for m in _SCORE_MEANS for end in ("low", "high")),
    )

    @property
    def p(self) -> ExplainParams:
        return self.params

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.p
        res = ProbeResult()
        notes: list[dict[str, Any]] = []
        res.tables["notes"] = notes
        subset = self._subset(ctx)
        surrogate = not variant.gradient_path
        res.add("surrogate", 1.0 if surrogate else 0.0)
        if surrogate and variant.surrogate is None:
            msg = f"{variant.name}: the deployed model has no differentiable surrogate; no saliency maps"
            res.warn("no_surrogate", msg)
            notes.append({"method": "all", "note": msg})
            return res
        if surrogate:
            notes.append(
                {
                    "method": "all",
                    "note": f"maps from the surrogate, {variant.surrogate_kind or 'a differentiable model'} "
                    f"(the deployed model, {variant.runtime}, has no gradient); confidences (Average "
                    "Drop, Increase in Confidence) from the deployed model",
                }
            )
        res.measured_on("outputs", ctx.device_for(variant.inference_model))
        res.measured_on("saliency maps", ctx.device_for(self._saliency_model(variant)))
        pred = ctx.predictions(variant, "test")
        if not torch.equal(pred.labels[subset.index], subset.y):
            raise ProbeError(f"{variant.name!r}'s test labels are not the test split's")
        probs = pred.probabilities[subset.index].double()
        target = self._target(variant, ctx, subset)
        rows = torch.arange(len(subset.index))
        y_c = probs[rows, target]
        res.tables["grid"] = grid = []
        for name in p.methods:
            if variant.is_baseline:
                got = self._baseline_maps(ctx, name)
            else:
                got = self._maps_or_note(variant, ctx, name, subset, target)
            if isinstance(got, str):
                notes.append({"method": name, "note": got})
                continue
            self._quality(variant, ctx, name, got, subset, target, y_c, res, notes)
            if not variant.is_baseline:
                base = self._baseline_maps(ctx, name)
                if isinstance(base, str):
                    notes.append({"method": name, "note": f"no drift: the baseline has no {name} maps"})
                else:
                    a, b = got.maps, base.maps
                    self._mean(res, ctx, variant, "saliency_mad", mean_absolute_deviation(a, b), method=name)
                    self._mean(res, ctx, variant, "saliency_spearman", spearman(a, b), method=name)
                    self._mean(
                        res, ctx, variant, "saliency_topk_iou", topk_iou(a, b, p.topk), method=name, k=p.topk
                    )
            grid.extend(self._grid_rows(ctx, name, got, subset))
        return res

    # ------------------------------------------------------------------ the images

    def _subset(self, ctx: ProbeContext) -> _Subset:
        def make() -> _Subset:
            test = ctx.data.test
            n = len(test)  # type: ignore[arg-type]
            if isinstance(test, ArrayDataset):
                labels = test.y
            else:
                rows = progress(range(n), desc="explain: reading test labels", total=n)
                labels = torch.stack([torch.as_tensor(test[i][1]) for i in rows]).long()
            index = sample_indices(labels, self.p.samples, seed=derive_seed(ctx.seed, "explain-subset"))
            if isinstance(test, ArrayDataset):
                x = test.x[index]
            else:
                chosen = progress(index, desc="explain: reading test images", total=len(index))
                x = torch.stack([test[int(i)][0] for i in chosen])
            return _Subset(index, x, labels[index])

        return ctx.shared(f"explain/subset/{self.p.samples}", make)

    def _target(self, variant: Variant, ctx: ProbeContext, subset: _Subset) -> Tensor:
        if self.p.target == "label":
            return subset.y
        return ctx.predictions(variant, "test").predicted[subset.index]

    # ------------------------------------------------------------------ maps

    @staticmethod
    def _saliency_model(variant: Variant) -> nn.Module:
        """The model the maps come from: the surrogate of a variant with a deployed int8 model."""
        if not variant.gradient_path:
            assert variant.surrogate is not None
            return variant.surrogate
        return variant.inference_model

    def _layer(self, method: SaliencyMethod) -> str | None:
        return self.p.layer if method.reads == "conv" else None

    def _explain(
        self,
        model: nn.Module,
        method: SaliencyMethod,
        x: Tensor,
        target: Tensor,
        ctx: ProbeContext,
        desc: str,
    ) -> Tensor:
        """Normalised maps of ``model`` for all of ``x``, in batches (CPU, float32); ``desc`` names
        the step in progress lines."""
        out: list[Tensor] = []
        bs = self.p.batch_size
        device = ctx.device_for(model)
        starts = range(0, len(x), bs)
        for i in progress(starts, desc=desc, total=len(starts)):
            xb, tb = x[i : i + bs].to(device), target[i : i + bs].to(device)
            out.append(method.explain(model, xb, tb, layer=self._layer(method)))
        return normalize(torch.cat(out)).cpu()

    def _maps_or_note(
        self, variant: Variant, ctx: ProbeContext, name: str, subset: _Subset, target: Tensor
    ) -> _Maps | str:
        method = SALIENCY.get(name)(name)
        model = self._saliency_model(variant)
        try:
            layer = method.where(model, subset.x[:1].to(ctx.device_for(model)), self._layer(method))
        except NotApplicableError as exc:
            return f"skipped: {exc}"
        maps = self._explain(model, method, subset.x, target, ctx, f"{variant.name}: {name}")
        return _Maps(maps, layer)

    def _baseline_maps(self, ctx: ProbeContext, name: str) -> _Maps | str:
        """The baseline's maps of ``name`` on the subset, computed once per run."""
        p = self.p
        key = f"explain/baseline-maps/{name}/{p.layer}/{p.target}/{p.samples}"
        subset = self._subset(ctx)
        return ctx.shared(
            key,
            lambda: self._maps_or_note(
                ctx.baseline, ctx, name, subset, self._target(ctx.baseline, ctx, subset)
            ),
        )

    # ------------------------------------------------------------------ quality

    def _quality(
        self,
        variant: Variant,
        ctx: ProbeContext,
        name: str,
        got: _Maps,
        subset: _Subset,
        target: Tensor,
        y_c: Tensor,
        res: ProbeResult,
        notes: list[dict[str, Any]],
    ) -> None:
        """Poppi et al.'s metrics of the maps ``got`` (see the module docstring)."""
        maps = got.maps
        lo, _ = ctx.data.bounds
        masked = lo + (subset.x - lo) * maps[:, None]  # the image ⊙ map (``lo`` where the map is 0)
        o_c = self._probability(variant, masked, target, ctx, f"{variant.name}: {name} masked confidence")
        method = SALIENCY.get(name)(name)
        model = self._saliency_model(variant)
        again = self._explain(model, method, masked, target, ctx, f"{variant.name}: {name} on masked images")
        drop = average_drop(y_c, o_c)
        coh = coherency(maps, again)
        comp = complexity(maps)
        params: dict[str, Any] = {"method": name, "layer": got.layer}
        self._mean(res, ctx, variant, "average_drop", drop, **params)
        self._mean(res, ctx, variant, "increase_in_confidence", increase_in_confidence(y_c, o_c), **params)
        self._mean(res, ctx, variant, "coherency", coh, **params)
        h, w = maps.shape[1:]
        if min(h, w) >= SSIM_MIN_SIZE:
            self._mean(res, ctx, variant, "coherency_ssim", ssim(maps, again), **params)
        else:
            notes.append({"method": name, "note": f"no coherency_ssim: {h}x{w} maps, SSIM needs 11x11"})
        self._mean(res, ctx, variant, "complexity", comp, **params)
        self._mean(res, ctx, variant, "adcc", adcc(drop, coh, comp), **params)
        constant = int(torch.isnan(pearson(maps, again)).sum())
        if constant:
            notes.append(
                {
                    "method": name,
                    "note": f"{constant} of {len(coh)} samples have a constant map (of the image or of "
                    "the image ⊙ map): coherency and ADCC 0 there, as the ADCC reference code scores them",
                }
            )

    def _mean(
        self,
        res: ProbeResult,
        ctx: ProbeContext,
        variant: Variant,
        metric: str,
        values: Tensor,
        **params: Any,
    ) -> None:
        """Add ``metric``, the mean of the per-sample ``values`` (NaN dropped), and unless
        ``bootstrap`` is 0 its percentile bootstrap interval over the samples
        (:func:`compaudit.stats.bootstrap_ci`), ``<metric>_ci_low`` / ``<metric>_ci_high`` with the
        param ``level``, seeded from the run's seed, the variant, the method and the metric."""
        p = self.p
        res.add(metric, nanmean(values), **params)
        if p.bootstrap == 0:
            return
        seed = derive_seed(ctx.seed, "explain-bootstrap", variant.key, str(params.get("method")), metric)
        per_sample = values.detach().double().cpu().numpy()
        lo, hi = bootstrap_ci(per_sample, resamples=p.bootstrap, level=p.level, seed=seed)
        res.add(f"{metric}_ci_low", lo, level=p.level, **params)
        res.add(f"{metric}_ci_high", hi, level=p.level, **params)

    def _probability(
        self, variant: Variant, x: Tensor, target: Tensor, ctx: ProbeContext, desc: str
    ) -> Tensor:
        """Softmax probability of ``target`` under the model as it ships, for every image of ``x``."""
        model = variant.inference_model
        device = ctx.device_for(model)
        out: list[Tensor] = []
        bs = self.p.batch_size
        starts = range(0, len(x), bs)
        with eval_mode(model), torch.no_grad():
            for i in progress(starts, desc=desc, total=len(starts)):
                logits = model(x[i : i + bs].to(device)).double()
                tb = target[i : i + bs, None].to(device)
                out.append(torch.softmax(logits, dim=1).gather(1, tb).squeeze(1))
        return torch.cat(out).cpu()

    # ------------------------------------------------------------------ the report's grid

    def _grid_rows(self, ctx: ProbeContext, name: str, got: _Maps, subset: _Subset) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for i in range(min(self.p.grid, len(subset.index))):
            image, heat = _thumbnail(subset.x[i], got.maps[i])
            scale = max(1, THUMBNAIL // max(image.shape[1:]))
            rows.append(
                {
                    "method": name,
                    "index": int(subset.index[i]),
                    "label": ctx.data.classes[int(subset.y[i])],
                    "image": to_png_data_uri(image, ctx.data.bounds, scale),
                    "overlay": overlay_png_data_uri(image, heat, ctx.data.bounds, scale),
                    "layer": got.layer,
                }
            )
        return rows


def _thumbnail(image: Tensor, heat: Tensor) -> tuple[Tensor, Tensor]:
    """The image ``(C, H, W)`` and its map ``(H, W)`` shrunk (area average) to at most
    :data:`THUMBNAIL` pixels on the long side; smaller ones are left as they are."""
    h, w = image.shape[1:]
    if max(h, w) <= THUMBNAIL:
        return image, heat
    size = (max(1, round(h * THUMBNAIL / max(h, w))), max(1, round(w * THUMBNAIL / max(h, w))))
    small = F.interpolate(image[None], size=size, mode="area")[0]
    return small, F.interpolate(heat[None, None], size=size, mode="area")[0, 0]


def overlay_png_data_uri(
    image: Tensor, heat: Tensor, bounds: tuple[float, float] = (0.0, 1.0), scale: int = 1, alpha: float = 0.5
) -> str:
    """``data:image/png`` URI of the map ``heat`` (``(H, W)`` in ``[0, 1]``) in the ``jet`` colormap
    blended (``alpha``) over ``image`` (``(C, H, W)``; grey when it has not 3 channels), enlarged
    ``scale`` times (nearest)."""
    from matplotlib import colormaps
    from PIL import Image

    lo, hi = bounds
    img = ((image.detach().cpu().double() - lo) / (hi - lo)).clamp(0.0, 1.0).numpy()
    rgb = img.transpose(1, 2, 0) if img.shape[0] == 3 else np.repeat(img.mean(axis=0)[..., None], 3, axis=2)
    colours = colormaps["jet"](heat.detach().cpu().double().clamp(0.0, 1.0).numpy())[..., :3]
    blend = (1.0 - alpha) * rgb + alpha * colours
    pil = Image.fromarray(np.ascontiguousarray(np.rint(blend * 255.0).astype(np.uint8)))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
