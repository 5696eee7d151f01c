"""Features of an ONNX Runtime variant read from ONNX Runtime's own intermediate values.

The embedding probe reads a layer's features with forward hooks on named modules
(:mod:`compaudit.explain.embedding`); an ONNX file has no modules. :func:`runtime_features` builds
a stand-in that has them: a module tree with the float model's names and module types (an
``nn.Linear`` stays an ``nn.Linear`` to :func:`isinstance`, a ReLU a ReLU, so the aliases resolve
as on the float model) and no weights, whose forward runs ONNX Runtime and *replays* the float
model's module calls in their order, each module called with the runtime's value of its input and
returning the runtime's value of its output. The hooks then see the runtime's values.

**Where the mapping comes from.** ``torch.onnx.export(..., dynamo=True)`` records on every node the
torch modules it was traced in (metadata ``pkg.torch.onnx.name_scopes``: ``['', 'classifier',
'classifier.6', 'linear_2']``); ``quant_pre_process`` and ``quantize_static`` keep the nodes' value
names and metadata and only add Q/DQ nodes (which carry none). A module's output is the one value
its nodes produce that a node outside it (or the graph's output) consumes; its input the one
non-constant value its nodes consume and do not produce. A module without nodes of its own
(``Dropout`` in eval mode, ``Identity``) returns its input tensor itself, and a container its last
child's: such outputs are taken from the module the tensor came from. ``onnx_int8`` maps on the
float export it quantized (:func:`scope_table` of it travels with the int8 model): there the ReLU
after a conv is the value ``relu``, which stays in the int8 file even where the quantizer removed
the ReLU node itself (its output's QuantizeLinear clamps at the zero point).

**Every mapped value is checked**: the candidate values are read from the runtime on the probe's
first images and compared with the float model's tensors on them: equal to 1e-3 (relative) in a
float file, within 25 % relative L2 error in a quantized one (a wrong layer differs by far more:
a ReLU's input and output, a conv before and after its BatchNorm). A value that fails, or has no
candidate, is *unread*: the module is still called (the order and number of calls, which define the
aliases, are the float model's), but with None, and the stand-in lists it in ``unread_layers``
(``(module, "input" | "output")`` → why), which the probe turns into a skipped layer with a note.
When no value maps (a file without the exporter's metadata, QOperator int8 whose QLinear* nodes
carry none) there is no stand-in and the probe falls back to the surrogate (``surrogate`` = 1).

**Which value of an int8 graph is read.** In a QDQ graph a float value ``v`` is followed by
``QuantizeLinear`` → ``DequantizeLinear``, and ONNX Runtime fuses each ``DQ → op → Q`` group into
an int8 kernel: the float ``v`` itself is never computed, the uint8 tensor ``Q(v)`` is. The stand-in
reads that uint8 tensor (the QuantizeLinear's output, added as a graph output) and dequantizes it
with the node's scale and zero point, ``(q - zero_point) * scale``: exactly the DequantizeLinear
output, the float value the next int8 kernel sees. It does not add the DequantizeLinear outputs or
the float ``v`` as graph outputs, since a graph output inside a fusable group can stop ONNX Runtime
from fusing it, which would change what is computed.

**The audited file is never changed**: the values are added as outputs of a *copy* of it, opened
with the same session options, and its logits are checked against the audited session's (else
there is no stand-in): exactly equal for a quantized file, so the int8 features are those of the
computation that is audited; to float rounding for a float file, where a graph output can keep
ONNX Runtime from fusing a group of ops (:data:`LOGITS_TOLERANCE`).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from compaudit.compress.runtime import quiet_export
from compaudit.inference import eval_mode


class OrtFile(Protocol):
    """What the stand-in reads of an ONNX Runtime model (:class:`compaudit.compress.onnx.OrtModel`,
    which imports this module: a protocol, not an import, keeps the two apart)."""

    input_name: str
    batch: int | None
    scopes: ScopeTable | None

    @property
    def data(self) -> bytes: ...

    @property
    def runtime(self) -> str: ...

    def describe(self) -> str: ...

    def session_options(self, threads: int) -> Any: ...

    def __call__(self, x: Tensor) -> Tensor: ...


log = logging.getLogger("compaudit")

#: the exporter's metadata key naming the torch modules a node was traced in
NAME_SCOPES = "pkg.torch.onnx.name_scopes"

#: relative L2 error up to which a quantized runtime's value is taken for the float model's tensor
QUANTIZED_TOLERANCE = 0.25
#: relative tolerance of a float runtime's value (it agrees with PyTorch to about 1e-6)
FLOAT_TOLERANCE = 1e-3
#: how far (relative to the largest logit) a float file's logits may move when values are added as
#: graph outputs: an output inside a fusable group (Conv + Add + Relu) stops ONNX Runtime from fusing
#: it, which changes float rounding (1e-8 of logits of 0.04 on ResNet-18); a quantized file's
#: logits must not move at all
LOGITS_TOLERANCE = 1e-5

_QUANTIZED_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
)


# --------------------------------------------------------------------------- the exporter's scopes


@dataclass(frozen=True)
class ScopeNode:
    """One node of the file the mapping is made on: its value names and the modules it was traced
    in (qualified names, outermost first, the root left out)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class ScopeTable:
    """What the mapping needs of an exported file, without its weights (an int8 model keeps the
    table of the float export it was quantized from)."""

    nodes: tuple[ScopeNode, ...]
    graph_outputs: tuple[str, ...]
    #: initializers and constants: never a module's input
    fixed: frozenset[str]

    def candidates(self) -> tuple[dict[str, str], dict[str, str]]:
        """(inputs, outputs): module name → the one value that enters / leaves its nodes, for the
        modules where there is exactly one."""
        members: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for scope in node.scopes:
                members.setdefault(scope, []).append(i)
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                consumers.setdefault(v, []).append(i)
        outputs_of_graph = set(self.graph_outputs)
        ins: dict[str, str] = {}
        outs: dict[str, str] = {}
        for module, idx in members.items():
            inside = set(idx)
            produced = [v for i in idx for v in self.nodes[i].outputs if v]
            made = set(produced)
            leaving = [
                v
                for v in dict.fromkeys(produced)
                if v in outputs_of_graph or any(c not in inside for c in consumers.get(v, []))
            ]
            entering = [
                v
                for v in dict.fromkeys(v for i in idx for v in self.nodes[i].inputs)
                if v and v not in made and v not in self.fixed
            ]
            if len(leaving) == 1:
                outs[module] = leaving[0]
            if len(entering) == 1:
                ins[module] = entering[0]
        return ins, outs


