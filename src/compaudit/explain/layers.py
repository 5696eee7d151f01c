"""Where a saliency method reads a model: the target conv layer of the Grad-CAM family and the
global-average-pooling head that CAM needs.

Both are found by *running* the model once on one input with temporary hooks (removed before
returning) and looking at what was called, in call order, with which output shapes. Names are the
model's own module names (``features.3.0``, ``layer4.1.conv2``), so one name means the same layer
in a baseline and in its pruned copy (same names, fewer channels), its ablated copy (fewer blocks)
and its int8 fake-quant surrogate (an FX graph whose fused conv+BN+ReLU modules keep the conv's
name and subclass :class:`torch.nn.Conv2d`; the k-bit ``QuantConv2d`` does too).

- :func:`conv_layer` — the layer Grad-CAM, Grad-CAM++ and Guided Grad-CAM read. Automatic choice:
  the **last** :class:`~torch.nn.Conv2d` the forward pass calls whose output is still spatial (more
  than one pixel), i.e. the last conv in module order for every built-in model (ablation removes
  blocks, so the choice follows the model), **except the class conv of a conv classifier head**
  (see :func:`gap_head`: SqueezeNet's ``classifier.1``, whose output, through ReLU and global
  average pooling, *is* the logits: a map of class scores, not of features). A named layer may be
  any module that runs exactly once per forward pass and outputs ``(N, C, h, w)`` (the class conv
  too), but never an :class:`~torch.nn.Identity` (a hook on an identity layer was one of seed 004's
  mistakes: it reads whatever the previous layer made).

  A conv (automatic or named) is read **with the BatchNorm2d and ReLU that directly process its
  output**, where they exist (``conv -> bn -> relu`` of a VGG or student block: the ReLU's output;
  ``conv2 -> bn2`` before a residual addition: the BN's output). That is exactly what PyTorch's int8
  preparation fuses into one module (``ConvBnReLU2d``, ``ConvBn2d``) under the conv's name, so a
  float model and its int8 surrogate are read at the same point, and it is the rectified feature
  map Grad-CAM was defined on. The site keeps the conv's name.

  **Concatenated branches** (automatic choice only). When that rectified output is concatenated
  with other branches along the channels before anything else reads it — the expand1x1 / expand3x3
  branches of a SqueezeNet fire module — the automatic choice reads the **concatenation**: the
  module whose output it is (the fire module, ``features.12`` of SqueezeNet 1.0 and 1.1: it runs
  once and outputs ``(N, 512, h, w)``), so the map weighs every channel the next layer sees, not
  one branch's half. It is recognised by value, not by class: the tensor the next module receives
  has the conv's spatial size, more channels, and holds the conv's (rectified) output exactly as a
  block of consecutive channels. In an FX graph (the int8 surrogate) the fire modules no longer run
  as modules and the concatenation is a ``torch.cat`` call, whose fake-quantizer is shared with its
  inputs (it runs three times, so it cannot be hooked): the first module that passes the
  fake-quantized concatenation on unchanged (SqueezeNet's ``classifier.0``, a dropout in eval mode)
  is hooked, the same values as the float model's fire output up to int8 rounding, and the site is
  named after the module whose ``forward`` made the concatenation (``features.12``, from the graph's
  ``nn_module_stack``), as in the float model. A concatenation that neither a module outputs nor
  such a module passes on leaves the choice at the conv's own (rectified) output.
- :func:`gap_head` — CAM (Zhou et al. 2016) is defined for a head made of global average pooling
  and one linear layer: the module feeding the last :class:`~torch.nn.Linear` (skipping shape-only
  and quantization modules: flatten, identity, dropout, fake-quantizers) must be an
  ``AdaptiveAvgPool2d`` (or an ``AvgPool2d`` over the whole map) with a 1x1 output, and nothing but
  such transparent modules may follow the linear layer (``Site.head == "linear"``). It applies
  exactly as well to a **conv classifier head** (``Site.head == "conv"``): a conv whose output
  channels are the classes, optionally a ReLU (or BatchNorm2d), then global average pooling, and
  nothing but transparent modules after it (SqueezeNet: dropout, 1x1 class conv ``classifier.1``, ReLU,
  ``classifier.3``, flatten). Its logits are the spatial mean of the (rectified) class map, so the
  CAM of class ``c`` is that map's channel ``c`` with no weighting (for a 1x1 class conv this is
  Zhou et al.'s ``sum_k w_ck A_k`` plus the bias, computed before the pooling instead of after). In
  both cases the site is the pooling module, whose input CAM reads. A global mean written as a
  function call in ``forward`` (``x.mean((2, 3))``) has no module and is not recognised. Anything
  else raises :class:`NotApplicableError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from compaudit.compress.fakequant import ActivationQuantizer
from compaudit.errors import ProbeError

__all__ = [
    "Call",
    "NotApplicableError",
    "Site",
    "Trace",
    "conv_head",
    "conv_layer",
    "gap_head",
    "trace_calls",
]


class NotApplicableError(ProbeError):
    """A saliency method does not apply to this model (CAM without a GAP + linear or conv head)."""


@dataclass(frozen=True)
class Site:
    """A module a saliency method reads, with its name in the model. For CAM's head (the global
    pooling module, see :func:`gap_head`), ``head`` says what follows the pooling: ``"linear"`` (a
    linear layer: the CAM weighs the pooled feature map) or ``"conv"`` (nothing: the pooled map is
    the class map of a conv classifier head); ``None`` for every other site."""

    name: str
    module: nn.Module = field(compare=False)
    head: Literal["linear", "conv"] | None = None


@dataclass(frozen=True)
class Call:
    """One call of one module during a forward pass: its name, the module, and the shape of its
    (single tensor) output, or ``None`` for other outputs; ``input`` and ``output`` are the tensors
    themselves (to tell which call consumed which output)."""

    name: str
    module: nn.Module = field(compare=False)
    shape: tuple[int, ...] | None
    input: Tensor | None = field(default=None, compare=False, repr=False)
    output: Tensor | None = field(default=None, compare=False, repr=False)


def trace_calls(model: nn.Module, x: Tensor, *, grad: bool = False) -> tuple[list[Call], Tensor]:
    """Every module call of one forward pass of ``model`` on ``x``, in call order (a container is
    listed before its children), and the model's output; hooks removed afterwards. Without
    gradient, unless ``grad``: then ``x`` requires a gradient, so whether the output does too tells
    whether the model has a gradient path. The caller sets the train/eval mode."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[Call] = []
    open_calls: list[int] = []
    handles = []

    def pre(module: nn.Module, args: tuple[object, ...]) -> None:
        open_calls.append(len(calls))
        first = args[0] if args and isinstance(args[0], Tensor) else None
        calls.append(Call(names.get(id(module), ""), module, None, first))

    def post(module: nn.Module, _args: object, out: object) -> None:
        i = open_calls.pop()
        if isinstance(out, Tensor):
            c = calls[i]
            calls[i] = Call(c.name, module, tuple(out.shape), c.input, out)

    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        with torch.set_grad_enabled(grad):
            out = model(x.detach().requires_grad_(grad))
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, Tensor):
        raise ProbeError(f"{type(model).__name__} returns {type(out).__name__}, not a tensor of logits")
    return calls, out


