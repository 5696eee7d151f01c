"""Compression methods: one abstract base, one registry.

A method turns a model into a compressed model. :meth:`Method.apply` copies the model first, so the
caller's model (the baseline) is never touched, then calls the one method a subclass overrides,
:meth:`Method._apply`. Methods compose into chains (``variants[].steps``) by applying one after
another; each step may be followed by recovery fine-tuning through the one training loop.

A method is generic in its parameters (``class Prune(Method[PruneParams])``: ``self.params`` is
typed). What its result can do is stated as capabilities, never found out from the model's class:

- :meth:`Method.deploy` builds the model *as it would ship* (real int8 kernels) from the trained
  result of the chain, as a :class:`~compaudit.variant.Deployment` saying whether autograd reaches
  the input through it and which module's layers compute (so probes hook, attack and count weights
  of a new runtime without edits); it is never cached and is rebuilt deterministically.
- :meth:`Method.simulated` says the bit width the step sets is simulated (fake-quant in float32:
  the stored file does not shrink).
- ``terminal = True`` says no step may follow (nothing can be applied to an int8 deployed model).

Caching contract: each step's result is saved as a state dict, keyed by the chain up to that step.
To load it back the chain is replayed with ``ctx.restoring = True``: a method must then produce the
same *architecture* (the same modules, shapes and state-dict keys) without training, because the
weights are loaded next. Methods that choose their structure from the weights (filter pruning) get
exactly the weights they saw the first time, so replaying them is deterministic.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.nn.utils import prune as torch_prune
from typing_extensions import Self

from compaudit.data.base import DataBundle
from compaudit.errors import MethodError
from compaudit.inference import nchw
from compaudit.registry import Registry
from compaudit.train.loop import TrainResult, fit
from compaudit.train.objective import Objective
from compaudit.variant import Deployment

if TYPE_CHECKING:
    from compaudit.config import TrainSpec


class MethodParams(BaseModel):
    """Parameters of a method; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: what to do with a layer the method cannot handle: stop with an error naming it, or leave it
    #: as it is and list it in the report
    on_unsupported: Literal["error", "skip"] = "error"


P = TypeVar("P", bound=MethodParams)

#: signature of the training hook a context carries: ``fit(model, spec, objective=None, desc="")``
FitFn = Callable[..., "TrainResult"]


@dataclass
class CompressContext:
    """What a method may use besides the model.

    ``fit`` is the one training loop bound to this step (its seed, device, and a resume file so a
    killed training continues where it stopped); methods that train (distillation, ablation, QAT)
    call :meth:`train` and never when ``restoring``. ``skipped`` collects the layers a method left
    alone under ``on_unsupported: skip``; the report lists them. ``variant``, when set, names the
    variant being built in progress lines (:meth:`desc`).
    """

    data: DataBundle
    seed: int
    device: torch.device
    restoring: bool = False
    fit: FitFn | None = None
    skipped: list[str] = field(default_factory=list)
    variant: str = ""

    def desc(self, what: str) -> str:
        """``what`` a method does, as progress lines name it: ``"vgg6-int8: quantize_int8
        calibration"`` (without the variant's name when the context has none)."""
        return f"{self.variant}: {what}" if self.variant else what

    def train(
        self, model: nn.Module, spec: TrainSpec, *, objective: Objective | None = None, desc: str = "train"
    ) -> TrainResult:
        """Train ``model`` in place with the one training loop."""
        if self.restoring:
            raise MethodError("a method must not train while its cached result is being restored")
        if self.fit is not None:
            return self.fit(model, spec, objective=objective, desc=desc)
        return fit(model, self.data, spec, seed=self.seed, objective=objective, device=self.device, desc=desc)

    def unsupported(self, method: str, layer: str, module: nn.Module, why: str, policy: str) -> None:
        """Report a layer the method cannot handle: an error, or a recorded skip."""
        what = f"{method}: layer {layer!r} ({type(module).__name__}) {why}"
        if policy == "error":
            raise MethodError(f"{what}; set on_unsupported: skip to leave it uncompressed")
        self.skipped.append(what)


