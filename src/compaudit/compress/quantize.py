"""Quantization: real int8 kernels (``quantize_int8``), simulated k-bit (``quantize_kbit``) and
quantization-aware training (``qat``).

``quantize_int8`` — post-training static quantization (PTSQ) with PyTorch's built-in int8 kernels,
module fusion and calibration on training data, as seed 001 does (``001_5343f4a55429e52f.txt``,
§3.1.3); also seed 003's PTQ W8A8 (``003_7af53373951fb382.txt``): 8-bit weights (qint8, symmetric,
seed 002's scale ``2 max|w| / 255``) and **8-bit activations** (quint8 over all 256 codes). PyTorch's
own x86/FBGEMM qconfig uses ``reduce_range`` (activations on ``0..127``: 7 bits) because FBGEMM's
kernels on CPUs without VNNI multiply u8 x s8 pairs and add them into int16 with saturation
(``vpmaddubsw``), which 8-bit activations can overflow; with VNNI (``vpdpbusd``, int32 accumulation)
and on oneDNN/QNNPACK nothing overflows. So ``reduce_range`` is a parameter, **false** by default
(W8A8, every activation observer on ``0..255``, also for the layer kinds PyTorch's qconfig mapping
gives its own 7-bit qconfig); on a CPU without VNNI the step logs a warning, and ``reduce_range:
true`` (W8A7: name such a variant so) avoids the overflow. Its result comes in two forms:

- the step's model (``variant.model`` / ``variant.surrogate``) is the calibrated *fake-quant*
  model (FX graph mode, conv+BN(+ReLU) and linear(+ReLU) fused, ``FakeQuantize`` after every
  quantized op): float arithmetic that rounds where int8 inference rounds, with straight-through
  gradients, so white-box attacks and saliency have a gradient that is not masked, and fine-tuning
  it (``finetune:``) is quantization-aware training (weights, their scales and BN statistics train;
  activation ranges stay as calibrated);
- :meth:`QuantizeInt8.deploy` converts a copy to real int8 kernels (``convert_fx``: quint8
  activations, qint8 weights with per-channel scales, BN folded, x86 engine = oneDNN on CPUs with
  VNNI, FBGEMM otherwise) and returns an :class:`Int8Model`: it takes float inputs and returns
  float logits, its ``state_dict`` holds the int8 weights (a quarter of the float file), and it has
  **no gradient path** (the inputs are detached: gradient attacks on it would be gradient masking,
  the mistake of seeds 000 and 001; attack ``variant.surrogate`` instead).

The backend was chosen by measurement (``bench/int8_backends.py``): FX graph-mode int8 run through
a frozen TorchScript trace beat eager-mode PTSQ, plain FX, and torchao's PT2E flow (which needs
``torch.compile`` and a C++ toolchain per input shape, and stores float weights beside int8 ones).

``quantize_kbit`` — simulated k-bit quantization (1..16 bits) of conv and linear layers with
straight-through gradients, schemes ``sym_w_asym_a`` (seed 002, ``002_ac3fedcbc364a839.txt``:
symmetric weights, asymmetric min-max-calibrated activations, the INT16/8/4/2/1 sweep) and
``minmax`` (seed 000, ``000_a193888e59fb5ab2.txt``, Algorithm 1: per-layer min-max 8-bit weights),
and the preset ``w4a8`` (seed 003's W4A8). No low-bit kernels exist here: the model stays float
with rounded values, so its size and latency are *simulated* (:meth:`Method.simulated` is True and
the variant carries it as ``simulated``; the efficiency probe must not report them as measured
savings). See :mod:`compaudit.compress.fakequant`.

``qat`` — quantization-aware training (seed 002): the ``quantize_kbit`` model, calibrated, then
trained with the one training loop so the latent float weights adapt to the rounding.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.fx import GraphModule

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams
from compaudit.compress.fakequant import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
    calibrate_activations,
    quantize_layers,
)
from compaudit.config import TrainSpec
from compaudit.data.base import batches, num_batches
from compaudit.errors import MethodError
from compaudit.progress import progress
from compaudit.variant import Deployment

if TYPE_CHECKING:
    from torch.ao.quantization import FakeQuantizeBase

log = logging.getLogger("compaudit")

# --------------------------------------------------------------------------- int8 (real kernels)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the deprecation notices of ``torch.ao.quantization`` and TorchScript (still the only
    CPU int8 path that needs no compiler in torch 2.13)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*reduce_range.*", category=UserWarning)
        yield


def int8_engine() -> str:
    """The quantized engine used to pack int8 weights: ``x86`` where PyTorch has it (oneDNN on CPUs
    with VNNI, FBGEMM otherwise), else ``qnnpack`` (ARM)."""
    supported = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in supported:
            return engine
    raise MethodError(f"this PyTorch build has no int8 engine (supported: {supported})")


@contextmanager
def _engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def vnni_supported() -> bool:
    """Whether this CPU has VNNI, with which FBGEMM's int8 kernels accumulate u8 x s8 products in
    int32 (without it, in int16 with saturation: 8-bit activations can overflow)."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if callable(check) else False


