"""Saliency maps: one abstract base, one registry (:data:`SALIENCY`), one entry point (:func:`explain`).

``explain(model, x, target, method=NAME, layer=None)`` returns one map per sample, shape ``(N, H, W)``
at the **input** resolution, float32, non-negative, for the classes ``target`` (class indices,
shape ``(N,)``); the class score is the logit (pre-softmax), as in Grad-CAM. Methods:

==================  ============================================================================  ========
name                what                                                                          code
==================  ============================================================================  ========
``cam``             Zhou et al. 2016: ``ReLU(sum_k w_ck A_k)``, ``A`` the feature map entering a  ours
                    global-average-pooling + one linear layer head, ``w_c`` that layer's weights
                    for class ``c`` (read as the gradient of the class score with respect to the
                    pooled features: the same numbers for a float head, and for a fake-quant head
                    the weights it actually multiplies by). A conv classifier head (SqueezeNet:
                    class conv, ReLU, global average pooling) is its own CAM: ``ReLU(A_c)``, ``A``
                    the class map entering the pooling, whose spatial mean is the logit of ``c``.
                    Other heads: :class:`NotApplicableError`
``gradcam``         Selvaraju et al.: ``ReLU(sum_k mean_ij(dy_c/dA_kij) A_k)`` at a conv layer    ours [1]_
``gradcam_pp``      Chattopadhay et al. 2018 (Grad-CAM++), the closed form of pytorch-grad-cam:   ours
                    ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3)``, ``w_k = sum_ij alpha ReLU(g)``
``guided_backprop`` Springenberg et al.: input gradient with negative gradients zeroed at every   Captum
                    ReLU (``captum.attr.GuidedBackprop``; see below for fused ReLUs)
``guided_gradcam``  guided backprop x the upsampled Grad-CAM map (Selvaraju et al.)               ours [2]_
``gradient``        Simonyan et al.: ``|dy_c/dx|`` (``captum.attr.Saliency``)                     Captum
==================  ============================================================================  ========

.. [1] One forward pass and one ``autograd.grad`` from the class scores down to the layer only,
   for the whole batch; equal to ``captum.attr.LayerGradCam(relu_attributions=True)`` to 1e-5
   (``tests/test_saliency.py``), and cheaper than a plain forward + input-gradient backward pass
   (``bench/explain.py``, ``gradcam_cost_ratio``).
.. [2] Our Grad-CAM times Captum's guided backprop; equal to ``captum.attr.GuidedGradCam`` with
   bilinear interpolation to 1e-5 (Captum's class swallows interpolation errors into an empty
   tensor, which is why it is not called directly).

Layer maps (CAM, Grad-CAM, Grad-CAM++) are upsampled to the input size bilinearly
(``align_corners=False``); input attributions of shape ``(N, C, H, W)`` (guided backprop, Guided
Grad-CAM, gradient) are reduced over the channels by the **maximum absolute value** (Simonyan et
al.'s choice), so every method returns a non-negative ``(N, H, W)`` map.

Where each method reads the model (:attr:`SaliencyMethod.reads`, see :mod:`compaudit.explain.layers`):
the Grad-CAM family reads a conv layer, by default the last ``Conv2d`` the forward pass calls whose
output is spatial (not the class conv of a conv classifier head; a fire module's concatenation where
that conv's output is concatenated), or the module named by ``layer`` (e.g. ``features.3.0``); CAM
reads the input of the GAP head; guided backprop and the gradient read the input and take no layer.

Guided backprop in int8 fake-quant surrogates: PyTorch's fused QAT modules (``ConvBnReLU2d``,
``ConvReLU2d``, ``LinearReLU``, ...) apply their ReLU as a function, which Captum's hooks on
``nn.ReLU`` modules never see; :func:`explain` also clamps the gradient arriving at the output of
each such module to ``>= 0``, which is exactly Captum's rule at a ReLU (``ReLU(grad) * [z > 0]``).

The caller's model is left as it was (DESIGN: "leave the caller's model as you found it"): it runs
in eval mode throughout (dropout off, batch norm on running statistics: seed 004's code computed
its CAM metrics in train mode) and every module's own train/eval flag is restored afterwards; the
parameters' ``requires_grad`` flags are switched off while the maps are computed (only activations
and inputs need gradients) and restored; no ``.grad`` is written to any parameter; every hook the
computation registered (ours and Captum's) is removed, also on error.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compaudit.errors import ProbeError
from compaudit.explain.layers import NotApplicableError, Site, Trace, conv_layer, gap_head, trace_calls
from compaudit.inference import frozen
from compaudit.registry import Registry

__all__ = ["SALIENCY", "NotApplicableError", "SaliencyMethod", "explain", "normalize", "pristine"]

#: the hook dictionaries of :class:`torch.nn.Module` that :func:`pristine` restores
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@contextmanager
def pristine(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode with gradients enabled (also inside ``torch.no_grad`` or
    ``torch.inference_mode``) and its parameters' ``requires_grad`` off; afterwards restore every
    module's train/eval flag, every parameter's ``requires_grad`` and ``.grad``, and remove every
    hook registered meanwhile."""
    hooks = [(m, {a: set(getattr(m, a)) for a in _HOOK_DICTS if hasattr(m, a)}) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        with frozen(model), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, before in hooks:
            for attr, keys in before.items():
                d = getattr(m, attr)
                for k in [k for k in d if k not in keys]:
                    del d[k]
        for p, grad in grads:
            p.grad = grad


def normalize(maps: Tensor) -> Tensor:
    """Each map of ``maps`` (shape ``(N, H, W)``) min-max scaled to ``[0, 1]``; a constant map
    becomes all zeros. float32."""
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {tuple(maps.shape)}")
    flat = maps.detach().float().flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1.0), 0.0)
    return out.view_as(maps).clamp_(0.0, 1.0)


