"""Which int8 backend ``quantize_int8`` ships: latency, file size and agreement of each candidate.

VGG-6 (seed 000) is trained briefly on the embedded digits (1x32x32), then quantized to int8 by
every candidate path PyTorch offers on a CPU without a GPU:

- ``eager_ptsq``: eager-mode post-training static quantization (QuantStub/DeQuantStub, hand-written
  fusion list, ``torch.ao.quantization.prepare``/``convert``), the flow seed 001 used;
- ``fx_fbgemm`` / ``fx_x86``: FX graph mode (``prepare_fx``/``convert_fx``, automatic fusion) with
  the FBGEMM and x86 (oneDNN on VNNI CPUs) engines and qconfigs; ``fx_x86_cl`` with channels-last
  inputs; ``fx_x86_jit``: the FX model traced and frozen with TorchScript;
- ``pt2e_ref`` / ``pt2e_inductor``: torchao's PT2E flow (``X86InductorQuantizer``), run as is and
  through ``torch.compile`` (one compilation per input shape; needs torchao and a C++ compiler;
  skipped with a reason when either is missing);
- ``compaudit``: what ``quantize_int8`` deploys (``Int8Model``).

Latencies are medians over interleaved repeats (every round times every candidate once, in a
shuffled order), so background load hits all candidates alike; ratios are against the float model
with batch norm folded (``fp32_folded``), the fair float baseline. Prints ``name = value`` lines.

    .venv/bin/python bench/int8_backends.py [--threads 2] [--repeats 100] [--no-pt2e]
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from compaudit import CompressContext, build_model, fit, load_dataset
from compaudit.compress import METHODS
from compaudit.config import TrainSpec
from compaudit.inference import predict

Candidate = Callable[[Tensor], Tensor]


def file_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def eager_ptsq(model: nn.Module, calib: list[Tensor]) -> nn.Module:
    """Eager-mode PTSQ of a VGG-6: stubs around the model, conv-bn-relu and linear-relu fused."""
    from torch.ao.quantization import (
        DeQuantStub,
        QuantStub,
        convert,
        fuse_modules,
        get_default_qconfig,
        prepare,
    )

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.quant, self.inner, self.dequant = QuantStub(), inner, DeQuantStub()

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.dequant(self.inner(self.quant(x)))
            return out

    inner = copy.deepcopy(model).eval()
    groups = [[f"features.{i}.0", f"features.{i}.1", f"features.{i}.2"] for i in range(len(inner.features))]
    groups += [["classifier.0", "classifier.1"], ["classifier.3", "classifier.4"]]
    inner = fuse_modules(inner, groups)
    wrapped = Wrapped(inner).eval()
    wrapped.qconfig = get_default_qconfig("x86")  # type: ignore[assignment]
    prepared = prepare(wrapped)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert(prepared)


def fx_int8(model: nn.Module, calib: list[Tensor], engine: str) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(engine), (calib[0],))
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_fx(prepared)


def jit_frozen(model: nn.Module, example: Tensor) -> nn.Module:
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(model, (example,)).eval())


def pt2e(model: nn.Module, calib: list[Tensor], shapes: list[int]) -> dict[str, Any]:
    """torchao PT2E candidates: the converted graph, and one compiled program per batch size."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    inductor_config.freezing = True
    out: dict[str, Any] = {"compiled": {}, "compile_s": {}}
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    for bs in shapes:
        example = torch.cat([calib[0]] * (bs // len(calib[0]) + 1))[:bs]
        exported = torch.export.export(copy.deepcopy(model).eval(), (example,)).module()
        prepared = prepare_pt2e(exported, quantizer)  # type: ignore[arg-type]
        with torch.no_grad():
            for x in calib:
                prepared(torch.cat([x] * (bs // len(x) + 1))[:bs])
        converted = convert_pt2e(prepared)
        out.setdefault("ref", {})[bs] = converted
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled = torch.compile(converted)
            compiled(example)
        out["compiled"][bs] = compiled
        out["compile_s"][bs] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=100, help="timed rounds at batch size 1 (b64: a third)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the float VGG-6")
    ap.add_argument("--no-pt2e", action="store_true", help="skip torchao's PT2E candidates")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers competing
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    print(f"torch = {torch.__version__}")
    print(f"threads = {torch.get_num_threads()}")
    print(f"cpu_capability = {torch.backends.cpu.get_cpu_capability()}")
    print(f"load_average_1min = {os.getloadavg()[0]:.2f}")

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("vgg6", input_shape=data.input_shape, num_classes=data.num_classes, params={})
    fit(model, data, TrainSpec(epochs=args.epochs, batch_size=64, lr=0.05), seed=0)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    train_x = data.train.x  # type: ignore[attr-defined]
    order = torch.randperm(len(train_x), generator=gen)
    calib = [train_x[order[i * 32 : (i + 1) * 32]] for i in range(32)]

    from torch.ao.quantization.quantize_fx import fuse_fx

    cands: dict[str, nn.Module | Candidate] = {
        "fp32_eager": model,
        "fp32_folded": fuse_fx(copy.deepcopy(model)),
    }
    cands["eager_ptsq"] = eager_ptsq(model, calib)
    torch.backends.quantized.engine = "fbgemm"
    cands["fx_fbgemm"] = fx_int8(model, calib, "fbgemm")
    torch.backends.quantized.engine = "x86"
    fx_x86 = fx_int8(model, calib, "x86")
    cands["fx_x86"] = fx_x86
    cands["fx_x86_cl"] = lambda x: fx_x86(x.contiguous(memory_format=torch.channels_last))
    cands["fx_x86_jit"] = jit_frozen(fx_x86, calib[0][:2])
    ctx = CompressContext(data=data, seed=0, device=torch.device("cpu"))
    method = METHODS.get("quantize_int8").from_spec("quantize_int8", {})
    deployed = method.deploy(method.apply(model, ctx).eval(), ctx)
    assert deployed is not None
    cands["compaudit"] = deployed
    sizes = {k: file_bytes(m) for k, m in cands.items() if isinstance(m, nn.Module) and k != "fp32_folded"}
    del sizes["fx_x86_jit"]  # frozen: its weights are constants, not a state dict

    pt2e_out: dict[str, Any] | None = None
    if not args.no_pt2e:
        try:
            pt2e_out = pt2e(model, calib, [1, 64])
            sizes["pt2e_ref"] = file_bytes(pt2e_out["ref"][1])
            for bs, secs in pt2e_out["compile_s"].items():
                print(f"pt2e_compile_s.b{bs} = {secs:.2f}")
        except Exception as exc:  # torchao missing, or no working compiler
            print(f"pt2e = unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")

    # agreement with the float model on the test split (batch of 359 images)
    ref = predict(model, data.test).predicted
    x_test = data.test.x  # type: ignore[attr-defined]
    agree = {}
    with torch.inference_mode():
        for name, fn in cands.items():
            agree[name] = float((fn(x_test).argmax(1) == ref).double().mean())
        if pt2e_out is not None:  # exported for static shapes: batches of 64, the last one padded
            n = len(x_test)
            padded = torch.cat([x_test, x_test[: (-n) % 64]])
            for name, fn in (("pt2e_ref", pt2e_out["ref"][64]), ("pt2e_inductor", pt2e_out["compiled"][64])):
                pred = torch.cat([fn(chunk) for chunk in padded.split(64)])[:n].argmax(1)
                agree[name] = float((pred == ref).double().mean())
    for name, value in agree.items():
        print(f"agreement.{name} = {value:.4f}")
    for name, value in sizes.items():
        print(f"size_ratio.{name} = {value / sizes['fp32_eager']:.3f}")

    rng = random.Random(0)
    for bs, rounds in ((1, args.repeats), (64, max(10, args.repeats // 3))):
        x = torch.rand(bs, *data.input_shape, generator=gen)
        timed: dict[str, Candidate] = dict(cands)
        if pt2e_out is not None:
            timed["pt2e_ref"] = pt2e_out["ref"][bs]
            timed["pt2e_inductor"] = pt2e_out["compiled"][bs]
        times: dict[str, list[float]] = {k: [] for k in timed}
        names = list(timed)
        with torch.inference_mode():
            for fn in timed.values():  # warm-up
                for _ in range(3):
                    fn(x)
            for _ in range(rounds):
                rng.shuffle(names)
                for name in names:
                    t0 = time.perf_counter()
                    timed[name](x)
                    times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["fp32_folded"])
        for name in timed:
            med = statistics.median(times[name])
            print(f"latency_ms.{name}.b{bs} = {med * 1e3:.3f}")
        for name in timed:
            print(f"latency_ratio.{name}.b{bs} = {statistics.median(times[name]) / base:.3f}")
    print("chosen = compaudit (fx_x86 + frozen TorchScript dispatch)")


if __name__ == "__main__":
    main()