def _int8_qconfig_mapping(engine: str, *, per_channel: bool, reduce_range: bool) -> Any:
    """PyTorch's default QAT qconfig mapping for ``engine`` with ours as the global qconfig, and our
    activation range also for the layer kinds the default maps to its own 7-bit (``reduce_range``)
    fake-quantizer (transposed convolutions, LayerNorm). Fixed-qparams ops (sigmoid, tanh, ...) and
    shape ops that reuse their input's quantization keep theirs (already 0..255)."""
    from torch.ao.quantization import FakeQuantizeBase, QConfig
    from torch.ao.quantization.qconfig_mapping import get_default_qat_qconfig_mapping

    ours = _int8_qconfig(per_channel=per_channel, reduce_range=reduce_range)
    mapping = get_default_qat_qconfig_mapping(engine).set_global(ours)
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        if qconfig is None:
            continue
        act = qconfig.activation()
        if isinstance(act, FakeQuantizeBase) and getattr(act.activation_post_process, "reduce_range", False):
            mapping.set_object_type(kind, QConfig(activation=ours.activation, weight=qconfig.weight))
    return mapping


def _int8_qconfig(*, per_channel: bool, reduce_range: bool) -> Any:
    from torch.ao.quantization import (
        FakeQuantize,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
    )

    activation = FakeQuantize.with_args(
        observer=MinMaxObserver,
        quant_min=0,
        quant_max=127 if reduce_range else 255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    # averaging_constant=1: the weight scale always follows the current weights (also during QAT)
    if per_channel:
        weight = FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver,
            averaging_constant=1.0,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        )
    else:
        weight = FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            averaging_constant=1.0,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_tensor_symmetric,
        )
    return QConfig(activation=activation, weight=weight)


def _activation_fake_quants(model: nn.Module) -> list[FakeQuantizeBase]:
    from torch.ao.quantization import FakeQuantizeBase

    return [
        m
        for name, m in model.named_modules()
        if isinstance(m, FakeQuantizeBase) and not name.endswith("weight_fake_quant")
    ]


def _already_quantized(model: nn.Module) -> str | None:
    from torch.ao.quantization import FakeQuantizeBase

    for name, m in model.named_modules():
        if isinstance(m, QuantConv2d | QuantLinear | FakeQuantizeBase | ActivationQuantizer):
            return name or type(m).__name__
    return None


def _check_not_quantized(method: str, model: nn.Module) -> None:
    where = _already_quantized(model)
    if where is not None:
        raise MethodError(
            f"{method}: the model is already quantized (layer {where!r}); a chain quantizes once, "
            f"as its last quantization step (fine-tune it with finetune: for quantization-aware training)"
        )


