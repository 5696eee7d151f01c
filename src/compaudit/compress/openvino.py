"""OpenVINO deployment targets: ``openvino`` (fp32) and ``openvino_int8`` (NNCF post-training int8).

Both start from the ONNX file of :func:`~compaudit.compress.runtime.export_onnx` (the same export
as the ONNX Runtime targets), converted with ``openvino.convert_model``. ``openvino_int8`` is NNCF's
post-training quantization (``nncf.quantize``: min-max ranges on the training batches
``quantize_int8`` calibrates on, bias correction, the ``performance`` preset: symmetric int8
weights and activations), the flow OpenVINO documents for int8 deployment. NNCF's *fast* bias
correction (its default) is off by default here: on the small digits CNNs it moved biases about ten
times more than the full bias correction does, and the int8 model agreed with the float one on 90%
of the test images instead of 100% (``tests/test_runtimes.py``). The model that ships is the IR
pair (``model.xml`` + ``model.bin``, saved with ``openvino.save_model``, weights not
compressed further), and the IR is what is compiled and audited.

Sessions are compiled for the CPU plugin with ``INFERENCE_NUM_THREADS`` = ``torch.get_num_threads()``
and ``INFERENCE_PRECISION_HINT = f32``: on a CPU with bf16 (AVX-512 BF16, AMX) OpenVINO would
otherwise compute the float parts in bf16, which is not the fp32 model. The variant's surrogate is
the float model the IR came from.

Needs the ``openvino`` extra (``pip install 'compaudit[openvino]'``: openvino and nncf); an
experiment that uses these targets without it is refused at validation, in one line.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from torch import nn

from compaudit.compress.base import METHODS, CompressContext, MethodParams
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

#: the extra that installs OpenVINO and NNCF (import name -> extra)
OPENVINO = {"openvino": "openvino"}
OPENVINO_NNCF = {"openvino": "openvino", "nncf": "openvino"}


class OvModel(RuntimeModel):
    """An OpenVINO IR (``model.xml`` + ``model.bin``) compiled for the CPU plugin in fp32 precision."""

    runtime: ClassVar[str] = "openvino"

    def __init__(self, xml: bytes, weights: bytes, *, precision: str) -> None:
        super().__init__({"model.xml": xml, "model.bin": weights}, precision=precision, batch=None)
        model = self._read()
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and shape[0].is_static:
            self.batch = int(shape[0].get_length())

    def version(self) -> str:
        import openvino

        return str(openvino.__version__).split("-")[0]

    def _read(self) -> Any:
        import openvino as ov

        core = ov.Core()
        return core.read_model(
            self.files["model.xml"], ov.Tensor(np.frombuffer(self.files["model.bin"], np.uint8))
        )

    def _open(self, threads: int, *, spinning: bool) -> Session:
        # OpenVINO's CPU plugin has no setting for its idle threads: ``spinning`` changes nothing
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            self._read(),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1},
        )
        request = compiled.create_infer_request()
        out = compiled.outputs[0]

        def run(x: np.ndarray) -> np.ndarray:
            result: np.ndarray = request.infer([x])[out]
            return np.array(result, copy=True)

        return run

    def weight_zeros(self) -> tuple[int, int]:
        return ov_weight_zeros(self._read())


def ov_weight_zeros(model: Any) -> tuple[int, int]:
    """(zero, total) weights of every Convolution, GroupConvolution and MatMul whose weight input
    is a constant, through the Convert / Subtract / Multiply / Reshape / Transpose / FakeQuantize
    chain NNCF and the converter put in front of it (int8 weights: zero where the integer is 0,
    the zero point of symmetric weights)."""
    zeros = total = 0
    seen: set[str] = set()
    passthrough = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize", "Unsqueeze"}
    for op in model.get_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in passthrough:
            node = node.input_value(0).get_node()
        if node.get_type_name() != "Constant" or node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        w = node.get_data()
        zeros += int((w == 0).sum())
        total += int(w.size)
    return zeros, total


#: a name OpenVINO made up for a node it created (``Constant_65757``): numbered by a counter global to
#: the process, so the same model's IR would differ with what the process converted before
_GENERATED_NAME = re.compile(r"[A-Za-z]+_\d+")


def _ir_bytes(model: Any) -> tuple[bytes, bytes]:
    """The IR files of ``model``; made-up node names are numbered by the node's place in the graph,
    so the same model always gives the same bytes."""
    import openvino as ov

    for i, op in enumerate(model.get_ordered_ops()):
        if _GENERATED_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def _convert(data: bytes, what: str) -> Any:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        try:
            with quiet_export():
                return ov.convert_model(str(path))
        except Exception as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise MethodError(
                f"{what}: OpenVINO could not convert the model ({type(exc).__name__}: {first[:300]})"
            ) from None


@METHODS.register("openvino", requires=OPENVINO)
class OpenVino(RuntimeStep[MethodParams]):
    """The float model exported to ONNX, converted to an OpenVINO IR and run by OpenVINO in fp32."""

    def _runtime_model(self, model: nn.Module, ctx: CompressContext) -> RuntimeModel:
        ir = _convert(export_onnx(model, example_input(ctx, 2), what=self.name), self.name)
        return OvModel(*_ir_bytes(ir), precision="fp32")


class OpenVinoInt8Params(MethodParams):
    calibration_batches: int = Field(default=32, ge=1, description="training batches seen by calibration")
    batch_size: int = Field(default=32, ge=1, description="calibration batch size")
    fast_bias_correction: bool = Field(
        default=False, description="NNCF's fast bias correction instead of its full one (less accurate)"
    )


@METHODS.register("openvino_int8", requires=OPENVINO_NNCF)
class OpenVinoInt8(RuntimeStep[OpenVinoInt8Params]):
    """NNCF post-training int8 quantization of the OpenVINO IR, run by OpenVINO."""

    Params: ClassVar[type[MethodParams]] = OpenVinoInt8Params

    def weight_bits(self) -> float | None:
        return 8.0

    def _runtime_model(self, model: nn.Module, ctx: CompressContext) -> RuntimeModel:
        import nncf

        p: Any = self.params
        ir = _convert(export_onnx(model, example_input(ctx, 2), what=self.name), self.name)
        calib = calibration_batches(ctx, p.calibration_batches, p.batch_size)
        try:
            with quiet_export():
                quantized = nncf.quantize(
                    ir,
                    nncf.Dataset(calib),
                    preset=nncf.QuantizationPreset.PERFORMANCE,
                    subset_size=sum(len(x) for x in calib),
                    fast_bias_correction=p.fast_bias_correction,
                )
        except Exception as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise MethodError(
                f"{self.name}: NNCF could not quantize the model ({type(exc).__name__}: {first[:300]})"
            ) from None
        return OvModel(*_ir_bytes(quantized), precision="int8")
