"""Simulated ("fake") k-bit quantization with straight-through gradients: the mechanism behind
``quantize_kbit`` and ``qat`` (the methods themselves live in :mod:`compaudit.compress.quantize`).

A quantized layer is an ordinary :class:`torch.nn.Conv2d` / :class:`torch.nn.Linear` subclass
(:class:`QuantConv2d`, :class:`QuantLinear`) that keeps its float ("latent") weights and, in every
forward pass, uses their quantized-then-dequantized values instead; optionally its *input* is
fake-quantized too (activation quantization at layer inputs, so both operands of every
multiply-accumulate are k-bit, as in integer inference). Rounding has no useful derivative, so
gradients pass *straight through* it (``q(x).detach() + (x - x.detach())``, Bengio et al. 2013): the
quantized model is differentiable, can be fine-tuned (quantization-aware training) and attacked
with gradients. Activations outside their calibrated range are clipped and get zero gradient
(the clipped straight-through estimator of Jacob et al. 2018).

Weight schemes (:class:`WeightQuantizer`):

- ``symmetric`` (seed 002, ``002_ac3fedcbc364a839.txt``, §3.2, exactly as printed):
  ``s = (beta - alpha) / (2^k - 1)`` with ``-alpha = beta = max|w|``, i.e. ``s = 2 max|w| / (2^k - 1)``;
  zero point 0; ``q = clamp(round(w / s), -2^(k-1), 2^(k-1) - 1)`` (the k-bit integers), ``w' = s q``;
  per tensor or per output channel. This is also the scale of the NNI quantizers the paper used and
  of PyTorch's symmetric qint8 observers (``max|w| / ((qmax - qmin) / 2)``), so the 8-bit simulation
  computes with the weights of ``quantize_int8``'s int8 kernels. ``±max|w|`` sit half-way between
  two codes (``±(2^k - 1) / 2`` steps from 0): a positive extreme rounds to ``2^(k-1) - 1`` (the code
  ``2^(k-1)`` it may round to does not exist: clipped), a negative one to ``-2^(k-1)`` or
  ``-2^(k-1) + 1`` — half a step off either way (a third of ``max|w|`` at 2 bits). Zero stays
  exactly zero, so pruned weights stay pruned. **At 1 bit** the formula rounds every weight to 0
  or ``-s``, so 1-bit weights are *binarized* instead (a deviation):
  ``w' = mean|w| * sign(w)`` (XNOR-Net style, per tensor or per output channel), with ``sign(0) = +1``
  so a layer has exactly two values.
- ``minmax`` (seed 000, ``000_a193888e59fb5ab2.txt``, Algorithm 1): per layer, asymmetric to
  ``[0, 2^k - 1]``: ``sigma = (wMax - wMin) / (2^k - 1)``, ``mu = (0 - wMin) / sigma`` (not rounded,
  as printed), ``q = clamp(round(w / sigma + mu), 0, 2^k - 1)``, ``w' = (q - mu) sigma``. The
  printed algorithm omits the ``* sigma`` of the dequantization and divides ``w + mu`` by sigma;
  this is the reading under which quantize-then-dequantize is the identity on the grid. ``wMin`` and
  ``wMax`` are exactly representable; 0 generally is not, so pruned zeros move to the nearest level.

Activations (:class:`ActivationQuantizer`, seed 002): asymmetric, ``[lo, hi]`` calibrated by
min-max over training batches (the range always contains 0), integer zero point,
``2^k`` levels. The ranges are buffers (``lo``, ``hi``): they are saved with the state dict and
fixed after calibration; fine-tuning (QAT) trains the weights, not the ranges.

Batch normalisation is left in float and is not folded into the weights: the simulation quantizes
what the convolution multiplies, not what an integer kernel would store after folding.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from itertools import islice
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compaudit.data.base import DataBundle, batches
from compaudit.data.base import num_batches as count_batches
from compaudit.inference import Reused, eval_mode, tensor_versions
from compaudit.progress import progress

WeightScheme = Literal["symmetric", "minmax"]


def _ste(x: Tensor, q: Tensor) -> Tensor:
    """Exactly ``q`` in the forward pass, the identity's gradient in the backward pass (the usual
    ``x + (q - x).detach()`` is ``q`` only up to a rounding error; ``x - x.detach()`` is exactly 0)."""
    return q.detach() + (x - x.detach())


def _channel_view(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (one value per output channel) shaped to broadcast over a weight ``like``."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def quantize_symmetric(w: Tensor, bits: int, *, per_channel: bool = False) -> Tensor:
    """Symmetric uniform quantize-dequantize of ``w`` to ``bits`` (>= 2), straight-through: seed
    002's ``s = 2 max|w| / (2^bits - 1)``, codes ``-2^(bits-1)..2^(bits-1) - 1``, zero point 0.

    ``bits == 1`` binarizes instead (see :func:`binarize`)."""
    if bits == 1:
        return binarize(w, per_channel=per_channel)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    with torch.no_grad():
        if per_channel:
            amax = _channel_view(w.detach().abs().flatten(1).amax(dim=1), w)
        else:
            amax = w.detach().abs().amax()
        scale = torch.clamp(2.0 * amax / (2**bits - 1), min=torch.finfo(w.dtype).tiny)
        q = torch.clamp(torch.round(w / scale), qmin, qmax) * scale
    return _ste(w, q)


def binarize(w: Tensor, *, per_channel: bool = False) -> Tensor:
    """1-bit weights: ``mean|w| * sign(w)`` with ``sign(0) = +1`` (two values per tensor, or per
    output channel), straight-through."""
    with torch.no_grad():
        if per_channel:
            alpha = _channel_view(w.detach().abs().flatten(1).mean(dim=1), w)
        else:
            alpha = w.detach().abs().mean()
        q = torch.where(w >= 0, alpha, -alpha)
    return _ste(w, q)


def quantize_minmax(w: Tensor, bits: int) -> Tensor:
    """Seed 000's Algorithm 1: asymmetric per-layer min-max quantize-dequantize to ``[0, 2^k - 1]``,
    straight-through."""
    qmax = 2**bits - 1
    with torch.no_grad():
        w_min, w_max = w.detach().min(), w.detach().max()
        sigma = torch.clamp((w_max - w_min) / qmax, min=torch.finfo(w.dtype).tiny)
        mu = (0 - w_min) / sigma
        q = torch.clamp(torch.round(w / sigma + mu), 0, qmax)
        deq = q * sigma + w_min  # = (q - mu) * sigma, with wMin exact in floating point
    return _ste(w, deq)


def _affine_levels(x: Tensor, lo: Tensor, hi: Tensor, scale: Tensor, zero_point: Tensor, qmax: int) -> Tensor:
    """``x`` clipped to ``[lo, hi]``, rounded to its level and dequantized (a new tensor)."""
    out = torch.clamp(x, lo, hi)  # the same values as torch.minimum(torch.maximum(x, lo), hi)
    return out.div_(scale).round_().add_(zero_point).clamp_(0, qmax).sub_(zero_point).mul_(scale)


class _AffineFakeQuant(torch.autograd.Function):
    """:func:`quantize_affine` with a gradient, in one node: the forward values and the input
    gradient of ``_ste(minimum(maximum(x, lo), hi), levels)`` bit for bit (the gradient of
    ``maximum``/``minimum`` halves at a tie, and ``x == lo`` is common: ReLU outputs are exactly
    0 = lo), with 7 passes over the activations forward and 4 (plus 6 over 1-byte masks) backward
    instead of about 10 and 10: a VGG-6 with 8-bit activations takes a forward and backward pass
    at batch 24 in 52 ms instead of 58 (2 cores)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        lo: Tensor,
        hi: Tensor,
        scale: Tensor,
        zero_point: Tensor,
        qmax: int,
    ) -> Tensor:
        ctx.save_for_backward(x, lo, hi)
        return _affine_levels(x, lo, hi, scale, zero_point, qmax)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: Tensor) -> tuple[Tensor | None, ...]:
        x, lo, hi = ctx.saved_tensors  # type: ignore[attr-defined]
        # maximum(x, lo) passes g/2 at x == lo, 0 below; minimum(., hi) g/2 at the tie, 0 above.
        # lo <= 0 <= hi, so both ties meet only when lo == hi: (g/2)/2 there. NaN passes g.
        tie = g * 0.5
        tie.mul_(torch.where(lo < hi, 1.0, 0.5))
        outside = (x < lo).logical_or_(x > hi)
        on_edge = (x == lo).logical_or_(x == hi)
        grad = torch.where(on_edge, tie, g).masked_fill_(outside, 0.0)
        return grad, None, None, None, None, None