def _example(ctx: CompressContext, batch: int) -> Tensor:
    """A deterministic input batch of the data set's shape, inside its bounds."""
    lo, hi = ctx.data.bounds
    gen = torch.Generator().manual_seed(ctx.seed)
    return lo + (hi - lo) * torch.rand(batch, *ctx.data.input_shape, generator=gen)


class Int8Params(MethodParams):
    calibration_batches: int = Field(default=32, ge=1, description="training batches seen by calibration")
    batch_size: int = Field(default=32, ge=1, description="calibration batch size")
    per_channel: bool = Field(default=True, description="one weight scale per output channel")
    reduce_range: bool = Field(
        default=False,
        description="false: 8-bit activations (W8A8); true: 7-bit (W8A7), which FBGEMM's kernels need "
        "on CPUs without VNNI to avoid overflow (PyTorch's x86 default)",
    )


class Int8Model(nn.Module):
    """A model converted to int8 kernels, as it ships: float inputs in, float logits out.

    ``quantized`` is the converted FX graph (quantized conv/linear modules holding ``torch.qint8``
    weights; its ``state_dict`` is what is saved). Calls are dispatched through a frozen TorchScript
    trace of it, which removes the per-module Python overhead (2x faster at batch size 1 in
    ``bench/int8_backends.py``) and is rebuilt whenever a state dict is loaded; where tracing is not
    possible or changes a single output, the FX graph runs directly.

    Its ``state_dict`` holds tensors only: PyTorch's quantized linear layers save a ``dtype`` and a
    ``(weight, bias)`` tuple, which are stored as ``..._packed_params._packed_params.weight`` /
    ``.bias`` (the dtype is the weight's), so the file loads with ``weights_only=True`` and every
    tool that expects a mapping of tensors (sizes, sparse saving, strict loading) handles it.

    Int8 kernels run on the CPU (``compute_device``): compaudit's probes send its inputs there
    (:func:`compaudit.inference.execution_device`) and record ``cpu`` as the device its numbers
    were measured on, also under ``device: cuda``; inputs that arrive on another device anyway are
    copied to the CPU and the logits back. The inputs are detached first: there is **no gradient
    path** through int8 kernels.
    """

    #: where PyTorch has int8 kernels for it (x86/FBGEMM/QNNPACK engines: the CPU only)
    compute_device: ClassVar[torch.device] = torch.device("cpu")
    _program: nn.Module

    def __init__(self, quantized: nn.Module, example: Tensor) -> None:
        super().__init__()
        self.quantized = quantized
        self.example = example.detach().cpu()
        object.__setattr__(self, "_program", quantized)  # not a submodule: not saved, not moved
        self.compile_program()
        self.register_state_dict_post_hook(_flatten_packed_params)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_unflatten_packed_params)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_post_hook(_recompile_after_load)  # type: ignore[no-untyped-call]

    @property
    def program(self) -> nn.Module:
        """What ``forward`` runs: the frozen TorchScript trace, or the FX graph itself."""
        return self._program

    def compile_program(self) -> None:
        """(Re)build the frozen TorchScript trace of ``quantized``."""
        program: nn.Module = self.quantized
        try:
            # tracer warnings (shape checks turned into constants) are moot: the outputs are compared
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.quantized, (self.example,), check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
                check = torch.cat([self.example, self.example[:1]])  # another batch size
                if torch.equal(frozen(check), self.quantized(check)):
                    program = frozen
                else:
                    log.info("int8: the TorchScript trace changes outputs; running the FX graph")
        except Exception as exc:  # TorchScript is deprecated; the FX graph is always a fallback
            log.info("int8: TorchScript dispatch unavailable (%s); running the FX graph", exc)
        object.__setattr__(self, "_program", program)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32:
            out: Tensor = self._program(x.detach())
            return out
        out = self._program(x.detach().to("cpu", torch.float32))
        return out.to(x.device)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_program", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_program", self.quantized)
        self.compile_program()


#: where the int8 modules PyTorch's FX convert produces live
_QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")
_PACKED = "_packed_params._packed_params"
_PACKED_DTYPE = "_packed_params.dtype"