class SaliencyMethod(ABC):
    """Base of every saliency method. Subclasses set :attr:`reads` and override :meth:`_attribute`.

    :meth:`explain` does the validation and the bookkeeping: it checks the inputs, finds the site
    the method reads, keeps the model pristine (:func:`pristine`), and turns what
    :meth:`_attribute` returns into non-negative float32 maps at the input resolution.
    """

    #: where the method reads the model: ``conv`` (a conv layer: automatic or named), ``gap`` (the
    #: feature map entering a global-average-pooling + linear head) or ``input`` (no layer)
    reads: ClassVar[Literal["conv", "gap", "input"]] = "conv"

    def __init__(self, name: str) -> None:
        self.name = name

    def explain(self, model: nn.Module, x: Tensor, target: Tensor, *, layer: str | None = None) -> Tensor:
        """Maps of shape ``(N, H, W)`` for the classes ``target`` (see the module docstring)."""
        x, target = self._check(x, target, layer)
        with pristine(model):
            trace = trace_calls(model, x[:1], grad=True)
            self._check_target(target, trace[1])
            if not trace[1].requires_grad:
                raise ProbeError(self._no_gradient(model))
            site = self._site(model, x, layer, trace)
            try:
                maps = self._attribute(model, x, target, site)
            except ProbeError:
                raise
            except RuntimeError as exc:
                if "does not require grad" in str(exc) or "not have been used in the graph" in str(exc):
                    raise ProbeError(self._no_gradient(model)) from None
                raise
        return self._finish(maps.detach(), x)

    def where(self, model: nn.Module, x: Tensor, layer: str | None = None) -> str:
        """The name of what the method reads in ``model``: the conv layer (Grad-CAM family), the
        GAP module whose input CAM reads, or ``input``."""
        if self.reads != "conv" and layer is not None:
            raise ProbeError(self._no_layer())
        with pristine(model):
            site = self._site(model, x[:1], layer, trace_calls(model, x[:1]))
        return site.name if site is not None else "input"

    @abstractmethod
    def _attribute(self, model: nn.Module, x: Tensor, target: Tensor, site: Site | None) -> Tensor:
        """Maps of ``model`` (eval mode, parameters frozen, gradients on) for the classes ``target``:
        ``(N, h, w)`` layer maps (upsampled by the caller) or ``(N, C, H, W)`` input attributions
        (reduced over channels by max-abs). ``site`` is the layer (``reads == "conv"``), the GAP
        module (``"gap"``) or ``None`` (``"input"``)."""

    # ------------------------------------------------------------------ bookkeeping

    def _no_gradient(self, model: nn.Module) -> str:
        return (
            f"{self.name}: {type(model).__name__} has no gradient path from its input to its outputs "
            "(a deployed int8 model? explain its differentiable surrogate)"
        )

    def _no_layer(self) -> str:
        what = "the input of the model's global-average-pooling head" if self.reads == "gap" else "the input"
        return f"{self.name} reads {what}; it takes no layer"

    def _check(self, x: Tensor, target: Tensor, layer: str | None) -> tuple[Tensor, Tensor]:
        if self.reads != "conv" and layer is not None:
            raise ProbeError(self._no_layer())
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ProbeError(f"{self.name}: x must be a float tensor of shape (N, C, H, W)")
        target = torch.as_tensor(target)
        if target.shape != (x.shape[0],) or target.is_floating_point() or target.dtype == torch.bool:
            raise ProbeError(
                f"{self.name}: target must be {x.shape[0]} class indices (shape ({x.shape[0]},)), "
                f"got shape {tuple(target.shape)} of {target.dtype}"
            )
        with torch.inference_mode(False):
            return x.detach().clone(), target.detach().to(device=x.device, dtype=torch.long).clone()

    @staticmethod
    def _check_target(target: Tensor, out: Tensor) -> None:
        k = out.shape[-1] if out.ndim == 2 else 0
        if out.ndim != 2 or (target.numel() and (int(target.min()) < 0 or int(target.max()) >= k)):
            raise ProbeError(
                f"target classes must be in 0..{k - 1} (the model outputs {tuple(out.shape[1:])} scores)"
            )

    def _site(self, model: nn.Module, x: Tensor, layer: str | None, trace: Trace) -> Site | None:
        if self.reads == "conv":
            return conv_layer(model, x[:1], layer, trace=trace)
        if self.reads == "gap":
            return gap_head(model, x[:1], trace=trace)
        return None

    def _finish(self, maps: Tensor, x: Tensor) -> Tensor:
        if maps.ndim == 4:
            if maps.shape != x.shape:
                raise ProbeError(f"{self.name} returned {tuple(maps.shape)} for inputs {tuple(x.shape)}")
            maps = maps.abs().amax(dim=1)
        if maps.ndim != 3 or maps.shape[0] != x.shape[0]:
            raise ProbeError(f"{self.name} returned maps of shape {tuple(maps.shape)}")
        maps = upsample(maps, (int(x.shape[2]), int(x.shape[3])))
        return torch.nan_to_num(maps.float(), nan=0.0).clamp_(min=0.0).contiguous()


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, h, w)`` maps resized to ``size`` bilinearly (``align_corners=False``, like Captum's
    ``LayerAttribution.interpolate``); unchanged when already that size."""
    if tuple(maps.shape[1:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


#: every saliency method by name; a module of :mod:`compaudit.explain` or a ``compaudit.saliency``
#: entry point registers its methods when imported
SALIENCY: Registry[type[SaliencyMethod]] = Registry(
    "saliency method", error=ProbeError, package="compaudit.explain", entry_point_group="compaudit.saliency"
)


def explain(model: nn.Module, x: Tensor, target: Tensor, *, method: str, layer: str | None = None) -> Tensor:
    """Saliency maps of ``model`` for ``x`` (``(N, C, H, W)``) and the classes ``target`` (``(N,)``):
    ``(N, H, W)``, float32, non-negative, at the input resolution. ``method`` is a name of
    :data:`SALIENCY`; ``layer`` names the conv layer of the Grad-CAM family (default: the last conv
    with a spatial output). The model is left exactly as it was."""
    return SALIENCY.get(method)(method).explain(model, x, target, layer=layer)


# ---------------------------------------------------------------- shared mechanisms


def _scores(logits: Tensor, target: Tensor) -> Tensor:
    """The sum over the batch of each sample's target logit (each sample's gradient is its own)."""
    return logits.gather(1, target[:, None]).sum()


def _layer_and_grad(model: nn.Module, x: Tensor, target: Tensor, site: Site) -> tuple[Tensor, Tensor]:
    """The output ``A`` of ``site`` and ``d score / dA``: one forward pass that starts the graph at
    ``A`` (nothing before it is recorded) and one ``autograd.grad`` down to ``A`` only."""
    seen: list[Tensor] = []

    def hook(_module: nn.Module, _args: Any, out: Any) -> Tensor:
        if not isinstance(out, Tensor) or out.ndim != 4:
            raise ProbeError(f"layer {site.name!r} does not output a (N, C, H, W) tensor")
        a = out.detach().requires_grad_(True)
        seen.append(a)
        return a

    handle = site.module.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ProbeError(f"layer {site.name!r} ran {len(seen)} times in one forward pass")
    (grad,) = torch.autograd.grad(_scores(logits, target), seen[0])
    return seen[0].detach(), grad


def _gradcam(model: nn.Module, x: Tensor, target: Tensor, site: Site) -> Tensor:
    a, g = _layer_and_grad(model, x, target, site)
    weights = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(dim=1))


@contextmanager
def _guided_fused_relus(model: nn.Module) -> Iterator[None]:
    """Guided-backprop rule for the functional ReLU inside PyTorch's fused QAT modules."""
    from torch.ao.nn.intrinsic import qat as nniqat

    names = ("ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "ConvBnReLU1d", "ConvBnReLU2d", "ConvBnReLU3d")
    kinds = tuple(getattr(nniqat, n) for n in (*names, "LinearReLU") if hasattr(nniqat, n))

    def hook(_module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(F.relu)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _guided_backprop(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    from captum.attr import GuidedBackprop

    with _guided_fused_relus(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        out = GuidedBackprop(model).attribute(x.requires_grad_(True), target=target)
    assert isinstance(out, Tensor)
    return out


# ---------------------------------------------------------------- the methods


@SALIENCY.register("cam")
class CAM(SaliencyMethod):
    """Class activation map (Zhou et al. 2016): fc weights x the feature map entering a GAP head;
    for a conv classifier head, the class map entering its global average pooling."""

    reads: ClassVar[Literal["conv", "gap", "input"]] = "gap"

    def _attribute(self, model: nn.Module, x: Tensor, target: Tensor, site: Site | None) -> Tensor:
        assert site is not None
        if site.head == "conv":
            return self._class_map(model, x, target, site)
        seen: list[tuple[Tensor, Tensor]] = []

        def hook(_module: nn.Module, args: Any, out: Any) -> Tensor:
            pooled: Tensor = out.detach().requires_grad_(True)
            seen.append((args[0].detach(), pooled))
            return pooled

        handle = site.module.register_forward_hook(hook)
        try:
            logits = model(x)
        finally:
            handle.remove()
        (features, pooled) = seen[0]
        # the weights of the linear head for each sample's class: d score / d pooled features
        (weights,) = torch.autograd.grad(_scores(logits, target), pooled)
        return F.relu((weights.view(*weights.shape[:2], 1, 1) * features).sum(dim=1))

    @staticmethod
    def _class_map(model: nn.Module, x: Tensor, target: Tensor, site: Site) -> Tensor:
        """Conv classifier head: channel ``target[n]`` of the class map entering the global
        pooling, for each sample ``n`` (no gradient needed: the logit is that map's mean)."""
        seen: list[Tensor] = []

        def hook(_module: nn.Module, args: Any, _out: Any) -> None:
            seen.append(args[0].detach())

        handle = site.module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                model(x)
        finally:
            handle.remove()
        if len(seen) != 1 or seen[0].ndim != 4:
            raise ProbeError(f"cam: the head's pooling {site.name!r} did not receive one (N, C, H, W) map")
        maps = seen[0]
        return F.relu(maps[torch.arange(len(target), device=maps.device), target])


@SALIENCY.register("gradcam")
class GradCAM(SaliencyMethod):
    """Grad-CAM (Selvaraju et al.): channel weights = spatial mean of the class-score gradient."""

    def _attribute(self, model: nn.Module, x: Tensor, target: Tensor, site: Site | None) -> Tensor:
        assert site is not None
        return _gradcam(model, x, target, site)


@SALIENCY.register("gradcam_pp")
class GradCAMPlusPlus(SaliencyMethod):
    """Grad-CAM++ (Chattopadhay et al. 2018): weights from positive gradients, closed-form alphas."""

    def _attribute(self, model: nn.Module, x: Tensor, target: Tensor, site: Site | None) -> Tensor:
        assert site is not None
        a, g = _layer_and_grad(model, x, target, site)
        g2 = g * g
        g3 = g2 * g
        alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3 + 1e-7)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
        return F.relu((weights * a).sum(dim=1))


@SALIENCY.register("guided_backprop")
class GuidedBackpropMethod(SaliencyMethod):
    """Guided backpropagation (Springenberg et al.; Captum), channels reduced by max-abs."""

    reads: ClassVar[Literal["conv", "gap", "input"]] = "input"

    def _attribute(self, model: nn.Module, x: Tensor, target: Tensor, site: Site | None) -> Tensor:
        return _guided_backprop(model, x, target)


@SALIENCY.register("guided_gradcam")
class GuidedGradCAM(SaliencyMethod):
    """Guided Grad-CAM: guided backprop x upsampled Grad-CAM (Selvaraju et al.)."""

    def _attribute(self, model: nn.Module, x: Tensor, target: Tensor, site: Site | None) -> Tensor:
        assert site is not None
        cam = upsample(_gradcam(model, x, target, site), (int(x.shape[2]), int(x.shape[3])))
        return _guided_backprop(model, x, target) * cam[:, None]


@SALIENCY.register("gradient")
class Gradient(SaliencyMethod):
    """Vanilla gradient saliency (Simonyan et al.; Captum): |d score / d input|, max over channels."""

    reads: ClassVar[Literal["conv", "gap", "input"]] = "input"

    def _attribute(self, model: nn.Module, x: Tensor, target: Tensor, site: Site | None) -> Tensor:
        from captum.attr import Saliency

        out = Saliency(model).attribute(x.requires_grad_(True), target=target, abs=True)
        assert isinstance(out, Tensor)
        return out
