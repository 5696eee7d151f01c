"""A variant: what a compression recipe produced, with its lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class Variant:
    """A model to audit.

    ``model`` is the float model used for inference. Where they exist, ``deployed`` is the model as
    it would ship (real integer kernels) and ``surrogate`` a differentiable stand-in (fake-quant with
    straight-through gradients) for white-box attacks and saliency. ``lineage`` lists the steps that
    produced it, in order, each ``{"method": ..., "params": {...}}``; the baseline has none.
    """

    name: str
    key: str
    model: nn.Module
    lineage: list[dict[str, Any]] = field(default_factory=list)
    parent: str | None = None
    deployed: nn.Module | None = None
    surrogate: nn.Module | None = None
    #: bits per stored weight when a step quantized them (None: float32)
    bits: float | None = None
    #: layers a method left alone under ``on_unsupported: skip``
    skipped: list[str] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.parent is None

    @property
    def inference_model(self) -> nn.Module:
        """The model whose outputs are reported: the deployed one when there is one."""
        return self.deployed if self.deployed is not None else self.model
