"""Compression methods: one abstract base, one registry.

A method turns a model into a compressed model. :meth:`Method.apply` copies the model first, so the
caller's model (the baseline) is never touched, then calls the one method a subclass overrides,
:meth:`Method._apply`. Methods compose into chains (``variants[].steps``) by applying one after
another.

Caching contract: a variant's weights are saved as a state dict. To load them back the chain is
replayed with ``ctx.restoring = True``: a method must then produce the same *architecture* (the
same modules and shapes) and may skip expensive work, because the weights are overwritten next.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.nn.utils import prune as torch_prune

from compaudit.data.base import DataBundle
from compaudit.errors import MethodError
from compaudit.registry import Registry


class MethodParams(BaseModel):
    """Parameters of a method; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class CompressContext:
    """What a method may use besides the model."""

    data: DataBundle
    seed: int
    device: torch.device
    restoring: bool = False


class Method(ABC):
    """Base of every compression method. Subclasses set ``Params`` and override :meth:`_apply`."""

    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, name: str, params: MethodParams) -> None:
        self.name = name
        self.params = params

    @classmethod
    def from_spec(cls, name: str, params: dict[str, Any]) -> Method:
        return cls(name, cls.Params.model_validate(params))

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        """A compressed copy of ``model``; ``model`` itself is left exactly as it was."""
        work = copy_model(model)
        out = self._apply(work, ctx)
        if not isinstance(out, nn.Module):
            raise MethodError(f"method {self.name!r} returned {type(out).__name__}, not a torch.nn.Module")
        return out

    @abstractmethod
    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        """Compress ``model`` (a private copy: mutate freely) and return the result."""

    def describe(self) -> dict[str, Any]:
        """The step as recorded in a variant's lineage."""
        return {"method": self.name, "params": self.params.model_dump(mode="json")}


METHODS: Registry[type[Method]] = Registry("compression method", error=MethodError)


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
