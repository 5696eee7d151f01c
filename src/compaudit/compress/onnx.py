"""ONNX Runtime deployment targets: ``onnx`` (fp32) and ``onnx_int8`` (static QDQ int8).

``onnx`` exports the chain's float model with ``torch.onnx.export(..., dynamo=True)`` (a dynamic
batch axis) and runs the file in ONNX Runtime's CPU execution provider. Its logits equal PyTorch's
to about 1e-7 (``tests/test_runtimes.py`` holds them to 1e-4); what the audit then sees is the
runtime's own graph optimisations (fusions, layouts) on the file that ships.

``onnx_int8`` is ONNX Runtime's post-training static quantization of that file, as its docs
prescribe: ``quant_pre_process`` (symbolic shape inference and the ONNX optimiser) first, then
``quantize_static`` with QDQ nodes (``QuantizeLinear``/``DequantizeLinear`` pairs, which the CPU
provider fuses into int8 kernels), per-channel symmetric int8 weights, uint8 activations calibrated
(min-max) on the same training batches ``quantize_int8`` sees — seed 001's PTSQ and seed 003's W8A8
(``001_5343f4a55429e52f.txt`` §3.1.3, ``003_7af53373951fb382.txt``) in the runtime people ship.
``format: qoperator`` writes QLinearConv/QLinearMatMul operators instead of QDQ pairs.

Both run in sessions with ``torch.get_num_threads()`` intra-op threads, one inter-op thread,
deterministic compute and, except while latency is measured, no spinning idle threads;
``graph_optimization`` sets ONNX Runtime's level (``all`` by default: what a deployment would
use). The variant's surrogate (its gradients for BPDA and saliency) is the float
model the file was exported from; the embedding probe's features are ONNX Runtime's own
intermediate values under that model's layer names (:meth:`OrtModel.feature_graph`,
:mod:`compaudit.compress.onnx_features`). GPU: ``onnxruntime-gpu`` replaces ``onnxruntime`` (the two
conflict) and its ``CUDAExecutionProvider`` is then a user's choice; compaudit runs the CPU one.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from torch import Tensor, nn

from compaudit.compress.base import METHODS, CompressContext, MethodParams
from compaudit.compress.onnx_features import ScopeTable, scope_table
from compaudit.compress.quantize import _example as example_input  # quantize_int8's trace input
from compaudit.compress.runtime import (
    RuntimeModel,
    RuntimeStep,
    Session,
    calibration_batches,
    export_onnx,
    quiet_export,
)
from compaudit.errors import MethodError

log = logging.getLogger("compaudit")

#: ONNX Runtime's graph optimisation levels by name
_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

GraphOptimization = Literal["disabled", "basic", "extended", "all"]


class OrtModel(RuntimeModel):
    """An ONNX file run by ONNX Runtime's CPU execution provider."""

    runtime: ClassVar[str] = "onnxruntime"

    def __init__(
        self,
        data: bytes,
        *,
        precision: str,
        graph_optimization: GraphOptimization = "all",
        name: str = "model.onnx",
        scopes: ScopeTable | None = None,
    ) -> None:
        import onnx

        proto = onnx.load_from_string(data)
        batch = _fixed_batch(proto)
        super().__init__({name: data}, precision=precision, batch=batch)
        self.graph_optimization = graph_optimization
        #: the exporter's module scopes the features are mapped with (None: the file's own); an
        #: int8 file keeps those of the float export it was quantized from
        self.scopes = scopes
        initializers = {i.name for i in proto.graph.initializer}
        self.input_name = next(i.name for i in proto.graph.input if i.name not in initializers)

    @property
    def data(self) -> bytes:
        return next(iter(self.files.values()))

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def _open(self, threads: int, *, spinning: bool) -> Session:
        import onnxruntime as ort

        so = self.session_options(threads, spinning=spinning)
        sess = ort.InferenceSession(self.data, so, providers=["CPUExecutionProvider"])
        name = self.input_name
        out = sess.get_outputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            result: np.ndarray = sess.run([out], {name: x})[0]
            return result

        return run

    def session_options(self, threads: int, *, spinning: bool = False) -> Any:
        """The options of this file's sessions (:func:`session_options`)."""
        return session_options(self.graph_optimization, threads, spinning=spinning)

    def weight_zeros(self) -> tuple[int, int]:
        import onnx

        return onnx_weight_zeros(onnx.load_from_string(self.data))

    def feature_graph(self, reference: nn.Module, example: Tensor) -> nn.Module | None:
        """The module to hook for features (:mod:`compaudit.compress.onnx_features`): the float
        model's module tree, names and types (``reference``: the float model the file came from),
        whose modules see ONNX Runtime's own values of this file when it runs, checked on
        ``example``; None when the file's values cannot be mapped to ``reference``'s modules
        (then the features come from the surrogate). The file itself is not changed."""
        from compaudit.compress.onnx_features import runtime_features

        try:
            return runtime_features(self, reference, example)
        except Exception as exc:  # a mapping that fails is a fallback, never a failed probe
            log.info("%s: no runtime features (%s: %s)", self.describe(), type(exc).__name__, exc)
            return None


