"""Deployment targets on this CPU: each runtime's latency and file size against eager fp32.

VGG-6 and the CIFAR-style ResNet-18 (3x32x32, random weights: speed does not depend on the values)
are deployed the way the product deploys them (``METHODS.get(name).from_spec(...)``, ``apply``,
``deploy``) to every target:

- ``onnx_fp32`` / ``onnx_int8``: ONNX Runtime, fp32 and static QDQ int8 (``onnx``, ``onnx_int8``);
- ``openvino_fp32`` / ``openvino_int8``: OpenVINO, fp32 and NNCF int8 (``openvino``,
  ``openvino_int8``; skipped with a line saying so without the ``openvino`` extra);
- ``torch_int8``: ``quantize_int8`` (torch.ao FX int8 run through a frozen TorchScript trace).

Prints ``name = value`` lines, each measured in this one run:

- ``MODEL_bB_TARGET_latency_ratio``: the target's latency / eager fp32's (the model as built, eval
  mode, BatchNorm not folded) at batch B, both with ``--threads`` threads (the runtime models read
  ``torch.get_num_threads()``). Latencies are interleaved: every round times every target once, in
  a freshly shuffled order (no target always follows the same one), each call after a ``--gap``
  pause so that the thread pool of the previous runtime (ONNX Runtime's workers spin after a run,
  libgomp's and TBB's briefly too) is idle and does not steal the cores; a ratio is the median over
  rounds of the target's time / eager's time in the same round (a drift of the machine's load
  between rounds cancels). ``MODEL_bB_eager_fp32_latency_ms``: eager's median, for scale;
  ``MODEL_bB_eager_fp32_latency_spread``: its 90th / 10th percentile, the check that the cores were
  quiet: eager torch splits every op statically over its OpenMP threads, which must all run at
  once, so on shared cores it stalls far more than the runtimes (whose pools balance the work) and
  every ratio reads too low. Above about 1.3, rerun on quiet cores;
- ``MODEL_bB_onnx_int8_vs_onnx_fp32_latency_ratio`` (and the same for OpenVINO): int8 against the
  runtime's own fp32 (about 0.25 is the limit where int8 peaks at 4x fp32: AVX-512 VNNI, no AMX);
- ``MODEL_TARGET_size_ratio``: the bytes of the file(s) the runtime loads (``file_bytes()``) or, for
  ``torch_int8``, of its saved state dict / the saved eager fp32 state dict
  (:func:`compaudit.serialize.saved_size`);
- ``best_int8_latency_ratio_resnet18_b64`` (and ``best_int8_target_resnet18_b64``): the fastest
  int8 target there, and ``target_met = 1`` when it is at most 0.20; ``quiet = 1`` when eager's
  spread there was at most 1.3 (else the verdict does not hold).

``--explore`` adds session variants timed in the same rounds (``MODEL_bB_VARIANT_latency_ratio``):
``onnx_int8_nospin`` (``session.intra_op.allow_spinning = 0``), ``onnx_int8_stopspin``
(``session.force_spinning_stop = 1``: spin during a run, stop at its end), ``onnx_int8_qoperator``
(``format: qoperator``) and ``openvino_int8_latency_hint`` (``PERFORMANCE_HINT = LATENCY``).

    .venv/bin/python bench/runtimes.py [--models resnet18,vgg6] [--batches 1,64] [--threads 2]
                                       [--repeats 60] [--gap 0.02] [--explore] [--quick]

``--repeats``: rounds at batch 1 (batch 64: a third, at least 5). ``--quick``: 12 rounds, 2
calibration batches, for a smoke run (its ratios are rough). Building the targets takes about a
minute per model (export, calibration); the default run takes a few minutes on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from compaudit import build_model
from compaudit.compress import METHODS, CompressContext
from compaudit.compress.runtime import RuntimeModel
from compaudit.data import ArrayDataset, DataBundle
from compaudit.serialize import saved_size

#: target name -> (method, whether it is int8)
TARGETS: dict[str, tuple[str, bool]] = {
    "onnx_fp32": ("onnx", False),
    "onnx_int8": ("onnx_int8", True),
    "openvino_fp32": ("openvino", False),
    "openvino_int8": ("openvino_int8", True),
    "torch_int8": ("quantize_int8", True),
}
#: the issue's target: the best int8 target at most this ratio at batch 64 on ResNet-18
TARGET_RATIO = 0.20
#: eager's 90th / 10th latency percentile above which the cores were too busy for the ratios to hold
QUIET_SPREAD = 1.3


def synthetic_data(n: int = 256) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    ds = ArrayDataset(x, y)
    return DataBundle("synthetic", ds, ds, ds, tuple(str(i) for i in range(10)), (3, 32, 32))


def deployed(method: str, params: dict[str, Any], model: nn.Module, data: DataBundle) -> nn.Module:
    """``model`` through ``method`` the way the product deploys a variant."""
    m = METHODS.get(method).from_spec(method, params)
    ctx = CompressContext(data, seed=0, device=torch.device("cpu"))
    out = m.apply(model, ctx)
    deployment = m.deploy(out, ctx)
    return (deployment.model if deployment is not None else out).eval()


# --------------------------------------------------------------------------- --explore variants


#: ONNX Runtime's session setting for idle intra-op threads
SPINNING = "session.intra_op.allow_spinning"


def ort_variant(base: nn.Module, entries: dict[str, str]) -> nn.Module:
    """``base`` (an ``OrtModel``) with its sessions opened with the product's options plus the
    session config ``entries``."""
    import onnxruntime as ort

    from compaudit.compress import onnx as ort_targets

    variant = copy.copy(base)
    variant._sessions = {}

    def _open(threads: int, *, spinning: bool) -> Callable[[np.ndarray], np.ndarray]:
        spin = entries.get(SPINNING, "1" if spinning else "0") == "1"  # the variant's own setting wins
        so = ort_targets.session_options(base.graph_optimization, threads, spinning=spin)
        for key, value in entries.items():
            if key != SPINNING:
                so.add_session_config_entry(key, value)
        sess = ort.InferenceSession(base.data, so, providers=["CPUExecutionProvider"])
        name, out = base.input_name, sess.get_outputs()[0].name
        return lambda x: sess.run([out], {name: x})[0]

    variant._open = _open
    return variant


def ov_variant(base: nn.Module, properties: dict[str, Any]) -> nn.Module:
    """``base`` (an ``OvModel``) compiled with the product's properties updated by ``properties``."""
    import openvino as ov

    variant = copy.copy(base)
    variant._sessions = {}

    def _open(threads: int, *, spinning: bool) -> Callable[[np.ndarray], np.ndarray]:
        del spinning  # OpenVINO has no setting for its idle threads
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}
        compiled = ov.Core().compile_model(base._read(), "CPU", {**config, **properties})
        request, out = compiled.create_infer_request(), compiled.outputs[0]
        return lambda x: np.array(request.infer([x])[out], copy=True)

    variant._open = _open
    return variant


