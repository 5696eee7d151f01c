"""Efficiency probe: parameters, non-zero parameters, bytes of the saved file, MACs, and median
latency over repeated runs at each batch size, measured on the model as deployed, on the device it
runs on: the run's device, or the CPU for an int8 model (whose kernels are CPU kernels) also under
``device: cuda``. The result's ``measured_on`` table names it (``latency``).

``sparsity`` and ``nonzero_params`` count the conv and linear weights the variant **computes with**
(:func:`computed_weight_zeros`): a deployed int8 model's integers against their zero point, a
fake-quantized layer's dequantized weights, else the float weights. Min-max (asymmetric) quantization
generally has no code for 0 (seed 000's Algorithm 1), so a pruned-then-min-max-quantized model
computes with (almost) no zero weight: its sparsity is about 0, not the pruning's. Symmetric and int8
quantization keep 0 on the grid (and may round tiny weights to it).

A runtime's model (ONNX Runtime, OpenVINO: :mod:`compaudit.compress.runtime`) declares the size of
the file(s) it loads and its weights as that file stores them, and is timed in the runtime with the
threads the torch models are timed with; every latency row names its ``runtime``."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from compaudit.compress.fakequant import QuantConv2d, QuantLinear
from compaudit.compress.runtime import RuntimeModel
from compaudit.inference import eval_mode
from compaudit.probes.base import PROBES, Probe, ProbeContext, ProbeParams
from compaudit.progress import progress
from compaudit.results import MetricSpec, ProbeResult, Role, View, summary
from compaudit.serialize import saved_size
from compaudit.variant import Variant


class EfficiencyParams(ProbeParams):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
    repeats: int = Field(default=30, ge=1, description="timed runs per batch size; the median is reported")
    warmup: int = Field(default=3, ge=0)
    threads: int | None = Field(
        default=None, ge=1, description="torch threads while timing (default: as set)"
    )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters), counting each shared tensor once."""
    seen: set[int] = set()
    total = nonzero = 0
    for t in model.parameters():
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel()
        nonzero += int(torch.count_nonzero(t.detach()))
    return total, nonzero


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example``: the products of every convolution
    and linear layer. Bias additions, normalisation, activations and pooling are not counted (they
    are not multiply-accumulates; Torch-Pruning's op counter adds them, inflating the figure)."""
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            # every input element is multiplied by a (out_channels / groups) x kernel block
            per_input = module.out_channels // module.groups * math.prod(module.kernel_size)
            total += args[0].numel() * per_input
        elif isinstance(module, nn.modules.conv._ConvNd):
            # every output element is a dot product of (in_channels / groups) x kernel terms
            total += out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    kinds = (nn.modules.conv._ConvNd, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with eval_mode(model), torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA and MPS run asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_latency_ms(
    model: nn.Module,
    example: torch.Tensor,
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    desc: str = "latency",
) -> float:
    """Median wall time of one forward pass, in milliseconds. Progress (``desc``) is reported
    between the timed runs, never inside one. A runtime's model is timed with its idle threads
    spinning between calls, as in a deployment that runs only it (elsewhere in an audit they do
    not: :mod:`compaudit.compress.runtime`)."""
    times: list[float] = []
    runs = range(warmup + repeats)
    timing = model.timing() if isinstance(model, RuntimeModel) else contextlib.nullcontext()
    with torch.inference_mode(), timing:
        for i in progress(runs, desc=desc, total=len(runs)):
            synchronize(device)
            t0 = time.perf_counter()
            model(example)
            synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def weight_sparsity(model: nn.Module) -> tuple[float, int]:
    """Measured share of exactly-zero weights over every conv and linear weight, and their count
    (the float tensors as stored; :func:`computed_weight_zeros` counts what a model computes with)."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            w = m.weight.detach()
            total += w.numel()
            zeros += int((w == 0).sum())
    return (zeros / total if total else 0.0), total


def _int_zeros(w: torch.Tensor) -> int:
    """Elements of the quantized tensor ``w`` whose integer equals their zero point (they stand for 0)."""
    if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        zero: torch.Tensor | int = int(w.q_zero_point())
    else:
        shape = [1] * w.ndim
        shape[w.q_per_channel_axis()] = -1
        zero = w.q_per_channel_zero_points().reshape(shape)
    return int((w.int_repr().long() == zero).sum())


def computed_weight_zeros(model: nn.Module) -> tuple[int, int]:
    """(zero weights, weights) over every conv and linear weight **as** ``model`` **computes with
    it**: a deployed int8 model's int8 weights (0 where the integer equals its zero point), a
    fake-quantized layer's quantized-then-dequantized weights (min-max quantization moves a pruned
    0 off its grid, to a non-zero value), a float layer's own weights."""
    from torch.ao.nn import quantized as nnq

    root = model
    total = zeros = 0
    with torch.no_grad():
        for m in root.modules():
            if isinstance(m, nnq.modules.conv._ConvNd | nnq.Linear):
                w = m.weight()  # type: ignore[operator]  # int8 modules unpack it on call
                total += w.numel()
                zeros += _int_zeros(w) if w.is_quantized else int((w == 0).sum())
            elif isinstance(m, QuantConv2d | QuantLinear):
                w = m.weight_quantizer(m.weight)
                total += w.numel()
                zeros += int((w == 0).sum())
            elif isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
                total += m.weight.numel()
                zeros += int((m.weight == 0).sum())
    return zeros, total


def packed_bytes(model: nn.Module, bits: float) -> int:
    """Bytes the weights would take packed at ``bits`` per conv/linear weight, other tensors float32:
    the size a simulated k-bit model would have with real low-bit storage."""
    _, n_weights = weight_sparsity(model)
    others = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()) - n_weights
    return int(math.ceil(n_weights * bits / 8)) + 4 * max(int(others), 0)