def quantize_affine(x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    """Asymmetric quantize-dequantize of activations to ``2^bits`` levels over ``[lo, hi]`` with an
    integer zero point; clipped straight-through gradient (zero outside ``[lo, hi]``).

    Without a gradient to ``x`` only the levels are computed; with one, one autograd node
    (:class:`_AffineFakeQuant`) gives the same values and gradient as the composition
    ``_ste(minimum(maximum(x, lo), hi), levels)`` (``tests/test_quantize.py`` holds them equal).
    ``lo`` and ``hi`` get no gradient: the ranges are calibrated, not trained."""
    qmax = 2**bits - 1
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=torch.finfo(x.dtype).tiny)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _affine_levels(x, lo, hi, scale, zero_point, qmax)
    out: Tensor = _AffineFakeQuant.apply(x, lo, hi, scale, zero_point, qmax)  # type: ignore[no-untyped-call]
    return out


#: per weight quantizer, the weight tensor it last quantized with no gradient to it, and the result
_REUSED: weakref.WeakKeyDictionary[nn.Module, tuple[weakref.ref[Tensor], Reused]] = (
    weakref.WeakKeyDictionary()
)


class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight tensor; has no state (the scale follows the weights).

    When no gradient flows to the weights (an attack, saliency or prediction: no grad mode, or
    weights that do not require one), the result is computed once per weight values and reused
    until the weights change (another tensor, or an in-place change such as an optimiser step):
    the same values, without re-quantizing millions of weights at every forward pass (VGG-6's
    first fully connected layer alone has 2-4 M). The reused tensor is shared: do not modify it
    in place. With a gradient to the weights (QAT, fine-tuning) it is recomputed on every call.
    """

    def __init__(self, bits: int, scheme: WeightScheme = "symmetric", *, per_channel: bool = False) -> None:
        super().__init__()
        if not 1 <= bits <= 16:
            raise ValueError(f"weight bits must be in 1..16, got {bits}")
        if scheme == "minmax" and per_channel:
            raise ValueError("the minmax scheme (seed 000, Algorithm 1) is per layer")
        self.bits = bits
        self.scheme: WeightScheme = scheme
        self.per_channel = per_channel

    def quantize(self, w: Tensor) -> Tensor:
        """The fake-quantized ``w``, computed now (straight-through gradient to ``w``)."""
        if self.scheme == "minmax":
            return quantize_minmax(w, self.bits)
        return quantize_symmetric(w, self.bits, per_channel=self.per_channel)

    def forward(self, w: Tensor) -> Tensor:
        if torch.is_grad_enabled() and w.requires_grad:
            return self.quantize(w)
        hit = _REUSED.get(self)
        if hit is None or hit[0]() is not w:  # another tensor (its storage may be a freed one's)
            hit = _REUSED[self] = (weakref.ref(w), Reused())
        key = tensor_versions([w])
        settings = (self.bits, self.scheme, self.per_channel)
        return hit[1].get(None if key is None else (*key, *settings), lambda: self.quantize(w))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scheme={self.scheme}, per_channel={self.per_channel}"


class ActivationQuantizer(nn.Module):
    """Fake-quantizes activations to ``bits`` over the calibrated range ``[lo, hi]`` (buffers).

    While ``observing`` is set it passes its input through unchanged and widens ``[lo, hi]`` to
    cover it (min-max calibration on float activations); otherwise the range is fixed.
    """

    lo: Tensor
    hi: Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 1 <= bits <= 16:
            raise ValueError(f"activation bits must be in 1..16, got {bits}")
        self.bits = bits
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.observing = False

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            with torch.no_grad():
                self.lo.copy_(torch.minimum(self.lo, x.detach().min()))
                self.hi.copy_(torch.maximum(self.hi, x.detach().max()))
            return x
        return quantize_affine(x, self.lo, self.hi, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, range=[{float(self.lo):.4g}, {float(self.hi):.4g}]"


class QuantConv2d(nn.Conv2d):
    """A :class:`~torch.nn.Conv2d` that multiplies fake-quantized inputs by fake-quantized weights.

    Same parameters (and state-dict keys) as the convolution it replaces, plus the activation
    range buffers of ``input_quantizer`` when activations are quantized.
    """

    weight_quantizer: WeightQuantizer
    input_quantizer: nn.Module

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, weight_quantizer: WeightQuantizer, input_quantizer: nn.Module | None = None
    ) -> QuantConv2d:
        """Wrap ``conv``'s own parameters (shared, not copied)."""
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        q.weight = conv.weight
        q.bias = conv.bias
        q.weight_quantizer = weight_quantizer
        q.input_quantizer = input_quantizer if input_quantizer is not None else nn.Identity()
        q.train(conv.training)
        return q

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self._conv_forward(
            self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias
        )
        return out