def scope_table(proto: Any) -> ScopeTable | None:
    """The :class:`ScopeTable` of an ONNX model, or None when no node carries the exporter's
    module scopes (another exporter, or a file whose metadata was stripped)."""
    nodes = []
    found = False
    for node in proto.graph.node:
        scopes: tuple[str, ...] = ()
        for prop in node.metadata_props:
            if prop.key == NAME_SCOPES:
                try:
                    parsed = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(parsed, list | tuple) and all(isinstance(s, str) for s in parsed):
                    # the root '' first, the FX node's own name last: the modules lie between
                    scopes = tuple(s for s in parsed[:-1] if s)
                    found = True
        nodes.append(ScopeNode(tuple(node.input), tuple(node.output), scopes))
    if not found:
        return None
    fixed = {i.name for i in proto.graph.initializer}
    fixed.update(o for n in proto.graph.node if n.op_type == "Constant" for o in n.output)
    return ScopeTable(tuple(nodes), tuple(o.name for o in proto.graph.output), frozenset(fixed))


# --------------------------------------------------------------------------- reading a value


@dataclass(frozen=True)
class Read:
    """How one value is read from the runtime: graph value ``value``, dequantized with ``scale``
    and ``zero_point`` when it is the uint8/int8 output of a QuantizeLinear."""

    value: str
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None

    def decode(self, array: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return np.asarray(array, dtype=np.float32)
        zp = self.zero_point if self.zero_point is not None else np.zeros((), np.float32)
        out: np.ndarray = ((array.astype(np.float32) - zp.astype(np.float32)) * self.scale).astype(np.float32)
        return out


def _scalar(inits: dict[str, Any], name: str | None) -> np.ndarray | None:
    from onnx import numpy_helper

    if name is None or name not in inits:
        return None
    arr = numpy_helper.to_array(inits[name])
    return arr.reshape(()) if arr.size == 1 else None


def resolve(proto: Any, value: str) -> Read | None:
    """How ``value`` (a name in the file the mapping was made on) is read in the runtime's file
    ``proto``: through the QuantizeLinear that consumes it (or the one a DequantizeLinear that
    produces it reads), else as it is; None when the file does not compute it."""
    inits = {i.name: i for i in proto.graph.initializer}
    inputs = {i.name for i in proto.graph.input if i.name not in inits}
    producers = {o: n for n in proto.graph.node for o in n.output}
    if value not in producers and value not in inputs:
        return None
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input and node.input[0] == value:
            scale = _scalar(inits, node.input[1] if len(node.input) > 1 else None)
            zp = _scalar(inits, node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
            if scale is not None and zp is not None:
                return Read(node.output[0], scale.astype(np.float32), zp)
    producer = producers.get(value)
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] not in inits:
        scale = _scalar(inits, producer.input[1] if len(producer.input) > 1 else None)
        zp = _scalar(inits, producer.input[2]) if len(producer.input) > 2 else np.zeros((), np.uint8)
        if scale is not None and zp is not None:
            return Read(producer.input[0], scale.astype(np.float32), zp)
    return Read(value)


def is_quantized(proto: Any) -> bool:
    """Whether the file computes in integers (QDQ pairs or QLinear* operators)."""
    return any(n.op_type in _QUANTIZED_OPS or n.op_type.startswith("QLinear") for n in proto.graph.node)


# --------------------------------------------------------------------------- the float model's calls


@dataclass
class _Call:
    """One module call of the float model: its name, the calls made inside it, its first tensor
    argument and its output (as recorded on the example)."""

    name: str
    parent: int  # -1: the root
    children: list[int] = field(default_factory=list)
    input: Tensor | None = None
    output: Tensor | None = None


def _record(reference: nn.Module, example: Tensor) -> tuple[list[_Call], list[int], list[int], Tensor]:
    """The float model's module calls on ``example`` in start order, the root's direct calls, the
    order the calls ended in, and its output."""
    calls: list[_Call] = []
    stack: list[int] = []
    ended: list[int] = []
    root: list[int] = []
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: Any) -> None:
            parent = stack[-1] if stack else -1
            first = args[0] if args and isinstance(args[0], Tensor) else None
            calls.append(_Call(name, parent, input=first))
            (calls[parent].children if parent >= 0 else root).append(len(calls) - 1)
            stack.append(len(calls) - 1)

        return hook

    def post(_m: nn.Module, _args: Any, out: Any) -> None:
        i = stack.pop()
        calls[i].output = out if isinstance(out, Tensor) else None
        ended.append(i)

    held = next(reference.parameters(), None)
    device = held.device if held is not None else torch.device("cpu")
    try:
        for name, m in reference.named_modules():
            if name:
                handles.append(m.register_forward_pre_hook(pre(name)))
                handles.append(m.register_forward_hook(post))
        with eval_mode(reference), torch.no_grad():
            out = reference(example.to(device))
    finally:
        for h in handles:
            h.remove()
    return calls, root, ended, out