def explore_variants(models: dict[str, nn.Module], model: nn.Module, data: DataBundle, calib: int) -> None:
    if "onnx_int8" in models:
        base = models["onnx_int8"]
        assert isinstance(base, RuntimeModel)
        models["onnx_int8_nospin"] = ort_variant(base, {SPINNING: "0"})
        models["onnx_int8_stopspin"] = ort_variant(base, {"session.force_spinning_stop": "1"})
        params = {"calibration_batches": calib, "format": "qoperator"}
        models["onnx_int8_qoperator"] = deployed("onnx_int8", params, model, data)
    if "openvino_int8" in models:
        base = models["openvino_int8"]
        assert isinstance(base, RuntimeModel)
        models["openvino_int8_latency_hint"] = ov_variant(base, {"PERFORMANCE_HINT": "LATENCY"})


# --------------------------------------------------------------------------- timing


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, gap: float, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each function over ``rounds`` rounds, each round in a shuffled order,
    each call after ``gap`` seconds of rest."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    with torch.inference_mode():
        for fn in fns.values():  # warm-up: sessions open, caches fill
            for _ in range(3):
                fn()
        for _ in range(rounds):
            rng.shuffle(names)
            for name in names:
                if gap:
                    time.sleep(gap)
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))


def bench(
    arch: str,
    args: argparse.Namespace,
    data: DataBundle,
    best: dict[str, tuple[float, str]],
    spreads: dict[str, float],
) -> None:
    torch.manual_seed(0)
    model = build_model(arch, input_shape=(3, 32, 32), num_classes=10, params={}).eval()
    calib = 2 if args.quick else 32
    models: dict[str, nn.Module] = {"eager_fp32": model}
    t0 = time.perf_counter()
    for target, (method, int8) in TARGETS.items():
        params: dict[str, Any] = {"calibration_batches": calib} if int8 else {}
        try:
            models[target] = deployed(method, params, model, data)
        except Exception as exc:  # the openvino extra missing
            print(f"{arch}_{target} = unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    if args.explore:
        explore_variants(models, model, data, calib)
    print(f"{arch}_build_s = {time.perf_counter() - t0:.1f}")

    dense = saved_size(model.state_dict())
    for target, m in models.items():
        if target in TARGETS:
            size = m.file_bytes() if isinstance(m, RuntimeModel) else saved_size(m.state_dict())
            print(f"{arch}_{target}_size_ratio = {size / dense:.3f}")
    if "onnx_int8" in models and "onnx_fp32" in models:
        ratio = models["onnx_int8"].file_bytes() / models["onnx_fp32"].file_bytes()  # type: ignore[operator]
        print(f"{arch}_onnx_int8_vs_onnx_fp32_size_ratio = {ratio:.3f}")

    gen = torch.Generator().manual_seed(1)
    # latency as the efficiency probe times it: runtime sessions with their default, spinning,
    # idle threads (RuntimeModel.timing); the audit's other calls run without
    with contextlib.ExitStack() as timed:
        for m in models.values():
            if isinstance(m, RuntimeModel):
                timed.enter_context(m.timing())
        for bs in args.batches:
            x = torch.rand(bs, 3, 32, 32, generator=gen)
            rounds = args.repeats if bs == 1 else max(5, args.repeats // 3)
            fns = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
            times = interleaved(fns, rounds, args.gap)
            tag = f"{arch}_b{bs}"
            eager = sorted(times["eager_fp32"])
            print(f"{tag}_eager_fp32_latency_ms = {statistics.median(eager) * 1e3:.2f}")
            spread = eager[int(0.9 * (len(eager) - 1))] / eager[int(0.1 * (len(eager) - 1))]
            print(f"{tag}_eager_fp32_latency_spread = {spread:.2f}")
            spreads[tag] = spread
            for name in models:
                if name != "eager_fp32":
                    ratio = paired_ratio(times, name, "eager_fp32")
                    print(f"{tag}_{name}_latency_ratio = {ratio:.3f}")
                    if name in TARGETS and TARGETS[name][1] and ratio < best.get(tag, (np.inf, ""))[0]:
                        best[tag] = (ratio, name)
            for rt in ("onnx", "openvino"):
                if f"{rt}_int8" in times and f"{rt}_fp32" in times:
                    ratio = paired_ratio(times, f"{rt}_int8", f"{rt}_fp32")
                    print(f"{tag}_{rt}_int8_vs_{rt}_fp32_latency_ratio = {ratio:.3f}")
            sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--models", default="resnet18,vgg6")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=60, help="rounds at batch 1 (batch 64: a third)")
    ap.add_argument("--gap", type=float, default=0.02, help="seconds of rest before each timed call")
    ap.add_argument("--explore", action="store_true", help="also time the session variants")
    ap.add_argument("--quick", action="store_true", help="12 rounds, 2 calibration batches")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 12
    args.batches = [int(b) for b in args.batches.split(",")]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"threads = {torch.get_num_threads()}")
    print(f"cpu_capability = {torch.backends.cpu.get_cpu_capability()}")
    print(f"versions = torch {torch.__version__}, onnxruntime {onnxruntime.__version__}", end="")
    try:
        import nncf
        import openvino

        print(f", openvino {openvino.__version__.split('-')[0]}, nncf {nncf.__version__}")
    except ImportError:
        print()
    print(f"load_average_1min = {os.getloadavg()[0]:.2f}")
    data = synthetic_data()
    best: dict[str, tuple[float, str]] = {}
    spreads: dict[str, float] = {}
    for arch in args.models.split(","):
        bench(arch, args, data, best, spreads)
    print(f"load_average_1min_end = {os.getloadavg()[0]:.2f}")
    headline = best.get("resnet18_b64")
    if headline is not None:
        print(f"best_int8_latency_ratio_resnet18_b64 = {headline[0]:.3f}")
        print(f"best_int8_target_resnet18_b64 = {headline[1]}")
        print(f"target_met = {int(headline[0] <= TARGET_RATIO)}")
        print(f"quiet = {int(spreads['resnet18_b64'] <= QUIET_SPREAD)}")


if __name__ == "__main__":
    main()
