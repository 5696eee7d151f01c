"""What compression saves on this CPU: deployed model vs the fp32 baseline (BN folded).

Prints ``name = value`` lines, each a ratio measured in this one run (medians of interleaved runs:
every round times every model once, in turn, so drifts of the machine hit all of them alike):

- ``MODEL.int8_latency_ratio_b1`` / ``_b64``: real int8 (``quantize_int8``, deployed) / fp32 (target <= 0.35)
- ``MODEL.int8_size_ratio``: bytes of the saved int8 state dict / fp32 (target <= 0.27)
- ``MODEL.filter50_latency_ratio`` / ``filter50_mac_ratio``: 50% L1 filter pruning of every hidden
  conv and linear layer / fp32 (the latency speed-up should be at least half of the MAC reduction:
  ``filter50_speedup_vs_half_mac_reduction_bN`` >= 1); ``filter50conv_*``: convs only
- ``MODEL.unstructured50_latency_ratio``: 50% unstructured pruning, dense kernels / fp32 (about 1:
  masks alone give no speed-up)
- ``MODEL.unstructured50_size_ratio``: saved sparse (values + bitmask) / dense fp32

Models: CIFAR-style ResNet-18 and VGG-6 at 3x32x32 with random weights (speed does not depend on
the values). Usage: ``python bench/compress.py [--rounds N] [--models resnet18,vgg6]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from compaudit import METHODS, build_model
from compaudit.compress import CompressContext, make_permanent
from compaudit.data import ArrayDataset, DataBundle
from compaudit.probes.efficiency import count_macs
from compaudit.serialize import saved_size


def synthetic_data(n: int = 512) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    ds = ArrayDataset(x, y)
    return DataBundle("synthetic", ds, ds, ds, tuple(str(i) for i in range(10)), (3, 32, 32))


def fold_bn(model: nn.Module) -> nn.Module:
    """The fp32 baseline as one would deploy it: eval mode, BatchNorm folded into the convs."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def interleaved_ms(models: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for fn in models.values():  # warm-up
            for _ in range(3):
                fn()
        for r in range(rounds):
            order = list(models.items())
            if r % 2:
                order.reverse()
            for name, fn in order:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def apply(
    method: str, params: dict[str, object], model: nn.Module, data: DataBundle
) -> tuple[nn.Module, nn.Module]:
    m = METHODS.get(method).from_spec(method, params)
    ctx = CompressContext(data, seed=0, device=torch.device("cpu"))
    out = make_permanent(m.apply(model, ctx)).eval()
    deployed = m.deploy(out, ctx)
    return out, (deployed if deployed is not None else out)


def bench(name: str, rounds: int, data: DataBundle) -> None:
    torch.manual_seed(0)
    base = build_model(name, input_shape=(3, 32, 32), num_classes=10).eval()
    fp32 = fold_bn(base)
    _, int8 = apply("quantize_int8", {}, base, data)
    filt, _ = apply("prune_filters", {"ratio": 0.5, "layers": ["conv", "linear"]}, base, data)
    filt = fold_bn(filt)
    filt_conv, _ = apply("prune_filters", {"ratio": 0.5}, base, data)
    filt_conv = fold_bn(filt_conv)
    unst, _ = apply("prune_unstructured", {"sparsity": 0.5}, base, data)
    unst = fold_bn(unst)
    one = data.test.x[:1]  # type: ignore[attr-defined]
    macs_fp32 = count_macs(base, one)
    macs_filt = count_macs(filt, one)
    macs_filt_conv = count_macs(filt_conv, one)
    for bs in (1, 64):
        x = data.test.x[:bs]  # type: ignore[attr-defined]
        ms = interleaved_ms(
            {
                "fp32": lambda x=x: fp32(x),
                "int8": lambda x=x: int8(x),
                "filter50": lambda x=x: filt(x),
                "filter50conv": lambda x=x: filt_conv(x),
                "unstructured50": lambda x=x: unst(x),
            },
            rounds if bs == 1 else max(5, rounds // 4),
        )
        print(f"{name}.int8_latency_ratio_b{bs} = {ms['int8'] / ms['fp32']:.3f}")
        print(f"{name}.filter50_latency_ratio_b{bs} = {ms['filter50'] / ms['fp32']:.3f}")
        speedup = ms["fp32"] / ms["filter50"]
        half_mac_reduction = 0.5 * macs_fp32 / macs_filt
        print(f"{name}.filter50_speedup_vs_half_mac_reduction_b{bs} = {speedup / half_mac_reduction:.3f}")
        print(f"{name}.filter50conv_latency_ratio_b{bs} = {ms['filter50conv'] / ms['fp32']:.3f}")
        print(f"{name}.unstructured50_latency_ratio_b{bs} = {ms['unstructured50'] / ms['fp32']:.3f}")
        print(f"{name}.fp32_latency_ms_b{bs} = {ms['fp32']:.3f}")
    print(f"{name}.filter50_mac_ratio = {macs_filt / macs_fp32:.3f}")
    print(f"{name}.filter50conv_mac_ratio = {macs_filt_conv / macs_fp32:.3f}")
    dense = saved_size(fp32.state_dict())
    print(f"{name}.int8_size_ratio = {saved_size(int8.state_dict()) / dense:.3f}")
    print(f"{name}.unstructured50_size_ratio = {saved_size(unst.state_dict(), sparse=True) / dense:.3f}")
    print(f"{name}.unstructured50_dense_size_ratio = {saved_size(unst.state_dict()) / dense:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--models", default="resnet18,vgg6")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"threads = {torch.get_num_threads()}")
    data = synthetic_data()
    for name in args.models.split(","):
        bench(name, args.rounds, data)


if __name__ == "__main__":
    main()