def _close(got: np.ndarray, want: Tensor, quantized: bool) -> bool:
    """Whether the runtime's value ``got`` (batch first) is the float model's tensor ``want``."""
    w = want.detach().float().cpu().reshape(len(want), -1).numpy().astype(np.float64)
    if got.ndim == 0 or got.shape[0] != len(want) or got.size != w.size:
        return False
    g = got.reshape(w.shape).astype(np.float64)
    if not np.isfinite(g).all():
        return False
    norm = float(np.linalg.norm(w))
    if quantized:
        return float(np.linalg.norm(g - w)) <= QUANTIZED_TOLERANCE * max(norm, 1e-12)
    scale = max(float(np.abs(w).max(initial=0.0)), 1e-6)
    return float(np.abs(g - w).max(initial=0.0)) <= FLOAT_TOLERANCE * scale


def _same_logits(got: np.ndarray, audited: np.ndarray, quantized: bool) -> bool:
    """Whether the feature session's logits are the audited session's: exactly for a quantized
    file; to float rounding (:data:`LOGITS_TOLERANCE`) for a float one."""
    if got.shape != audited.shape:
        return False
    if quantized:
        return bool(np.array_equal(got, audited))
    scale = max(float(np.abs(audited).max(initial=0.0)), 1e-6)
    return float(np.abs(got - audited).max(initial=0.0)) <= LOGITS_TOLERANCE * scale


# --------------------------------------------------------------------------- the runtime's values


