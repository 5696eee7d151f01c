"""A user's own deployed file as a variant: ``deployed_file`` audits an existing ``.onnx`` file (run
by ONNX Runtime) or OpenVINO IR (``.xml`` beside its ``.bin``, run by OpenVINO) against the float
model it came from, which is the experiment's ``model`` with its checkpoint.

The file is the variant's deployed model, exactly as it ships: nothing is exported, quantized or
re-optimised (ONNX Runtime applies its usual session graph optimisations, as a deployment does).
The experiment's model is its surrogate: BPDA and saliency differentiate it, transfer attacks are
crafted on it, and the accuracy probe reports the file's top-1 agreement with it. The step must be
its variant's only step, without fine-tuning (:attr:`~compaudit.compress.Method.standalone`).

Input contract: one input, NCHW float32, in the data set's bounds, normalisation inside the file
(as compaudit's own models carry it); a fixed or dynamic batch axis (a fixed batch is fed in
chunks of that size); the first output is the logits, one per class. A file whose input shape or
class count does not fit the data set is refused in one line before anything runs
(:meth:`DeployedFile.check_inputs`). The file's SHA-256 (and its ``.bin``'s) is part of the
variant's key: a rewritten file is audited again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator
from torch import nn

from compaudit.compress.base import METHODS, CompressContext, MethodParams
from compaudit.compress.runtime import RuntimeModel, RuntimeStep
from compaudit.data.base import DataBundle
from compaudit.errors import MethodError
from compaudit.runtime import file_digest


class DeployedFileParams(MethodParams):
    path: Path = Field(description="the deployed file: model.onnx, or an OpenVINO IR model.xml")
    precision: str = Field(default="as exported", description="what the file computes in, as reports say")

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"deployed file {str(v)!r} does not exist")
        if v.suffix.lower() not in (".onnx", ".xml"):
            raise ValueError(f"deployed file {str(v)!r}: expected an .onnx file or an OpenVINO .xml")
        if v.suffix.lower() == ".xml" and not v.with_suffix(".bin").is_file():
            raise ValueError(f"OpenVINO IR {str(v)!r} has no {v.with_suffix('.bin').name} beside it")
        return v

    def which(self) -> str:
        """What runs it: ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``."""
        return "openvino" if self.path.suffix.lower() == ".xml" else "onnxruntime"

    def files(self) -> list[Path]:
        return (
            [self.path, self.path.with_suffix(".bin")] if self.path.suffix.lower() == ".xml" else [self.path]
        )


@METHODS.register("deployed_file")
class DeployedFile(RuntimeStep[DeployedFileParams]):
    """A user's own ``.onnx`` file or OpenVINO IR, audited against the experiment's model."""

    Params: ClassVar[type[MethodParams]] = DeployedFileParams
    standalone: ClassVar[bool] = True
    surrogate_kind: ClassVar[str] = "the experiment's model (the float model the file came from)"

    @property
    def p(self) -> DeployedFileParams:
        assert isinstance(self.params, DeployedFileParams)
        return self.params

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        # the file by name and content: a moved file is the same variant, a rewritten one is not
        desc["params"]["path"] = self.p.path.name
        desc["sha256"] = {f.name: file_digest(f) for f in self.p.files()}
        return desc

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        return model  # the experiment's model as it is: the file's surrogate

    def _load(self) -> RuntimeModel:
        p = self.p
        try:
            if p.which() == "openvino":
                from compaudit.compress.openvino import OvModel

                return OvModel(
                    p.path.read_bytes(), p.path.with_suffix(".bin").read_bytes(), precision=p.precision
                )
            from compaudit.compress.onnx import OrtModel

            return OrtModel(p.path.read_bytes(), precision=p.precision, name=p.path.name)
        except ImportError as exc:
            raise MethodError(
                f"{self.name}: {str(p.path)!r} needs {exc.name}: pip install 'compaudit[openvino]'"
            ) from None
        except Exception as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise MethodError(
                f"{self.name}: {str(p.path)!r} cannot be loaded ({type(exc).__name__}: {first[:200]})"
            ) from None

    def check_inputs(self, data: DataBundle) -> str | None:
        """The file's one input must take NCHW batches of the data set's shape (a dynamic axis fits
        any size) and its first output give one logit per class; run once on two images."""
        import numpy as np
        import torch

        p = self.p
        try:
            model = self._load()
        except MethodError as exc:
            return str(exc)
        c, h, w = data.input_shape
        lo, hi = data.bounds
        x = lo + (hi - lo) * torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(0))
        try:
            out = model(x)
        except Exception as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            return (
                f"path: {str(p.path)!r} does not take the data set's inputs (2x{c}x{h}x{w} float32): "
                f"{type(exc).__name__}: {first[:200]}"
            )
        if out.ndim != 2 or out.shape[0] != 2:
            return f"path: {str(p.path)!r} returns shape {tuple(out.shape)} for 2 images, not (2, classes)"
        if out.shape[1] != data.num_classes:
            return (
                f"path: {str(p.path)!r} gives {out.shape[1]} outputs per image but the data set has "
                f"{data.num_classes} classes"
            )
        if not bool(np.isfinite(out.numpy()).all()):
            return f"path: {str(p.path)!r} returns non-finite logits"
        return None

    def _runtime_model(self, model: nn.Module, ctx: CompressContext) -> RuntimeModel:
        return self._load()