def _file_bytes(model: nn.Module) -> int | None:
    """The size of the file(s) a runtime's model loads, when it declares them (``file_bytes()``,
    :class:`compaudit.compress.runtime.RuntimeModel`); None: a torch model, sized by its state dict."""
    size = getattr(model, "file_bytes", None)
    return int(size()) if callable(size) else None


def _weight_zeros(variant: Variant) -> tuple[int, int]:
    """(zero, total) conv/linear weights the variant computes with: a runtime's model counts them
    in its own file (``weight_zeros()``), a torch model in its layers."""
    declared = getattr(variant.inference_model, "weight_zeros", None)
    if callable(declared):
        zeros, total = declared()
        return int(zeros), int(total)
    return computed_weight_zeros(variant.layers)


@PROBES.register("efficiency")
class Efficiency(Probe[EfficiencyParams]):
    """Parameters, sparsity, bits, file size (dense, sparse), MACs and median latency per batch size."""

    Params: ClassVar[type[ProbeParams]] = EfficiencyParams
    #: 2: MACs count only the products of conv and linear layers; 3: sparsity over conv/linear
    #: weights, bits, sparse and packed sizes; 4: sparsity and non-zero parameters of the weights the
    #: variant computes with (its int8 or fake-quant weights)
    version: ClassVar[int] = 4
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("params", "params", better="low", views=(summary("Parameters"),)),
        MetricSpec("nonzero_params", "params", better="low", views=(summary("Non-zero parameters"),)),
        MetricSpec(
            "sparsity",
            "fraction",
            doc="the share of exactly-zero conv/linear weights",
            views=(summary("Sparsity"),),
        ),
        MetricSpec("bits", "bits", views=(summary("Bits"),)),
        MetricSpec(
            "file_bytes",
            "bytes",
            better="low",
            views=(
                summary("File size"),
                View(
                    (Role.HEADLINE, Role.PARETO),
                    "Size",
                    min_of=("sparse_file_bytes", "packed_bytes"),
                    note="smallest of the dense file, the sparse file and the packed size",
                    order=10,
                    key="size",
                    axis="size",
                ),
            ),
        ),
        MetricSpec("sparse_file_bytes", "bytes", better="low", views=(summary("Sparse file"),)),
        MetricSpec("packed_bytes", "bytes", better="low"),
        MetricSpec("macs", "MACs", better="low", views=(summary("MACs"),)),
        MetricSpec(
            "latency",
            "ms",
            better="low",
            noisy=True,
            doc="median wall time of one forward pass of a batch",
            views=(
                summary("Latency b=1", batch_size=1),
                summary("Latency b=64", batch_size=64),
                View(
                    (Role.HEADLINE, Role.PARETO),
                    "Latency",
                    smallest="batch_size",
                    note="median, smallest batch size measured (wall-clock)",
                    order=20,
                    key="latency",
                    front=False,
                    axis="latency",
                ),
            ),
        ),
    )

    def _measure(self, variant: Variant, ctx: ProbeContext) -> ProbeResult:
        p = self.params
        res = ProbeResult()
        deployed = variant.inference_model
        total, nonzero = count_parameters(variant.model)
        # the conv/linear weights count as the variant computes with them (its int8 or fake-quant
        # weights), not as the float tensors underneath
        stored_sparsity, stored_n = weight_sparsity(variant.model)
        zeros, n_weights = _weight_zeros(variant)
        nonzero += round(stored_sparsity * stored_n) - zeros
        sparsity = zeros / n_weights if n_weights else 0.0
        bits = float(variant.bits) if variant.bits is not None else 32.0
        res.add("params", total)
        res.add("nonzero_params", nonzero)
        res.add("sparsity", sparsity)
        res.add("bits", bits)
        shipped = _file_bytes(deployed)
        res.add("file_bytes", shipped if shipped is not None else saved_size(deployed.state_dict()))
        if sparsity > 0.0 and shipped is None:
            res.add("sparse_file_bytes", saved_size(deployed.state_dict(), sparse=True))
        if variant.simulated and variant.bits is not None:
            res.add("packed_bytes", packed_bytes(variant.model, bits), simulated=True)
            res.warn(
                "simulated_quantization",
                f"{variant.name}: {bits:g}-bit quantization is simulated (fake-quant in float32); its file "
                "size and latency are those of the float model, packed_bytes is the size with real "
                f"{bits:g}-bit storage",
            )
        c, h, w = ctx.data.input_shape
        gen = torch.Generator().manual_seed(ctx.seed)
        lo, hi = ctx.data.bounds
        one = (lo + (hi - lo) * torch.rand(1, c, h, w, generator=gen)).to(ctx.device_for(variant.model))
        res.add("macs", count_macs(variant.model, one))
        where = ctx.device_for(deployed)  # int8: the CPU, whatever the run's device
        old_threads = torch.get_num_threads()
        if p.threads is not None:
            torch.set_num_threads(p.threads)
        try:
            for bs in p.batch_sizes:
                x = (lo + (hi - lo) * torch.rand(bs, c, h, w, generator=gen)).to(where)
                ms = median_latency_ms(
                    deployed,
                    x,
                    repeats=p.repeats,
                    warmup=p.warmup,
                    device=where,
                    desc=f"{variant.name}: latency b={bs}",
                )
                res.add(
                    "latency",
                    ms,
                    noisy=True,
                    batch_size=bs,
                    threads=torch.get_num_threads(),
                    model="deployed" if variant.deployed is not None else "float",
                    runtime=variant.runtime,
                )
        finally:
            torch.set_num_threads(old_threads)
        res.measured_on("latency", where)
        return res