def _spatial(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1


def _conv_names(calls: list[Call]) -> list[str]:
    seen: list[str] = []
    for c in calls:
        if isinstance(c.module, nn.Conv2d) and c.name not in seen:
            seen.append(c.name)
    return seen


Trace = tuple[list[Call], Tensor]


def conv_layer(model: nn.Module, x: Tensor, name: str | None = None, *, trace: Trace | None = None) -> Site:
    """The layer the Grad-CAM family reads in ``model`` (see the module docstring); ``x`` is one
    input batch (one sample is enough), or ``trace`` what :func:`trace_calls` returned for it. An
    unknown or unsuitable ``name`` is a one-line :class:`~compaudit.errors.ProbeError`."""
    calls, out = trace if trace is not None else trace_calls(model, x)
    convs = _conv_names(calls)
    if name is None:
        head = _conv_head(calls, out)
        skip = calls[head[0]].module if head is not None else None
        for i in range(len(calls) - 1, -1, -1):
            c = calls[i]
            if isinstance(c.module, nn.Conv2d) and c.module is not skip and _spatial(c.shape):
                end = _block_end(calls, i)
                joined = _concatenation(calls, end)
                if joined is not None:
                    return Site(_made_in(model, calls[joined].name), calls[joined].module)
                return Site(c.name, calls[end].module)
        raise ProbeError(
            f"{type(model).__name__} has no Conv2d with a spatial output (more than 1x1) to read"
            f"{' besides its class conv' if head is not None else ''}; name a layer (layer: ...)"
        )
    modules = dict(model.named_modules())
    hint = _hint(convs)
    if name not in modules:
        raise ProbeError(f"layer {name!r} not found in {type(model).__name__}; {hint}")
    module = modules[name]
    if isinstance(module, nn.Identity):
        raise ProbeError(f"layer {name!r} of {type(model).__name__} is an identity layer; {hint}")
    mine = [c for c in calls if c.module is module]
    if not mine:
        raise ProbeError(f"layer {name!r} of {type(model).__name__} is not called by its forward; {hint}")
    if len(mine) > 1:
        raise ProbeError(
            f"layer {name!r} of {type(model).__name__} runs {len(mine)} times per forward pass; "
            f"name a module that runs once; {hint}"
        )
    shape = mine[0].shape
    if shape is None or len(shape) != 4:
        raise ProbeError(
            f"layer {name!r} of {type(model).__name__} outputs "
            f"{'shape ' + str(shape) if shape else 'no single tensor'}, not a (N, C, H, W) map; {hint}"
        )
    if isinstance(module, nn.Conv2d):
        module = calls[_block_end(calls, calls.index(mine[0]))].module
    return Site(name, module)


#: what directly follows a conv inside a block, and is read with it (what int8 fusion fuses)
_BLOCK_TAIL = (nn.BatchNorm2d, nn.ReLU)


def _block_end(calls: list[Call], i: int) -> int:
    """Index of the last call of the chain conv -> BatchNorm2d -> ReLU that starts at ``calls[i]``:
    each link a module of :data:`_BLOCK_TAIL` that runs once and whose input is the previous
    link's output (data flow, not just call order: a BN after a residual addition does not count)."""
    end = i
    while True:
        cur = calls[end]
        j = end + 1
        while j < len(calls) and _inside(calls[j].name, cur.name) and calls[j].name != cur.name:
            j += 1  # the current link's own submodules (weight quantizers, a fused BN)
        if j >= len(calls):
            return end
        nxt = calls[j]
        runs = sum(1 for c in calls if c.module is nxt.module)
        if (
            not isinstance(nxt.module, _BLOCK_TAIL)
            or runs != 1
            or cur.output is None
            or nxt.input is not cur.output
        ):
            return end
        end = j


def _runs(calls: list[Call], module: nn.Module) -> int:
    return sum(1 for c in calls if c.module is module)


def _past_own_calls(calls: list[Call], i: int) -> int:
    """Index of the first call after ``calls[i]`` that is not one of its submodules' calls."""
    j = i + 1
    while j < len(calls) and _inside(calls[j].name, calls[i].name) and calls[j].name != calls[i].name:
        j += 1
    return j


def _concatenation(calls: list[Call], end: int) -> int | None:
    """Index of the call whose output is the channel concatenation that the output of ``calls[end]``
    (a conv block's last call) enters, or None when that output is read as it is (see the module
    docstring): the fire module of a SqueezeNet, or in an FX graph the first module passing the
    fake-quantized ``torch.cat`` on unchanged."""
    out = calls[end].output
    if out is None or out.ndim != 4:
        return None
    k = _past_own_calls(calls, end)
    # fake-quantizers observing the block's output (an FX graph) pass it on, rounded
    while k < len(calls) and _transparent(calls[k].module) and calls[k].input is out:
        passed = calls[k].output
        if passed is None:
            return None
        out = passed
        k = _past_own_calls(calls, k)
    if k >= len(calls):
        return None
    fed = calls[k].input
    if (
        fed is None
        or fed is out
        or fed.ndim != 4
        or fed.shape[0] != out.shape[0]
        or fed.shape[2:] != out.shape[2:]
        or fed.shape[1] <= out.shape[1]
    ):
        return None
    c = int(out.shape[1])
    if not any(torch.equal(fed[:, o : o + c], out) for o in range(int(fed.shape[1]) - c + 1)):
        return None
    # the innermost module outputting the concatenation (containers are listed before children)
    made = [
        i for i in range(k) if calls[i].output is fed and calls[i].name and _runs(calls, calls[i].module) == 1
    ]
    if made:
        return made[-1]
    # made by a function (an FX graph): follow it through its fake-quantizer (which a torch.cat
    # shares with its inputs, so it runs more than once) to a module passing it on unchanged
    while k < len(calls) and calls[k].input is fed and _transparent(calls[k].module):
        nxt = calls[k].output
        if nxt is None:
            return None
        if nxt is fed and calls[k].name and _runs(calls, calls[k].module) == 1:
            return k
        fed = nxt
        k = _past_own_calls(calls, k)
    return None


def _made_in(model: nn.Module, name: str) -> str:
    """For a module of an FX graph that passes a function's output on (see :func:`_concatenation`),
    the module of the traced model whose ``forward`` called that function (its ``nn_module_stack``,
    innermost), so the site keeps the name it has in the float model; else ``name``."""
    from torch.fx import GraphModule, Node

    if not isinstance(model, GraphModule):
        return name
    for node in model.graph.nodes:
        if node.op != "call_module" or node.target != name:
            continue
        src = node.args[0] if node.args else None
        while (
            isinstance(src, Node)
            and src.op == "call_module"
            and _transparent(model.get_submodule(str(src.target)))
        ):
            src = src.args[0] if src.args else None
        stack = (
            src.meta.get("nn_module_stack") if isinstance(src, Node) and src.op == "call_function" else None
        )
        if stack:
            return str(list(stack)[-1])
    return name


def _conv2d_like(module: nn.Module) -> bool:
    """A 2-D convolution: ``nn.Conv2d`` (plain, fake-quant, QAT, fused QAT) or PyTorch's int8
    ``Conv2d`` (plain or fused with ReLU) of a converted model."""
    from torch.ao.nn.quantized import Conv2d as Int8Conv2d

    return isinstance(module, nn.Conv2d | Int8Conv2d)


def conv_head(model: nn.Module, x: Tensor, *, trace: Trace | None = None) -> tuple[str, str] | None:
    """The names of the class conv and of the global average pooling of ``model``'s conv classifier
    head (SqueezeNet: ``("classifier.1", "classifier.3")``; see the module docstring), or None when
    its head is not one. Also recognises the head of an int8 model converted by PyTorch (its
    quantized class conv). ``trace`` as in :func:`conv_layer`; the caller sets the train/eval mode."""
    calls, out = trace if trace is not None else trace_calls(model, x)
    head = _conv_head(calls, out)
    return None if head is None else (calls[head[0]].name, calls[head[1]].name)


def _conv_head(calls: list[Call], out: Tensor) -> tuple[int, int] | None:
    """Indices of the class conv and of the global average pooling of a conv classifier head (see
    the module docstring), or None when the model's head is not one."""
    if out.ndim != 2:
        return None
    classes = int(out.shape[1])
    layers = [c.name for c in calls if c.name and (_conv2d_like(c.module) or isinstance(c.module, nn.Linear))]

    def part_of_a_layer(name: str) -> bool:  # a layer's own submodules: weight quantizers
        return any(name != layer and _inside(name, layer) for layer in layers)

    pool = None
    for i in range(len(calls) - 1, 0, -1):
        c = calls[i]
        if _transparent(c.module) or part_of_a_layer(c.name):
            continue
        if pool is None and _global_pool(i, calls):
            pool = i
            continue
        if pool is not None and _inside(calls[pool].name, c.name):
            continue  # a container the pooling sits in
        if pool is None:
            return None  # the last module that computes is no global average pooling
        if isinstance(c.module, _BLOCK_TAIL):
            continue  # per channel: class c's map stays channel c
        shape = calls[pool].shape
        if (
            _conv2d_like(c.module)
            and c.shape is not None
            and c.shape[1] == classes
            and shape is not None
            and shape[1] == classes
            and _runs(calls, c.module) == 1
        ):
            return i, pool
        return None
    return None


def _hint(convs: list[str]) -> str:
    if not convs:
        return "the model has no Conv2d layer"
    shown = convs[-4:]
    more = f" (last {len(shown)} of {len(convs)})" if len(convs) > len(shown) else ""
    return f"conv layers{more}: {', '.join(shown)}"


def _transparent(module: nn.Module) -> bool:
    """Modules that change neither values nor layout of a head's features in eval mode."""
    from torch.ao.quantization import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    kinds = (nn.Identity, nn.Flatten, nn.Dropout, FakeQuantizeBase, ObserverBase, ActivationQuantizer)
    return isinstance(module, kinds)


def _inside(name: str, ancestor: str) -> bool:
    return ancestor == "" or name == ancestor or name.startswith(ancestor + ".")


def _global_pool(i: int, calls: list[Call]) -> bool:
    call = calls[i]
    m = call.module
    if call.shape is None or len(call.shape) != 4 or call.shape[2:] != (1, 1):
        return False
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return True
    if isinstance(m, nn.AvgPool2d):
        # an AvgPool2d is global when its window covers the whole input without padding
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
        shape = _input_shape(i, calls)
        return shape is not None and tuple(k) == shape[2:] and tuple(pad) == (0, 0)
    return False


def _input_shape(i: int, calls: list[Call]) -> tuple[int, ...] | None:
    """Shape of what entered ``calls[i]``: the output of the previous call that is not its ancestor."""
    call = calls[i]
    for prev in reversed(calls[:i]):
        if not _inside(call.name, prev.name) and prev.shape is not None:
            return prev.shape
    return None


def gap_head(model: nn.Module, x: Tensor, *, trace: Trace | None = None) -> Site:
    """The global-average-pooling module of a CAM head (CAM reads the feature map entering it):
    GAP + one linear layer (``head == "linear"``) or a conv classifier head (``head == "conv"``);
    :class:`NotApplicableError` for any other head. ``trace`` as in :func:`conv_layer`."""
    calls, out = trace if trace is not None else trace_calls(model, x)
    what = type(model).__name__
    need = "cam needs a global-average-pooling + linear head (or a class conv averaged globally)"
    head = _conv_head(calls, out)
    if head is not None:
        pool = calls[head[1]]
        return Site(pool.name, pool.module, head="conv")
    last = max((i for i, c in enumerate(calls) if isinstance(c.module, nn.Linear)), default=None)
    if last is None:
        raise NotApplicableError(f"{need}; {what} has no Linear layer and no conv classifier head")
    linear = calls[last]
    for after in calls[last + 1 :]:
        if not _inside(after.name, linear.name) and not _transparent(after.module):
            raise NotApplicableError(
                f"{need}; in {what} the last Linear ({linear.name}) is followed by "
                f"{type(after.module).__name__} ({after.name})"
            )
    for i in range(last - 1, -1, -1):
        before = calls[i]
        if _inside(linear.name, before.name) or _transparent(before.module):
            continue  # a container the linear layer sits in, or a shape-only / quantization module
        if _global_pool(i, calls):
            in_features = getattr(linear.module, "in_features", None)
            assert before.shape is not None
            if in_features == before.shape[1] and out.ndim == 2:
                return Site(before.name, before.module, head="linear")
        raise NotApplicableError(
            f"{need}; in {what} the last Linear ({linear.name}) is fed by "
            f"{type(before.module).__name__} ({before.name or 'the model'})"
        )
    raise NotApplicableError(f"{need}; nothing feeds {what}'s last Linear")