class QuantLinear(nn.Linear):
    """A :class:`~torch.nn.Linear` on fake-quantized inputs and weights (see :class:`QuantConv2d`)."""

    weight_quantizer: WeightQuantizer
    input_quantizer: nn.Module

    @classmethod
    def from_float(
        cls, linear: nn.Linear, weight_quantizer: WeightQuantizer, input_quantizer: nn.Module | None = None
    ) -> QuantLinear:
        """Wrap ``linear``'s own parameters (shared, not copied)."""
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        q.weight = linear.weight
        q.bias = linear.bias
        q.weight_quantizer = weight_quantizer
        q.input_quantizer = input_quantizer if input_quantizer is not None else nn.Identity()
        q.train(linear.training)
        return q

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
        return out


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The fake-quantized layers of ``model``, by name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)]


def _weighted_but_unsupported(module: nn.Module) -> bool:
    """A layer with a weight that multiplies inputs but is not a plain Conv2d/Linear."""
    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag)
    return isinstance(module, kinds) and type(module) not in (nn.Conv2d, nn.Linear)


def quantize_layers(
    model: nn.Module,
    *,
    weight_quantizer: Callable[[], WeightQuantizer],
    act_bits: int | None,
    unsupported: Callable[[str, nn.Module], None],
) -> nn.Module:
    """Replace every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` (in place) by its fake-quantized
    counterpart; call ``unsupported(name, module)`` for other weighted layers (Conv1d/3d,
    transposed convolutions, embeddings, ...), which stay float. Returns the model (a new root
    only when the root itself is a layer)."""
    swaps: list[tuple[str, nn.Module]] = []

    def activation_quantizer(layer: nn.Module) -> ActivationQuantizer | None:
        # its range buffers live where the layer's weights do (the run's device): calibration and
        # every forward pass then stay on that device
        if act_bits is None:
            return None
        weight = layer.weight
        assert isinstance(weight, Tensor)
        return ActivationQuantizer(act_bits).to(weight.device)

    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            swaps.append(
                (name, QuantConv2d.from_float(module, weight_quantizer(), activation_quantizer(module)))
            )
        elif type(module) is nn.Linear:
            swaps.append(
                (name, QuantLinear.from_float(module, weight_quantizer(), activation_quantizer(module)))
            )
        elif _weighted_but_unsupported(module):
            unsupported(name or type(module).__name__, module)
    for name, new in swaps:
        if not name:
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


def calibrate_activations(
    model: nn.Module,
    data: DataBundle,
    *,
    num_batches: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    desc: str = "calibration",
) -> int:
    """Min-max calibrate every :class:`ActivationQuantizer` of ``model`` on ``num_batches``
    training batches of ``batch_size``, drawn in an order fixed by ``seed``; in eval mode (batch
    norm uses its running statistics) and on float activations. Returns the batches used.
    ``desc`` names the step in progress lines."""
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    if not quantizers:
        return 0
    used = 0
    gen = torch.Generator().manual_seed(seed)
    for q in quantizers:
        q.lo.zero_()
        q.hi.zero_()
        q.observing = True
    try:
        with eval_mode(model), torch.no_grad():
            drawn = batches(data.train, batch_size, shuffle=True, generator=gen, device=device)
            total = min(num_batches, count_batches(data.train, batch_size))
            for xb, _ in progress(islice(drawn, num_batches), desc=desc, total=total):
                model(xb)
                used += 1
    finally:
        for q in quantizers:
            q.observing = False
    return used
