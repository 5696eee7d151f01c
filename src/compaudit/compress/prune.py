"""Unstructured magnitude (L1) pruning, layer-wise or global.

- ``scope: layer`` prunes the same share of the smallest-magnitude weights in every layer (seed
  000's per-synapse pruning, ``000_a193888e59fb5ab2.txt``), optionally leaving the first conv layer
  alone as that paper does.
- ``scope: global`` ranks all weights of all prunable layers together (seed 003's global
  unstructured L1 pruning, ``003_7af53373951fb382.txt``).

Uses ``torch.nn.utils.prune``; the masks stay attached until the variant is finalised, so recovery
fine-tuning cannot regrow pruned weights.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import prune as torch_prune

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams
from compaudit.errors import MethodError

_PRUNABLE: dict[str, type[nn.Module]] = {"conv": nn.Conv2d, "linear": nn.Linear}


class UnstructuredParams(MethodParams):
    sparsity: float = Field(ge=0.0, lt=1.0, description="share of weights set to zero")
    scope: Literal["global", "layer"] = "global"
    layers: list[Literal["conv", "linear"]] = Field(default=["conv", "linear"], min_length=1)
    skip_first_conv: bool = False


def prunable_layers(
    model: nn.Module, kinds: list[str], *, skip_first_conv: bool
) -> list[tuple[str, nn.Module]]:
    types = tuple(_PRUNABLE[k] for k in kinds)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
    if skip_first_conv:
        convs = [n for n, m in found if isinstance(m, nn.Conv2d)]
        if convs:
            found = [(n, m) for n, m in found if n != convs[0]]
    return found


@METHODS.register("prune_unstructured")
class UnstructuredPrune(Method[UnstructuredParams]):
    """Unstructured L1 magnitude pruning of conv/linear weights, global or per layer."""

    Params: ClassVar[type[MethodParams]] = UnstructuredParams
    needs_plain_weights: ClassVar[bool] = False

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        layers = prunable_layers(model, list(p.layers), skip_first_conv=p.skip_first_conv)
        if not layers:
            raise MethodError(
                f"method {self.name!r} found no {'/'.join(p.layers)} layer to prune in {type(model).__name__}"
            )
        if p.sparsity == 0.0:
            return model
        if ctx.restoring:
            # Same re-parametrisation (weight_orig, weight_mask) as the first time; the saved state
            # then restores both the weights and the masks, which keep pruned weights at zero
            # through later fine-tuning.
            for _, m in layers:
                weight = m.weight
                assert isinstance(weight, torch.Tensor)
                torch_prune.custom_from_mask(m, "weight", torch.ones_like(weight))
            return model
        if p.scope == "global":
            torch_prune.global_unstructured(
                [(m, "weight") for _, m in layers],
                pruning_method=torch_prune.L1Unstructured,
                amount=p.sparsity,
            )
        else:
            for _, m in layers:
                torch_prune.l1_unstructured(m, "weight", amount=p.sparsity)
        return model