class Method(ABC, Generic[P]):
    """Base of every compression method. Subclasses name their parameters' type twice, as the type
    argument (``Method[XParams]``, for typing) and as ``Params`` (for validation), and override
    :meth:`_apply`."""

    #: validates a spec's parameters; must be (a subclass of) the class's type argument ``P``
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: no step may follow this one (its result is a deployed model, e.g. int8 kernels)
    terminal: ClassVar[bool] = False
    #: the method works on plain weights: pruning masks of earlier steps are folded in first
    needs_plain_weights: ClassVar[bool] = True
    #: the step must be its variant's only one, without fine-tuning (a user's own deployed file is
    #: audited against the experiment's model itself, the float model it came from)
    standalone: ClassVar[bool] = False
    #: bump when a change alters what the method computes with the same parameters: the step's
    #: description (and so the variant's key) then records it, so cached results are not reused
    version: ClassVar[int] = 1

    def __init__(self, name: str, params: P) -> None:
        self.name = name
        self.params: P = params

    @classmethod
    def from_spec(cls, name: str, params: Mapping[str, Any]) -> Self:
        """The method ``name`` with ``params`` validated by :attr:`Params` (unknown keys refused)."""
        validated: Any = cls.Params.model_validate(dict(params))
        return cls(name, validated)

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        """A compressed copy of ``model``; ``model`` itself is left exactly as it was."""
        # NCHW, whatever layout the run probes in: libraries (torch.nn.utils.prune's global
        # pruning, Torch-Pruning, exporters) take .view()s of weights
        work = nchw(copy_model(model))
        out = self._apply(work, ctx)
        if not isinstance(out, nn.Module):
            raise MethodError(f"method {self.name!r} returned {type(out).__name__}, not a torch.nn.Module")
        return out

    @abstractmethod
    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        """Compress ``model`` (a private copy: mutate freely) and return the result."""

    def check_inputs(self, data: DataBundle) -> str | None:
        """A problem with the step's inputs that only the loaded data set shows (a file whose input
        shape or class count does not fit), as one line; None when there is none. Checked before
        anything runs (:func:`compaudit.run.prepare.prepare`)."""
        return None

    def deploy(self, model: nn.Module, ctx: CompressContext) -> Deployment | None:
        """The model as it would ship, built from the chain's final trained ``model``, with its
        capabilities (default: none, the float model is what ships). Must not modify ``model``."""
        return None

    def simulated(self) -> bool:
        """Whether the bit width this step sets (:meth:`weight_bits`) is simulated: weights rounded
        but stored and computed in float32, so the file and the latency do not shrink."""
        return False

    def weight_bits(self) -> float | None:
        """Bits per stored weight after this step, if the step changes it."""
        return None

    def describe(self) -> dict[str, Any]:
        """The step as recorded in a variant's lineage (``version`` only past the first, so keys of
        unchanged methods stay as they were)."""
        desc: dict[str, Any] = {"method": self.name, "params": self.params.model_dump(mode="json")}
        if self.version != 1:
            desc["version"] = self.version
        return desc


#: every compression method by name; a module of :mod:`compaudit.compress` or a
#: ``compaudit.methods`` entry point registers its methods when imported
METHODS: Registry[type[Method[Any]]] = Registry(
    "compression method",
    error=MethodError,
    package="compaudit.compress",
    entry_point_group="compaudit.methods",
)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, also when it still carries ``torch.nn.utils.prune`` masks.

    A pruned module keeps ``weight`` as a tensor computed from ``weight_orig * weight_mask`` with
    autograd, which ``copy.deepcopy`` refuses; so in the middle of a chain (prune, then another step)
    copying would fail. Those tensors are swapped for detached equals during the copy (the forward
    pre-hook recomputes them anyway) and put back afterwards, so ``model`` is left as it was.
    """
    swapped: list[tuple[nn.Module, str, Any]] = []
    try:
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, torch_prune.BasePruningMethod):
                    name = hook._tensor_name
                    swapped.append((module, name, getattr(module, name)))
                    with torch.no_grad():
                        setattr(module, name, hook.apply_mask(module))
        return copy.deepcopy(model)
    finally:
        for module, name, value in swapped:
            setattr(module, name, value)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` re-parametrisation into plain weights (in place).

    Masks stay attached during recovery fine-tuning, so pruned weights stay zero while the rest
    train; this removes them afterwards, leaving an ordinary module with zeros in its weights.
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return model