def _flatten_packed_params(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        value = state[key]
        if key.endswith(_PACKED_DTYPE) and isinstance(value, torch.dtype):
            del state[key]  # restored from the weight's dtype
        elif key.endswith(_PACKED) and isinstance(value, tuple):
            weight, bias = state.pop(key)
            state[f"{key}.weight"] = weight
            if bias is not None:
                state[f"{key}.bias"] = bias


def _unflatten_packed_params(
    module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any, *_args: Any
) -> None:
    for key in [k for k in state if k.startswith(prefix) and k.endswith(f"{_PACKED}.weight")]:
        base = key[: -len(".weight")]
        weight = state.pop(key)
        state[base] = (weight, state.pop(f"{base}.bias", None))
        state[base[: -len(_PACKED)] + _PACKED_DTYPE] = weight.dtype


def _recompile_after_load(module: nn.Module, _keys: Any) -> None:
    assert isinstance(module, Int8Model)
    module.compile_program()


@METHODS.register("quantize_int8")
class QuantizeInt8(Method[Int8Params]):
    """Post-training static int8 quantization with real int8 kernels (fused, calibrated)."""

    Params: ClassVar[type[MethodParams]] = Int8Params
    terminal: ClassVar[bool] = True

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        _check_not_quantized(self.name, model)
        from torch.ao.quantization import disable_fake_quant, enable_fake_quant
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        engine = int8_engine()
        if not p.reduce_range and engine in ("x86", "fbgemm") and not vnni_supported():
            log.warning(
                "%s: this CPU has no VNNI: FBGEMM's int8 kernels add u8 x s8 products in int16 with "
                "saturation, which 8-bit activations can overflow; set reduce_range: true (W8A7) if "
                "the int8 model disagrees with its fake-quant surrogate",
                self.name,
            )
        with _quiet():
            mapping = _int8_qconfig_mapping(engine, per_channel=p.per_channel, reduce_range=p.reduce_range)
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        example = _example(ctx, 2).to(device)
        model.train()  # prepare_qat_fx wants train mode; flags are reset to eval below
        try:
            with _quiet():
                prepared = prepare_qat_fx(model, mapping, (example,))
        except Exception as exc:
            raise MethodError(
                f"{self.name}: {type(model).__name__} cannot be traced by torch.fx for int8 "
                f"quantization ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        prepared.eval()
        act = _activation_fake_quants(prepared)
        with _quiet():
            if ctx.restoring:
                # same modules and buffer shapes, no calibration: the saved ranges are loaded next
                for fq in act:
                    fq.disable_observer()
                with torch.no_grad():
                    prepared(example)  # sizes the per-channel weight scales
            else:
                prepared.apply(disable_fake_quant)  # calibrate on float activations, like PTQ
                gen = torch.Generator().manual_seed(ctx.seed)
                drawn = batches(ctx.data.train, p.batch_size, shuffle=True, generator=gen, device=ctx.device)
                total = min(p.calibration_batches, num_batches(ctx.data.train, p.batch_size))
                desc = ctx.desc(f"{self.name} calibration")
                with torch.no_grad():
                    for xb, _ in progress(islice(drawn, p.calibration_batches), desc=desc, total=total):
                        prepared(xb.to(device))
                prepared.apply(enable_fake_quant)
                for fq in act:
                    fq.disable_observer()  # ranges fixed from now on (also while fine-tuning)
                self._check_layers(prepared, ctx, engine)
        return prepared

    def _check_layers(self, prepared: GraphModule, ctx: CompressContext, engine: str) -> None:
        """Name every layer with weights that the int8 backend leaves in float (quantized modules
        may keep float affine parameters, e.g. quantized LayerNorm: those run on int8 data)."""
        from torch.ao.quantization.quantize_fx import convert_fx

        with _engine(engine):
            converted = convert_fx(copy.deepcopy(prepared).cpu())
        for name, m in converted.named_modules():
            quantized_kind = type(m).__module__.startswith(_QUANTIZED_MODULES)
            if not quantized_kind and any(t.is_floating_point() for t in m.parameters(recurse=False)):
                ctx.unsupported(
                    self.name, name, m, "has no int8 kernel in this backend", self.params.on_unsupported
                )

    def deploy(self, model: nn.Module, ctx: CompressContext) -> Deployment | None:
        """The int8 model: a converted copy of the calibrated (and possibly fine-tuned) ``model``.
        No gradient reaches the input through int8 kernels (attacks go through the surrogate); its
        layers are those of the converted FX graph, which its frozen trace runs (hooks go there).
        Sizes and latencies are measured on the real int8 kernels: not simulated."""
        from torch.ao.quantization.quantize_fx import convert_fx

        work = copy.deepcopy(model).cpu().eval()
        if not isinstance(work, GraphModule):
            raise MethodError(
                f"{self.name}: deploy needs the model its own step prepared, got {type(work).__name__}"
            )
        engine = int8_engine()
        with _quiet(), _engine(engine):
            converted = convert_fx(work)
            deployed = Int8Model(converted, _example(ctx, 2)).eval()
        # the graph is hooked and run on its own (features, saliency): its kernels are CPU ones too
        object.__setattr__(converted, "compute_device", Int8Model.compute_device)
        return Deployment(
            model=deployed,
            gradient_path=False,
            graph=deployed.quantized,
            runtime=f"pytorch {torch.__version__.split('+')[0]}, int8 ({engine} engine)",
            surrogate_kind="the fake-quant model with the int8 model's scales",
        )

    def weight_bits(self) -> float | None:
        return 8.0


# --------------------------------------------------------------------------- k-bit (simulated)

#: named (weight bits, activation bits) settings
PRESETS: dict[str, tuple[int, int]] = {"w8a8": (8, 8), "w4a8": (4, 8)}


class KbitParams(MethodParams):
    weight_bits: int = Field(default=8, ge=1, le=16, description="bits per weight (1: binarized)")
    act_bits: int | None = Field(
        default=None, ge=1, le=16, description="bits per activation at layer inputs (none: float)"
    )
    scheme: Literal["sym_w_asym_a", "minmax"] = Field(
        default="sym_w_asym_a",
        description="sym_w_asym_a: symmetric weights, asymmetric activations (seed 002); "
        "minmax: per-layer asymmetric min-max weights, Algorithm 1 of seed 000",
    )
    preset: Literal["w8a8", "w4a8"] | None = Field(
        default=None, description="sets weight_bits and act_bits (seed 003: W8A8, W4A8)"
    )
    per_channel: bool = Field(default=False, description="symmetric weights: one scale per output channel")
    calibration_batches: int = Field(default=32, ge=1, description="training batches seen by calibration")
    batch_size: int = Field(default=32, ge=1, description="calibration batch size")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        preset = data["preset"]
        if preset not in PRESETS:
            return data  # the Literal check names the choices
        wb, ab = PRESETS[preset]
        for key, value in (("weight_bits", wb), ("act_bits", ab)):
            if key in data and data[key] != value:
                raise ValueError(f"preset {preset} sets {key}={value}; got {key}={data[key]}")
        if data.get("scheme", "sym_w_asym_a") != "sym_w_asym_a":
            raise ValueError(f"preset {preset} uses scheme sym_w_asym_a")
        return {**data, "weight_bits": wb, "act_bits": ab}

    @model_validator(mode="after")
    def _check_scheme(self) -> KbitParams:
        if self.scheme == "minmax" and self.act_bits is not None:
            raise ValueError("scheme minmax quantizes weights only (seed 000, Algorithm 1); drop act_bits")
        if self.scheme == "minmax" and self.per_channel:
            raise ValueError("scheme minmax is per layer (seed 000, Algorithm 1); drop per_channel")
        return self


def build_kbit(model: nn.Module, p: KbitParams, ctx: CompressContext, method: str) -> nn.Module:
    """``model`` with every conv/linear layer fake-quantized as ``p`` says, calibrated unless
    ``ctx.restoring`` (the activation ranges are then loaded from the saved state)."""
    _check_not_quantized(method, model)
    scheme: Literal["symmetric", "minmax"] = "minmax" if p.scheme == "minmax" else "symmetric"

    def unsupported(name: str, module: nn.Module) -> None:
        ctx.unsupported(method, name, module, "is not a Conv2d or Linear layer", p.on_unsupported)

    model = quantize_layers(
        model,
        weight_quantizer=lambda: WeightQuantizer(p.weight_bits, scheme, per_channel=p.per_channel),
        act_bits=p.act_bits,
        unsupported=unsupported,
    )
    if not any(isinstance(m, QuantConv2d | QuantLinear) for m in model.modules()):
        raise MethodError(f"{method}: {type(model).__name__} has no Conv2d or Linear layer to quantize")
    if not ctx.restoring:
        calibrate_activations(
            model,
            ctx.data,
            num_batches=p.calibration_batches,
            batch_size=p.batch_size,
            seed=ctx.seed,
            device=ctx.device,
            desc=ctx.desc(f"{method} calibration"),
        )
    return model


@METHODS.register("quantize_kbit")
class QuantizeKbit(Method[KbitParams]):
    """Simulated k-bit quantization (1..16 bits), straight-through gradients; sizes simulated."""

    Params: ClassVar[type[MethodParams]] = KbitParams
    #: 2: symmetric weights use seed 002's scale 2 max|w| / (2^k - 1) (was max|w| / (2^(k-1) - 1))
    version: ClassVar[int] = 2

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        return build_kbit(model, p, ctx, self.name)

    def weight_bits(self) -> float | None:
        return float(self.params.weight_bits)

    def simulated(self) -> bool:
        """No low-bit kernels: the model stays float32, so file size and latency do not shrink."""
        return True


class QATParams(KbitParams):
    act_bits: int | None = Field(
        default=8, ge=1, le=16, description="bits per activation at layer inputs (none: float)"
    )
    epochs: int = Field(default=3, ge=0, le=10_000, description="quantization-aware training epochs")
    lr: float = Field(default=0.01, gt=0.0)
    train: TrainSpec = Field(
        default_factory=TrainSpec, description="the other training settings (not epochs and lr)"
    )

    @model_validator(mode="after")
    def _check_train(self) -> QATParams:
        both = {"epochs", "lr"} & self.train.model_fields_set
        if both:
            raise ValueError(f"give {' and '.join(sorted(both))} as qat's own parameter, not under train")
        return self

    def train_spec(self) -> TrainSpec:
        return self.train.model_copy(update={"epochs": self.epochs, "lr": self.lr})


@METHODS.register("qat")
class QAT(Method[QATParams]):
    """Quantization-aware training: the k-bit fake-quant model, trained (seed 002)."""

    Params: ClassVar[type[MethodParams]] = QATParams
    #: 2: symmetric weights use seed 002's scale 2 max|w| / (2^k - 1) (was max|w| / (2^(k-1) - 1))
    version: ClassVar[int] = 2

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        model = build_kbit(model, p, ctx, self.name)
        if not ctx.restoring and p.epochs > 0:
            act = f"a{p.act_bits}" if p.act_bits is not None else ""
            ctx.train(model, p.train_spec(), desc=f"{self.name} w{p.weight_bits}{act}")
        return model

    def weight_bits(self) -> float | None:
        return float(self.params.weight_bits)

    def simulated(self) -> bool:
        """No low-bit kernels: the model stays float32, so file size and latency do not shrink."""
        return True


def weight_error(model: nn.Module) -> float:
    """Root-mean-square difference between the latent float weights and the weights a fake-quantized
    ``model`` computes with, over all its quantized layers (0 when nothing is quantized)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuantConv2d | QuantLinear):
                diff = m.weight_quantizer(m.weight) - m.weight
                total += float((diff.double() ** 2).sum())
                count += diff.numel()
    return math.sqrt(total / count) if count else 0.0
