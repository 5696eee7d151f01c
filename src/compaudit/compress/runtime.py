"""Deployment targets: a variant's model as a *runtime* runs it (ONNX Runtime, OpenVINO), behind the
same interface as the torch int8 model (float inputs in, float logits out, no gradient path).

People who ship a compressed CNN rarely ship PyTorch's eager int8: they export it to ONNX and run
it in ONNX Runtime, or quantize it with NNCF and run it in OpenVINO, and each runtime rounds, fuses
and saturates in its own way. A deployment target is a compression step (:class:`RuntimeStep`, the
last of its chain) whose :meth:`~compaudit.compress.Method.deploy` builds a :class:`RuntimeModel`
from the chain's float model: the audited model is then *the artifact that ships*, and the probes
attack, shift, explain and time that artifact through the capabilities it declares:

- ``compute_device = cpu``: the runtime's CPU provider computes (inputs go there; GPU providers
  are the user's to add, see the README);
- no gradient path: gradient attacks reach it by BPDA through the variant's surrogate (the float
  model it was exported from), by transfer, or gradient-free; the naive route records that it
  cannot move (:mod:`compaudit.probes.adversarial`);
- :meth:`RuntimeModel.file_bytes`: the size of the file(s) the runtime loads, as on disk;
- :meth:`RuntimeModel.weight_zeros`: zero and total conv/linear weights as the file stores them;
- the thread count: every call runs with ``torch.get_num_threads()`` intra-op threads (one session
  per count, created on first use), so latencies are measured with the torch measurements' threads;
- idle threads: a runtime's threads normally keep spinning for a while after each call, waiting
  for the next one. In an audit the runtime's calls alternate with PyTorch's work on the same cores
  (BPDA: a surrogate forward and backward pass around every runtime call), and the spinning threads
  take the cores PyTorch needs: ONNX Runtime's spinning made a BPDA step of VGG-6 at batch 24 2.2x
  slower on 2 cores (70-85 ms against 32-39 ms). So sessions do not spin, except inside
  :meth:`RuntimeModel.timing`, where the efficiency probe measures latency as a deployment running
  only the runtime would see it (the runtime's default).

:func:`export_onnx` is the one exporter (``torch.onnx.export(..., dynamo=True)``, a dynamic batch
axis); :func:`calibration_batches` the one calibration draw, the training batches ``quantize_int8``
sees with the same seed, so the int8 targets are calibrated on the same images.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from compaudit.compress.base import CompressContext, Method, MethodParams
from compaudit.compress.quantize import _check_not_quantized
from compaudit.data.base import batches
from compaudit.errors import MethodError
from compaudit.variant import Deployment

log = logging.getLogger("compaudit")

#: what a runtime session is to :class:`RuntimeModel`: a float32 NCHW batch in, float32 logits out
Session = Callable[[np.ndarray], np.ndarray]


class RuntimeModel(nn.Module, ABC):
    """A model run by an inference runtime from its own file(s): float inputs in, float logits out.

    ``files`` maps a file name (``model.onnx``; ``model.xml`` + ``model.bin``) to its bytes, exactly
    what would be written to disk and shipped; a session is opened from them per thread count.
    ``batch``: the file's fixed batch size (None: dynamic); a fixed-batch file is fed in chunks of
    that size, the last one zero-padded and its padding dropped. Subclasses say how a session is
    opened (:meth:`_open`) and how the file stores its conv/linear weights (:meth:`weight_zeros`).

    It has no parameters: nothing here trains, and autograd never reaches the input (the inputs
    are detached and copied to NumPy). Pickling keeps the files and drops the sessions (a Ray
    worker reopens them).
    """

    #: runtime sessions run on the CPU here (GPU execution providers: see the README)
    compute_device: ClassVar[torch.device] = torch.device("cpu")
    #: the runtime's name, as reports show it
    runtime: ClassVar[str] = "runtime"

    def __init__(self, files: Mapping[str, bytes], *, precision: str, batch: int | None = None) -> None:
        super().__init__()
        self.files = dict(files)
        self.precision = precision
        self.batch = batch
        self._sessions: dict[tuple[int, bool], Session] = {}
        self._spinning = False

    @abstractmethod
    def _open(self, threads: int, *, spinning: bool) -> Session:
        """A session of the file(s) with ``threads`` intra-op threads; ``spinning``: its idle threads
        spin between calls (the runtime's default) instead of sleeping at once."""

    @abstractmethod
    def weight_zeros(self) -> tuple[int, int]:
        """(zero, total) conv/linear weights as the file stores them: an int8 weight is zero where
        its integer equals its zero point."""

    def version(self) -> str:
        """The runtime's version."""
        return ""

    def describe(self) -> str:
        """The runtime, its version and the precision it computes in: ``onnxruntime 1.31.1, int8``."""
        return f"{self.runtime} {self.version()}, {self.precision}".replace("  ", " ")

    def file_bytes(self) -> int:
        """Bytes of the file(s) the runtime loads, as written to disk."""
        return sum(len(b) for b in self.files.values())

    def session(self) -> Session:
        """The session for the current ``torch.get_num_threads()`` and spinning (opened on first use)."""
        key = (torch.get_num_threads(), self._spinning)
        found = self._sessions.get(key)
        if found is None:
            found = self._sessions[key] = self._open(key[0], spinning=key[1])
        return found

    @contextmanager
    def timing(self) -> Iterator[None]:
        """While the block runs, calls use sessions whose idle threads spin (the runtime's default):
        latency as an application running only this runtime sees it. Elsewhere they do not (see the
        module docstring)."""
        before = self._spinning
        self._spinning = True
        try:
            yield
        finally:
            self._spinning = before

    def forward(self, x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        run = self.session()
        if self.batch is None or len(arr) == self.batch:
            out = run(arr)
        else:
            parts = []
            for start in range(0, max(len(arr), 1), self.batch):  # an empty batch: one padded chunk
                chunk = arr[start : start + self.batch]
                n = len(chunk)
                if n < self.batch:
                    pad = np.zeros((self.batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                parts.append(run(chunk)[:n])
            out = np.concatenate(parts)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)

    def write(self, folder: Path) -> list[Path]:
        """Write the file(s) into ``folder``; their paths (the first is the one a runtime opens)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in self.files.items():
            path = folder / name
            path.write_bytes(data)
            paths.append(path)
        return paths

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sessions"] = {}
        return state

    def extra_repr(self) -> str:
        return f"{self.describe()}, {self.file_bytes()} bytes"


# --------------------------------------------------------------------------- export and calibration


@contextmanager
def quiet_export() -> Iterator[None]:
    """Silence what the ONNX exporter, its optimiser, ONNX Runtime's quantization tools and NNCF
    log, warn and draw while they run (their registry notes a missing torchvision, the optimiser
    reports each pass, NNCF draws its own progress bars): a run's log says what compaudit does.
    Errors still raise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_onnx(model: nn.Module, example: Tensor, *, what: str = "onnx") -> bytes:
    """``model`` as an ONNX file (``torch.onnx.export(..., dynamo=True)``), input ``x`` with a
    dynamic batch axis, output ``logits``; ``model`` itself is left as it was (a CPU copy in eval
    mode is exported). A model the exporter cannot handle is a one-line :class:`MethodError`."""
    work = copy.deepcopy(model).cpu().eval()
    x = example.detach().cpu().float()
    try:
        with quiet_export(), torch.no_grad():
            program = torch.onnx.export(
                work,
                (x,),
                dynamo=True,
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            assert program is not None
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                program.save(str(path))
                extra = [p for p in Path(tmp).iterdir() if p != path]
                if extra:  # external data (a model over 2 GB): not one file
                    raise MethodError(
                        f"{what}: {type(model).__name__} exported with external data files "
                        f"({', '.join(p.name for p in extra)}); models over 2 GB are not supported"
                    )
                return path.read_bytes()
    except MethodError:
        raise
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise MethodError(
            f"{what}: {type(model).__name__} cannot be exported to ONNX "
            f"({type(exc).__name__}: {first.strip()[:300]})"
        ) from None


def calibration_batches(ctx: CompressContext, count: int, batch_size: int) -> list[np.ndarray]:
    """``count`` shuffled training batches of ``batch_size`` as float32 NumPy arrays: the draw
    ``quantize_int8`` calibrates on with the same seed."""
    gen = torch.Generator().manual_seed(ctx.seed)
    drawn = batches(ctx.data.train, batch_size, shuffle=True, generator=gen, device="cpu")
    return [xb.to(torch.float32).numpy() for xb, _ in islice(drawn, count)]


# --------------------------------------------------------------------------- the step


P = TypeVar("P", bound=MethodParams)


class RuntimeStep(Method[P], ABC):
    """A deployment target as the last step of a chain: the step's own model is the incoming float
    model unchanged (it is what fine-tuning trains, and the variant's surrogate); :meth:`deploy`
    builds the runtime's model from it with :meth:`_runtime_model`."""

    terminal: ClassVar[bool] = True
    #: what the variant's surrogate is, as notes and the report say
    surrogate_kind: ClassVar[str] = "the float model it was exported from"

    def _apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        _check_not_quantized(self.name, model)
        return model

    @abstractmethod
    def _runtime_model(self, model: nn.Module, ctx: CompressContext) -> RuntimeModel:
        """The runtime's model built from the chain's trained float ``model`` (do not modify it)."""

    def deploy(self, model: nn.Module, ctx: CompressContext) -> Deployment | None:
        built = self._runtime_model(model, ctx).eval()
        return Deployment(
            model=built,
            gradient_path=False,
            graph=None,
            runtime=built.describe(),
            surrogate_kind=self.surrogate_kind,
        )