def session_options(graph_optimization: GraphOptimization, threads: int, *, spinning: bool = False) -> Any:
    """The options of every ONNX Runtime session here: ``threads`` intra-op threads, one inter-op
    thread, sequential and deterministic, the given graph optimisation level; idle intra-op threads
    spin between calls only with ``spinning`` (:mod:`compaudit.compress.runtime` says why)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[graph_optimization])
    so.log_severity_level = 3
    so.use_deterministic_compute = True
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


def _fixed_batch(proto: Any) -> int | None:
    """The first input's batch size when the file fixes it, else None."""
    initializers = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in initializers)
    dims = inp.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def onnx_weight_zeros(proto: Any) -> tuple[int, int]:
    """(zero, total) weights of every Conv, ConvTranspose, Gemm and MatMul whose weight input is an
    initializer, directly or through a ``DequantizeLinear`` (then zero means: equal to its zero
    point, which is 0 for symmetric int8 weights)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    zeros = total = 0
    seen: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.input[1]
        producer = producers.get(name)
        while producer is not None and producer.op_type in ("Transpose", "Reshape", "Identity"):
            name = producer.input[0]
            producer = producers.get(name)
        if name in seen:
            continue
        if name in inits:
            w = numpy_helper.to_array(inits[name])
            zeros += int((w == 0).sum())
            total += w.size
            seen.add(name)
        elif producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in inits:
            q = numpy_helper.to_array(inits[producer.input[0]]).astype(np.int64)
            zp: Any = 0
            if len(producer.input) > 2 and producer.input[2] in inits:
                zp = numpy_helper.to_array(inits[producer.input[2]]).astype(np.int64)
                if zp.ndim == 1 and q.ndim > 1:
                    axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
                    shape = [1] * q.ndim
                    shape[axis] = -1
                    zp = zp.reshape(shape)
            zeros += int((q == zp).sum())
            total += q.size
            seen.add(name)
    return zeros, total


class OnnxParams(MethodParams):
    graph_optimization: GraphOptimization = Field(
        default="all", description="ONNX Runtime's graph optimisation level"
    )


@METHODS.register("onnx")
class Onnx(RuntimeStep[OnnxParams]):
    """The float model exported to ONNX (dynamo exporter, dynamic batch) and run in ONNX Runtime."""

    Params: ClassVar[type[MethodParams]] = OnnxParams

    def _runtime_model(self, model: nn.Module, ctx: CompressContext) -> RuntimeModel:
        p = self.params
        data = export_onnx(model, example_input(ctx, 2), what=self.name)
        return OrtModel(data, precision="fp32", graph_optimization=p.graph_optimization)


class OnnxInt8Params(OnnxParams):
    calibration_batches: int = Field(default=32, ge=1, description="training batches seen by calibration")
    batch_size: int = Field(default=32, ge=1, description="calibration batch size")
    per_channel: bool = Field(default=True, description="one weight scale per output channel")
    reduce_range: bool = Field(
        default=False, description="7-bit weights, for CPUs without VNNI (ONNX Runtime's own advice)"
    )
    format: Literal["qdq", "qoperator"] = Field(
        default="qdq", description="QuantizeLinear/DequantizeLinear pairs, or QLinear* operators"
    )
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="how activation ranges are calibrated"
    )


@METHODS.register("onnx_int8")
class OnnxInt8(RuntimeStep[OnnxInt8Params]):
    """ONNX Runtime static int8 quantization (QDQ, per-channel weights, calibrated activations)."""

    Params: ClassVar[type[MethodParams]] = OnnxInt8Params

    def weight_bits(self) -> float | None:
        return 8.0

    def _runtime_model(self, model: nn.Module, ctx: CompressContext) -> RuntimeModel:
        p: Any = self.params
        data = export_onnx(model, example_input(ctx, 2), what=self.name)
        calib = calibration_batches(ctx, p.calibration_batches, p.batch_size)
        quantized = quantize_onnx(
            data,
            calib,
            per_channel=p.per_channel,
            reduce_range=p.reduce_range,
            fmt=p.format,
            calibrate_method=p.calibrate_method,
            what=self.name,
        )
        import onnx

        # the features are mapped on the float export's module scopes (see onnx_features)
        scopes = scope_table(onnx.load_from_string(data))
        return OrtModel(quantized, precision="int8", graph_optimization=p.graph_optimization, scopes=scopes)


def quantize_onnx(
    data: bytes,
    calibration: list[np.ndarray],
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    fmt: str = "qdq",
    calibrate_method: str = "minmax",
    what: str = "onnx_int8",
) -> bytes:
    """ONNX Runtime static quantization of the ONNX file ``data``: ``quant_pre_process``, then
    ``quantize_static`` calibrated on ``calibration`` (float32 NCHW batches); the int8 file's bytes."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load_from_string(data)
    initializers = {i.name for i in proto.graph.initializer}
    input_name = next(i.name for i in proto.graph.input if i.name not in initializers)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter([{input_name: x} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(data)
        try:
            with quiet_export():
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
                quantize_static(
                    str(pre),
                    str(out),
                    Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
        except Exception as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise MethodError(
                f"{what}: ONNX Runtime could not quantize the model ({type(exc).__name__}: {first[:300]})"
            ) from None
        return out.read_bytes()