class _Values:
    """The runtime's file with ``reads`` added as graph outputs, run with the audited session's
    options; a fixed-batch file is fed in chunks of its batch, the last one zero-padded."""

    def __init__(self, model: OrtFile, reads: list[Read]) -> None:
        import onnx

        proto = onnx.load_from_string(model.data)
        self.logits = proto.graph.output[0].name
        self.input_name = model.input_name
        present = {o.name for o in proto.graph.output}
        for read in reads:
            if read.value not in present and read.value != self.input_name:
                proto.graph.output.append(onnx.ValueInfoProto(name=read.value))
                present.add(read.value)
        self.data = proto.SerializeToString()
        self.model = model
        self.reads = reads
        self.names = list(
            dict.fromkeys([self.logits, *(r.value for r in reads if r.value != self.input_name)])
        )
        self._sessions: dict[int, Any] = {}

    def _session(self) -> Any:
        import onnxruntime as ort

        threads = torch.get_num_threads()
        found = self._sessions.get(threads)
        if found is None:
            so = self.model.session_options(threads)
            found = ort.InferenceSession(self.data, so, providers=["CPUExecutionProvider"])
            self._sessions[threads] = found
        return found

    def run(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The logits and each read's (decoded) value on the float32 batch ``x``."""
        sess = self._session()
        batch = self.model.batch
        if batch is None or len(x) == batch:
            outs = sess.run(self.names, {self.input_name: x})
        else:
            parts = []
            for start in range(0, len(x), batch):
                chunk = x[start : start + batch]
                n = len(chunk)
                if n < batch:
                    chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
                parts.append([o[:n] for o in sess.run(self.names, {self.input_name: chunk})])
            outs = [np.concatenate([p[i] for p in parts]) for i in range(len(self.names))]
        by_name = dict(zip(self.names, outs, strict=True))
        by_name[self.input_name] = x
        return by_name[self.logits], [r.decode(by_name[r.value]) for r in self.reads]


# --------------------------------------------------------------------------- the stand-in


class _Replay:
    """What the stand-in's modules share: the float model's calls, which runtime value each call's
    input and output is (an index into the reads), and the values of the batch being run."""

    def __init__(
        self, calls: list[_Call], root: list[int], slots: dict[tuple[int, str], int], values: _Values
    ) -> None:
        self.children = [c.children for c in calls]
        self.names = [c.name for c in calls]
        self.shapes = {
            (i, side): tuple(t.shape[1:])
            for i, c in enumerate(calls)
            for side, t in (("input", c.input), ("output", c.output))
            if t is not None
        }
        self.root = root
        self.slots = slots
        self.values = values
        self.modules: dict[str, nn.Module] = {}
        self.current: list[Tensor] = []
        self.entering = -1

    def value(self, call: int, side: str) -> Tensor | None:
        slot = self.slots.get((call, side))
        if slot is None:
            return None
        t = self.current[slot]
        return t.reshape(len(t), *self.shapes[(call, side)])

    def play(self, children: list[int]) -> None:
        for c in children:
            self.entering = c
            self.modules[self.names[c]](self.value(c, "input"))

    def run(self, x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits, reads = self.values.run(arr)
        self.current = [torch.from_numpy(np.ascontiguousarray(r)) for r in reads]
        try:
            self.play(self.root)
        finally:
            self.current = []
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))


def _module_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Tensor | None:
    replay: _Replay = self.__dict__["_runtime_replay"]
    call = replay.entering
    replay.play(replay.children[call])
    return replay.value(call, "output")


def _root_forward(self: nn.Module, x: Tensor) -> Tensor:
    replay: _Replay = self.__dict__["_runtime_replay"]
    return replay.run(x).to(x.device)


def _extra_repr(self: nn.Module) -> str:
    return "runtime values"


_CLASSES: dict[tuple[type, bool], type] = {}


def _stand_in_class(cls: type[nn.Module], root: bool) -> type[nn.Module]:
    """A subclass of ``cls`` whose forward returns the runtime's values (isinstance checks hold)."""
    key = (cls, root)
    found = _CLASSES.get(key)
    if found is None:
        body = {
            "forward": _root_forward if root else _module_forward,
            "extra_repr": _extra_repr,
            "__module__": __name__,
            "__qualname__": cls.__qualname__,
        }
        # the float model's class name: messages about the layers name the model as it is known
        found = _CLASSES[key] = type(cls.__name__, (cls,), body)
    return found


