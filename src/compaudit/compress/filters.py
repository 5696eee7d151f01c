"""Structured L1-norm filter pruning (Li et al. 2017): whole filters go, and the model shrinks.

- Seed 001 (``001_5343f4a55429e52f.txt``, L1-FP) scores each filter by the sum of its absolute
  weights, "sorts the filters based on the relative importance score of filters in each layer" and
  removes the least important ones at a compression ratio per layer.
- Seed 002 (``002_ac3fedcbc364a839.txt``, section 3.1) does the same and spells out that removing a
  filter also removes the matching kernels of the next layer; it sweeps sparsity 0.1-0.9.

What is removed is physically gone: a pruned conv has fewer output channels, and every layer that
reads them (BatchNorm, the next conv or linear layer, the other branch of a residual addition, a
depthwise conv) loses the matching channels too. The result is a smaller *dense* model that takes
the same inputs, so its parameter count, file size, MACs and latency really drop. The channel
bookkeeping is Torch-Pruning's dependency graph (``tp.DependencyGraph``); the policy (which
filters, how many) is ours:

- **score**: the L1 norm of each filter (``tp.importance.MagnitudeImportance`` with ``p=1``,
  counting filters only: not the next layer's kernels nor BatchNorm scales, which Li et al. do not
  count). Channels coupled by a residual addition or a depthwise conv are produced by several
  filters; their score is the sum of those filters' L1 norms.
- **count** (``scope: layer``): every prunable layer keeps ``round(out_channels * (1 - ratio))``
  filters, at least one; with ``round_to`` that is rounded to the nearest multiple (at least one
  multiple). Coupled layers are pruned together, at the smallest ratio any of them is given.
- **count** (``scope: global``): the scores of all layers are ranked together after dividing each
  layer's by its mean (Torch-Pruning's global ranking; raw L1 norms grow with fan-in and would
  not compare across layers); the ``ratio`` share of all prunable channels with the lowest scores
  goes, except that every layer keeps at least one filter. ``layer_ratios`` entries are ranked
  within their own layer.

Never pruned: the classifier (the last linear layer, or conv layer, producing the model's
outputs), the first conv with ``skip_first_conv``, the layers named in ``ignore`` (and everything
inside them), and layers not of a kind in ``layers``. A layer the dependency graph cannot follow (a
module holding raw ``nn.Parameter`` s it uses in its own op, a grouped conv) is reported by name;
with ``on_unsupported: skip`` the channels it touches are left whole.

Pruning is deterministic given the weights, so a cached result is restored by replaying it
(``ctx.restoring``): the replay yields the same architecture, into which the saved weights load.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch_pruning as tp
from pydantic import Field
from torch import nn

from compaudit.compress.base import METHODS, CompressContext, Method, MethodParams
from compaudit.errors import MethodError
from compaudit.inference import modes_restored
from compaudit.models.plain import PlainCNN

log = logging.getLogger("compaudit")

_KINDS: dict[str, type[nn.Module]] = {"conv": nn.modules.conv._ConvNd, "linear": nn.Linear}
_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)

Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]


class FilterParams(MethodParams):
    ratio: Ratio = Field(description="share of the filters (output channels) removed")
    scope: Literal["layer", "global"] = "layer"
    layer_ratios: dict[str, Ratio] = Field(
        default_factory=dict, description="ratio of named layers (names as in named_modules())"
    )
    layers: list[Literal["conv", "linear"]] = Field(default=["conv"], min_length=1)
    skip_first_conv: bool = False
    ignore: list[str] = Field(default_factory=list, description="layers kept whole, by name")
    round_to: int | None = Field(default=None, ge=1, description="keep a multiple of this many filters")


class FilterL1Importance(tp.importance.MagnitudeImportance):  # type: ignore[misc]
    """The L1 norm of every filter: ``sum |W[c]|`` over the filter of output channel ``c``.

    Torch-Pruning's magnitude importance scores a *group* (a layer, the layers reading its output,
    its BatchNorm); Li et al. score the filter alone, so only the layers *producing* the channels
    count here (a plain conv: its own filters; channels shared through a residual addition or a
    depthwise conv: the sum over the coupled filters).
    """

    def __init__(self) -> None:
        super().__init__(p=1, group_reduction="sum", normalizer=None, target_types=list(_PRUNABLE))

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        dg = group._DG
        scores: list[torch.Tensor] = []
        roots: list[list[int]] = []
        for item in group:
            layer = item.dep.target.module
            if not isinstance(layer, _PRUNABLE) or not dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            weight = layer.weight.detach()
            if getattr(layer, "transposed", False):
                weight = weight.transpose(0, 1)
            scores.append(weight[item.idxs].flatten(1).abs().sum(1).float())
            roots.append(item.root_idxs)
        if not scores:
            return None
        reduced: torch.Tensor = self._reduce(scores, roots)
        return reduced


@dataclass
class _Group:
    """One set of channels that must be pruned together, and what we decided about it."""

    root: nn.Module
    fn: Any
    channels: int
    members: list[str]  # the conv/linear layers whose filters produce these channels
    ratio: float | None = None  # None: keep whole
    local: bool = True  # ranked within itself (else: global ranking)
    scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    keep: int = 0


def kept_filters(channels: int, ratio: float, round_to: int | None = None) -> int:
    """How many of ``channels`` filters a layer keeps at ``ratio``: ``channels * (1 - ratio)``
    rounded to the nearest integer (halves up), or to the nearest multiple of ``round_to``; at
    least one (multiple), at most all."""
    return _rounded(channels * (1.0 - ratio), channels, round_to)


def _rounded(keep: float, channels: int, round_to: int | None) -> int:
    step = round_to or 1
    kept = step * math.floor(round(keep / step, 9) + 0.5)  # round(): no 2.4999999 from float error
    return min(channels, max(step, kept))


@contextlib.contextmanager
def _leave_flags_alone(model: nn.Module) -> Iterator[None]:
    """Tracing puts the model in eval mode and needs autograd; afterwards every module gets its own
    train/eval flag back and every parameter (matched by name: pruning replaces the tensors) its
    ``requires_grad``."""
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    with modes_restored(model, by_name=True):
        try:
            for p in model.parameters():
                p.requires_grad_(True)
            with torch.inference_mode(False), torch.enable_grad():
                yield
        finally:
            for name, p in model.named_parameters():
                p.requires_grad_(grads.get(name, True))


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


@METHODS.register("prune_filters")
class FilterPrune(Method[FilterParams]):
    """Structured L1-norm filter pruning: removes whole filters and the channels reading them."""

    Params: ClassVar[type[MethodParams]] = FilterParams

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        p = self.params
        names = dict(model.named_modules())
        for what, given in (("layer_ratios", list(p.layer_ratios)), ("ignore", p.ignore)):
            for name in given:
                if name not in names:
                    raise MethodError(
                        f"method {self.name!r}: {what} names {name!r}, which is no layer of "
                        f"{type(model).__name__} (names as in named_modules())"
                    )
        kinds = tuple(_KINDS[k] for k in p.layers)
        if not any(isinstance(m, kinds) for m in names.values()):
            raise MethodError(
                f"method {self.name!r} found no {'/'.join(p.layers)} layer to prune in {type(model).__name__}"
            )
        if p.ratio == 0.0 and not any(p.layer_ratios.values()):
            return model

        model.to(ctx.device)
        example = ctx.data.test[0][0].unsqueeze(0).to(ctx.device)
        with _leave_flags_alone(model):
            model.eval()
            with torch.no_grad():
                reference = model(example)
            if not isinstance(reference, torch.Tensor):
                raise MethodError(
                    f"method {self.name!r} needs a model that returns one tensor of logits, "
                    f"{type(model).__name__} returns {type(reference).__name__}"
                )
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
            groups = self._plan(model, dg, reference, ctx)
            before = sum(g.channels for g in groups if g.ratio is not None)
            removed = 0
            for g in groups:
                if g.ratio is None or g.keep >= g.channels:
                    continue
                order = torch.argsort(g.scores, stable=True)
                drop = sorted(int(i) for i in order[: g.channels - g.keep])
                group = dg.get_pruning_group(g.root, g.fn, drop)
                if not dg.check_pruning_group(group):  # never: we keep at least one filter
                    raise MethodError(f"method {self.name!r} would remove every filter of {g.members[0]!r}")
                group.prune()
                removed += len(drop)
            del dg, groups
            with torch.no_grad():
                try:
                    out = model(example)
                except RuntimeError as exc:
                    raise MethodError(
                        f"method {self.name!r}: the pruned {type(model).__name__} no longer runs "
                        f"({str(exc).splitlines()[0]}); a layer the dependency graph cannot follow is in "
                        "the way: name it under ignore"
                    ) from None
        if out.shape != reference.shape:
            raise MethodError(
                f"method {self.name!r} changed the output shape of {type(model).__name__} from "
                f"{tuple(reference.shape)} to {tuple(out.shape)}; name its output layer under ignore"
            )
        if isinstance(model, PlainCNN):  # keep flatten_dim()/feature_size() true to the new widths
            convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
            model.conv_channels = tuple(m.out_channels for m in convs)
        log.debug("%s: removed %d of %d prunable channels", self.name, removed, before)
        return model

    # ---------------------------------------------------------------- policy

    def _plan(self, model: nn.Module, dg: Any, reference: torch.Tensor, ctx: CompressContext) -> list[_Group]:
        """Every coupled group of channels, with its ratio (None: keep whole), scores and kept count."""
        p = self.params
        names = {m: n for n, m in model.named_modules()}
        kinds = tuple(_KINDS[k] for k in p.layers)
        whole = self._kept_whole(model, reference)
        raw, grouped = self._unsupported(model, dg)
        reported: set[str] = set()
        # most specific name wins: a ratio given for a block applies to the layers inside it
        overrides = sorted(p.layer_ratios.items(), key=lambda kv: kv[0].count(".") + (kv[0] != ""))

        def override(layer: str) -> float | None:
            found = None
            for prefix, r in overrides:
                if _under(layer, prefix):
                    found = r
            return found

        importance = FilterL1Importance()
        plan: list[_Group] = []
        for group in dg.get_all_groups(root_module_types=list(_PRUNABLE)):
            root_item = group[0]
            g = _Group(
                root=root_item.dep.target.module,
                fn=root_item.dep.handler,
                channels=len(root_item.idxs),
                members=[],
            )
            plan.append(g)
            touched: list[str] = []
            keep_whole = False
            for item in group:
                target = item.dep.target.module
                if isinstance(target, nn.Parameter):
                    if id(target) in raw:
                        touched.append(raw[id(target)])
                    continue
                name = names.get(target)
                if name is None:
                    continue
                if name in grouped:
                    touched.append(name)
                if isinstance(target, _PRUNABLE) and dg.is_out_channel_pruning_fn(item.dep.handler):
                    g.members.append(name)
                    keep_whole |= not isinstance(target, kinds) or any(_under(name, w) for w in whole)
            if keep_whole or not g.members:
                continue
            ratios = [r for r in (override(m) for m in g.members) if r is not None]
            g.ratio = min(ratios) if ratios else p.ratio
            g.local = bool(ratios) or p.scope == "layer"
            if g.ratio == 0.0:
                g.ratio = None
                continue
            for layer in dict.fromkeys(touched):
                if layer not in reported:
                    reported.add(layer)
                    module = model.get_submodule(layer)
                    ctx.unsupported(self.name, layer, module, self._why(module), p.on_unsupported)
            if touched:
                g.ratio = None
                continue
            scores = importance(group)
            if scores is None or len(scores) != g.channels:
                g.ratio = None
                continue
            g.scores = scores.detach().cpu()
            g.keep = kept_filters(g.channels, g.ratio, p.round_to) if g.local else g.channels
        self._rank_globally([g for g in plan if g.ratio is not None and not g.local])
        return plan

    def _rank_globally(self, groups: list[_Group]) -> None:
        """Global scope: rank every channel's score divided by its layer's mean score; the lowest
        ``ratio`` share of all channels goes, each layer keeping at least one filter."""
        p = self.params
        if not groups:
            return
        normalised = torch.cat([g.scores / g.scores.mean().clamp_min(1e-12) for g in groups])
        total = len(normalised)
        drop = total - kept_filters(total, p.ratio)
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[torch.argsort(normalised, stable=True)[:drop]] = True
        start = 0
        for g in groups:
            dropped = int(chosen[start : start + g.channels].sum())
            start += g.channels
            g.keep = _rounded(g.channels - dropped, g.channels, p.round_to)

    def _kept_whole(self, model: nn.Module, reference: torch.Tensor) -> list[str]:
        """Names of the layers never pruned: the classifier, the first conv if asked, ``ignore``."""
        p = self.params
        whole = list(p.ignore)
        outputs = int(reference.shape[1]) if reference.dim() >= 2 else int(reference.numel())
        layers = list(model.named_modules())
        heads = [n for n, m in layers if isinstance(m, nn.Linear) and m.out_features == outputs]
        if not heads:
            heads = [
                n for n, m in layers if isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == outputs
            ]
        whole += heads[-1:]
        if p.skip_first_conv:
            convs = [n for n, m in layers if isinstance(m, nn.modules.conv._ConvNd)]
            whole += convs[:1]
        return whole

    @staticmethod
    def _unsupported(model: nn.Module, dg: Any) -> tuple[dict[int, str], set[str]]:
        """Layers the dependency graph cannot prune correctly: ``{id(parameter): layer}`` for raw
        parameters used in an op Torch-Pruning does not know (it would slice them by guesswork,
        along their last non-singleton dimension), and the names of grouped convs (whose channels
        it cannot remove group by group; depthwise convs are fine)."""
        owner = {id(q): n for n, m in model.named_modules() for q in m.parameters(recurse=False)}
        raw = {id(q): owner[id(q)] for q, _dim in dg.unwrapped_parameters if id(q) in owner}
        grouped = {
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.out_channels
        }
        return raw, grouped

    @staticmethod
    def _why(module: nn.Module) -> str:
        if isinstance(module, nn.modules.conv._ConvNd):
            return (
                f"is a grouped convolution (groups={module.groups}), whose channels the dependency "
                "graph cannot remove group by group"
            )
        return (
            "holds parameters of its own in an operation Torch-Pruning does not know, so it cannot "
            "tell which of their dimensions follow the channels"
        )
