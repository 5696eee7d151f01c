"""What a GPU buys each stage of an audit: CIFAR-size work timed on CUDA and on the CPU in one run.

Prints ``name = value`` lines. The data: ``--images`` synthetic 3x32x32 images of 10 classes,
written by this script (each class a fixed random pattern plus noise, clipped to [0, 1]: a
model learns them, and speed does not depend on the values), held in memory as compaudit's
:class:`~compaudit.data.base.DataBundle`. The model: ``resnet18`` from compaudit's registry (CIFAR
ResNet-18, width 64, 11.2 M parameters). Each stage runs through compaudit's own code:

- ``train_images_per_s_{cuda,cpu}``: one epoch of :func:`compaudit.fit` (SGD, batch 128, the
  epoch's validation pass included), images of the training split per second;
- ``pgd_images_per_s_{cuda,cpu}``: the registry's ``pgd`` attack (L-inf, eps 8/255, 10 steps,
  random start) through :meth:`Attack.run` in batches of 256 (the adversarial probe's default);
- ``gradcam_images_per_s_{cuda,cpu}``: :func:`compaudit.explain.explain` with ``gradcam`` in
  batches of 64 (the explain probe's default);
- ``predict_images_per_s_{cuda,cpu}``: :func:`compaudit.inference.predict` (the clean predictions
  every probe shares), batch 256;
- ``*_speedup``: the CUDA throughput / the CPU throughput of the same stage;
- ``int8_latency_ms_b{1,64}``: median latency of the int8 model (``quantize_int8`` + deploy: real
  int8 kernels) **on the CPU**, where its kernels are, as the efficiency probe measures it under
  ``device: cuda``; ``float_latency_ms_b{1,64}_{cuda,cpu}`` the float model's, and
  ``int8_vs_float_cpu_b{1,64}`` = float CPU latency / int8 CPU latency.

The ImageNet-size case (seed 001's networks) repeats the four stages with ``resnet50_imagenet``
(torchvision's layout, 25.6 M parameters, 4.09 G MACs per image) on synthetic 3x224x224 images of
31 classes (Office-31's count) in batches of 32 for every stage: ``imagenet_<stage>_images_per_s_
{cuda,cpu}`` and ``imagenet_<stage>_speedup`` (``--imagenet-images``, ``--imagenet-cpu-images``).

The CPU stages run on fewer images than the GPU ones (``--cpu-images``): throughput is per image, and
a full CPU epoch of ResNet-18 takes minutes. CPU threads: PyTorch's default (``cpu_threads``).
Without a CUDA device the script prints ``gpu = none`` and exits 0 at once. Usage:
``python bench/gpu_cifar.py [--quick] [--images N] [--cpu-images N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from compaudit.data.base import ArrayDataset, DataBundle


def synthetic_cifar(
    n: int, seed: int = 0, *, size: int = 32, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images 3 x size x size in [0, 1] and their labels (balanced classes)."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, 3, size, size, generator=g)
    y = torch.arange(n) % classes
    x = (0.6 * patterns[y] + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp_(0.0, 1.0)
    return x, y


def bundle(n: int, *, size: int = 32, classes: int = 10) -> DataBundle:
    x, y = synthetic_cifar(n, size=size, classes=classes)
    n_val = max(10, n // 10)
    train = ArrayDataset(x[n_val:], y[n_val:])
    val = ArrayDataset(x[:n_val], y[:n_val])
    names = tuple(str(c) for c in range(classes))
    return DataBundle(f"synthetic-{size}", train, val, val, names, (3, size, size))


#: the two cases: (model, image side, classes, batch of every stage or None for the defaults)
CASES: dict[str, tuple[str, int, int, int | None]] = {
    "": ("resnet18", 32, 10, None),
    "imagenet_": ("resnet50_imagenet", 224, 31, 32),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device, rounds: int = 1, *, warmup: bool = True) -> float:
    """Median wall time of ``fn`` (after one untimed warm-up call unless ``warmup`` is false)."""
    if warmup:
        fn()
    times = []
    for _ in range(rounds):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def resnet18() -> torch.nn.Module:
    return model_of("resnet18", 32, 10)


def model_of(name: str, size: int, classes: int) -> torch.nn.Module:
    from compaudit import build_model

    torch.manual_seed(0)
    return build_model(name, input_shape=(3, size, size), num_classes=classes)


def stage_throughputs(device: torch.device, n: int, rounds: int, case: str = "") -> dict[str, float]:
    """Images per second of each stage of ``case`` (:data:`CASES`) on ``device`` with ``n`` images."""
    from compaudit import fit
    from compaudit.attacks import ATTACKS
    from compaudit.config import TrainSpec
    from compaudit.explain import explain
    from compaudit.inference import predict

    name, size, classes, batch = CASES[case]
    data = bundle(n, size=size, classes=classes)
    model = model_of(name, size, classes).to(device)
    train = data.train
    assert isinstance(train, ArrayDataset)
    spec = TrainSpec(epochs=1, batch_size=batch or 128, lr=0.05)
    out: dict[str, float] = {}
    # warm-up (CUDA context, cuDNN kernels): one training step, outside the timed epoch
    xb, yb = train.x[: spec.batch_size].to(device), train.y[: spec.batch_size].to(device)
    torch.nn.functional.cross_entropy(model(xb), yb).backward()
    model.zero_grad(set_to_none=True)
    out["train"] = len(train) / seconds(
        lambda: fit(model, data, spec, seed=0, device=device), device, warmup=False
    )
    model.eval()
    test = data.test
    out["predict"] = len(test) / seconds(
        lambda: predict(model, test, device=device, batch_size=batch or 256),  # type: ignore[arg-type]
        device,
        rounds,
    )
    k = min(len(train), 1024 if device.type == "cuda" else 128)  # attack and saliency images
    attack_batch, cam_batch = batch or 256, batch or 64
    x, y = train.x[:k], train.y[:k]
    pgd = ATTACKS.get("pgd").from_spec("pgd", {"eps": 8 / 255, "steps": 10})

    def attack() -> None:
        gen = torch.Generator().manual_seed(0)
        for i in range(0, len(x), attack_batch):
            j = i + attack_batch
            pgd.run(model, x[i:j].to(device), y[i:j].to(device), generator=gen)

    out["pgd"] = len(x) / seconds(attack, device, rounds)

    def gradcam() -> None:
        for i in range(0, len(x), cam_batch):
            j = i + cam_batch
            explain(model, x[i:j].to(device), y[i:j].to(device), method="gradcam")

    out["gradcam"] = len(x) / seconds(gradcam, device, rounds)
    return out


def int8_latencies(rounds: int) -> dict[str, float]:
    """Median latency (ms) of the int8 ResNet-18 on the CPU and of the float one on CUDA and CPU."""
    from compaudit.compress import METHODS, CompressContext
    from compaudit.probes.efficiency import median_latency_ms

    data = bundle(512)
    model = resnet18().eval()
    method = METHODS.get("quantize_int8").from_spec("quantize_int8", {"calibration_batches": 4})
    ctx = CompressContext(data=data, seed=0, device=torch.device("cpu"))
    deployed = method.deploy(method.apply(model, ctx).eval(), ctx)
    assert deployed is not None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    gpu_model = resnet18().to(cuda).eval()
    out: dict[str, float] = {}
    for bs in (1, 64):
        x = torch.rand(bs, 3, 32, 32)
        out[f"int8_latency_ms_b{bs}"] = median_latency_ms(deployed, x, device=cpu, repeats=rounds, warmup=3)
        out[f"float_latency_ms_b{bs}_cpu"] = median_latency_ms(model, x, device=cpu, repeats=rounds, warmup=3)
        out[f"float_latency_ms_b{bs}_cuda"] = median_latency_ms(
            gpu_model, x.to(cuda), device=cuda, repeats=rounds, warmup=3
        )
        out[f"int8_vs_float_cpu_b{bs}"] = out[f"float_latency_ms_b{bs}_cpu"] / out[f"int8_latency_ms_b{bs}"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--images", type=int, default=5000, help="images of the GPU stages")
    ap.add_argument("--cpu-images", type=int, default=600, help="images of the CPU stages")
    ap.add_argument("--rounds", type=int, default=3, help="timed repetitions (medians)")
    ap.add_argument("--imagenet-images", type=int, default=640, help="224x224 images of the GPU stages")
    ap.add_argument("--imagenet-cpu-images", type=int, default=64, help="224x224 images of the CPU stages")
    ap.add_argument("--quick", action="store_true", help="1000 GPU and 200 CPU images, one round")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu = none")
        return
    if args.quick:
        args.images, args.cpu_images, args.rounds = 1000, 200, 1
        args.imagenet_images, args.imagenet_cpu_images = 320, 32
    print(f"gpu = {torch.cuda.get_device_name(0)}")
    print(f"cpu_threads = {torch.get_num_threads()}")
    print(f"images_cuda = {args.images}")
    print(f"images_cpu = {args.cpu_images}")
    gpu = stage_throughputs(torch.device("cuda"), args.images, args.rounds)
    cpu = stage_throughputs(torch.device("cpu"), args.cpu_images, 1)
    for stage in ("train", "predict", "pgd", "gradcam"):
        print(f"{stage}_images_per_s_cuda = {gpu[stage]:.1f}")
        print(f"{stage}_images_per_s_cpu = {cpu[stage]:.1f}")
        print(f"{stage}_speedup = {gpu[stage] / cpu[stage]:.2f}")
    for name, value in int8_latencies(max(10, 10 * args.rounds)).items():
        print(f"{name} = {value:.3f}")
    print(f"imagenet_images_cuda = {args.imagenet_images}")
    print(f"imagenet_images_cpu = {args.imagenet_cpu_images}")
    gpu = stage_throughputs(torch.device("cuda"), args.imagenet_images, args.rounds, "imagenet_")
    cpu = stage_throughputs(torch.device("cpu"), args.imagenet_cpu_images, 1, "imagenet_")
    for stage in ("train", "predict", "pgd", "gradcam"):
        print(f"imagenet_{stage}_images_per_s_cuda = {gpu[stage]:.1f}")
        print(f"imagenet_{stage}_images_per_s_cpu = {cpu[stage]:.1f}")
        print(f"imagenet_{stage}_speedup = {gpu[stage] / cpu[stage]:.2f}")


if __name__ == "__main__":
    main()