def _stand_in(cls: type[nn.Module], replay: _Replay, root: bool) -> nn.Module:
    sub = _stand_in_class(cls, root)
    module: nn.Module = object.__new__(sub)
    nn.Module.__init__(module)  # hooks and submodules; no parameters, no buffers
    module.__dict__["_runtime_replay"] = replay
    return module


def runtime_features(model: OrtFile, reference: nn.Module, example: Tensor) -> nn.Module | None:
    """A module tree with ``reference``'s names and types whose modules, when it runs, see ONNX
    Runtime's values of ``model``'s file (see the module docstring), or None when no value of the
    float model can be found in the file. ``reference``: the float model the file came from (the
    variant's surrogate); ``example``: a few inputs the mapping is checked on."""
    import onnx

    run_proto = onnx.load_from_string(model.data)
    table = model.scopes if model.scopes is not None else scope_table(run_proto)
    if table is None:
        return None
    quantized = is_quantized(run_proto)
    ex = example.detach().cpu().float()
    calls, root, ended, _ = _record(reference, ex)
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    ins, outs = table.candidates()

    # the candidates, resolved in the runtime's file, read once on the example and checked
    reads: list[Read] = []
    slot_of: dict[str, int] = {}
    proposed: dict[tuple[int, str], int] = {}
    for i, c in enumerate(calls):
        if counts[c.name] != 1:
            continue  # several calls of one module: ambiguous (the probe skips it anyway)
        for side, found in (("input", ins.get(c.name)), ("output", outs.get(c.name))):
            read = resolve(run_proto, found) if found is not None else None
            if read is None:
                continue
            if read.value not in slot_of:
                slot_of[read.value] = len(reads)
                reads.append(read)
            proposed[(i, side)] = slot_of[read.value]
    if not reads:
        return None
    with quiet_export():
        _, got = _Values(model, reads).run(ex.numpy())
    slots: dict[tuple[int, str], int] = {}
    for (i, side), slot in proposed.items():
        want = calls[i].input if side == "input" else calls[i].output
        if want is not None and _close(got[slot], want, quantized):
            slots[(i, side)] = slot
    # a module that returns a tensor it was given (Dropout, Identity) or one a module inside it
    # made (a container): the value of that tensor
    by_tensor: dict[int, int] = {}
    for i in ended:
        c = calls[i]
        if (i, "input") not in slots and c.input is not None and id(c.input) in by_tensor:
            slots[(i, "input")] = by_tensor[id(c.input)]
        if (i, "input") in slots and c.input is not None:
            by_tensor.setdefault(id(c.input), slots[(i, "input")])
        if (i, "output") not in slots and c.output is not None and counts[c.name] == 1:
            if id(c.output) in by_tensor:
                slots[(i, "output")] = by_tensor[id(c.output)]
            elif c.input is not None and c.output is c.input and (i, "input") in slots:
                slots[(i, "output")] = slots[(i, "input")]
        if (i, "output") in slots and c.output is not None:
            by_tensor[id(c.output)] = slots[(i, "output")]
    if not slots:
        return None

    # the values the stand-in reads: only the checked ones
    used = sorted(set(slots.values()))
    renumber = {old: new for new, old in enumerate(used)}
    values = _Values(model, [reads[s] for s in used])
    replay = _Replay(calls, root, {k: renumber[s] for k, s in slots.items()}, values)
    with quiet_export():
        logits, _ = values.run(ex.numpy())
    audited = model(ex).numpy()
    if not _same_logits(logits, audited, quantized):
        log.info("%s: the runtime's values change its logits; features from the surrogate", model.describe())
        return None

    facade = _stand_in(type(reference), replay, root=True)
    facade.__dict__["compute_device"] = torch.device("cpu")
    built: dict[str, nn.Module] = {"": facade}
    for name, module in reference.named_modules():
        if not name:
            continue
        parent_name, _, leaf = name.rpartition(".")
        stand = _stand_in(type(module), replay, root=False)
        built[parent_name].add_module(leaf, stand)
        built[name] = stand
    replay.modules = built
    unread: dict[tuple[str, str], str] = {}
    for i, c in enumerate(calls):
        if counts[c.name] != 1:
            continue
        for side in ("input", "output"):
            if (i, side) not in slots:
                unread[(c.name, side)] = (
                    f"{model.runtime} computes no value for the {side} of module {c.name!r} "
                    "(fused or folded away, or not traceable to it)"
                )
    facade.__dict__["unread_layers"] = unread
    facade.__dict__["runtime"] = model.describe()
    return facade
