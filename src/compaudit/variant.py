"""A variant: what a compression recipe produced, with its lineage and its capabilities.

Probes never ask what *class* a model is: a method states what its result can do
(:class:`Deployment`: whether autograd reaches the input, which module's layers compute) and the
variant carries it (``gradient_path``, ``graph``, ``simulated``), so a new kind of deployed model
(another runtime) needs no probe edits. Where a model's kernels run is the model's own
``compute_device`` attribute (:func:`compaudit.inference.execution_device`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compaudit.results import VariantId


@dataclass(frozen=True)
class Deployment:
    """The model as it ships, as a method's :meth:`~compaudit.compress.Method.deploy` returns it.

    ``gradient_path``: whether autograd reaches the input through ``model`` (int8 kernels: no; an
    attack then runs on the variant's surrogate, by BPDA or transfer). ``graph``: the module whose
    submodules compute when ``model`` runs (hooks for features and saliency, weight counts); None:
    ``model`` itself (an int8 model dispatches to a frozen trace of its FX graph, which is hooked).
    """

    model: nn.Module
    gradient_path: bool = True
    graph: nn.Module | None = None
    #: what runs it, as the report says: ``pytorch int8 (x86)``, ``onnxruntime 1.31.1, int8``
    runtime: str = "pytorch"
    #: what the variant's surrogate is (the model its gradients and saliency maps come from)
    surrogate_kind: str = "the fake-quant model with the deployed model's scales"


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
    #: whether autograd reaches the input through :attr:`inference_model` (False for int8 kernels)
    gradient_path: bool = True
    #: the module whose submodules compute when :attr:`inference_model` runs (None: that model)
    graph: nn.Module | None = None
    #: the weights are quantized in simulation (fake-quant in float32): ``bits`` is not what is
    #: stored, so the file does not shrink (the efficiency probe reports the packed size too)
    simulated: bool = False
    #: who the variant is, as data (source domain, seed, name); its ``label`` is :attr:`name`
    identity: VariantId | None = None
    #: what runs :attr:`inference_model`, in words (``pytorch``; ``onnxruntime 1.31.1, int8``)
    runtime: str = "pytorch"
    #: what :attr:`surrogate` is, in words (None: no surrogate)
    surrogate_kind: str | None = None

    @property
    def is_baseline(self) -> bool:
        return self.parent is None

    @property
    def inference_model(self) -> nn.Module:
        """The model whose outputs are reported: the deployed one when there is one."""
        return self.deployed if self.deployed is not None else self.model

    @property
    def layers(self) -> nn.Module:
        """The module whose layers compute when :attr:`inference_model` runs (hooks, weight counts)."""
        return self.graph if self.graph is not None else self.inference_model

    @property
    def attack_model(self) -> nn.Module | None:
        """What a gradient attack differentiates: the inference model when it has a gradient path,
        else the surrogate (None when there is none: no white-box attack is possible)."""
        return self.inference_model if self.gradient_path else self.surrogate

    def deploy(self, deployment: Deployment | None) -> None:
        """Attach what a method's ``deploy`` returned (nothing when None)."""
        if deployment is None:
            return
        self.deployed = deployment.model
        self.gradient_path = deployment.gradient_path
        self.graph = deployment.graph
        self.runtime = deployment.runtime
        self.surrogate_kind = deployment.surrogate_kind
