"""Scale-out and overhead, printed as ``name = value`` lines.

``ray_speedup``: one grid of 8 independent variants x 2 probes (16 jobs: prune at 8 sparsities,
one epoch of fine-tuning each, then accuracy and a 10-step PGD) run by the local executor (this
process, torch's default threads) and by the Ray executor on a local cluster of 2 workers (one CPU
and one torch thread each), interleaved, ``--repeats`` times; the median of the local run's wall
time over the Ray run's (target >= 1.7 with 2 workers). The baseline is a checkpoint trained once
before timing, and Ray is started once and warmed up, so both sides time the grid only.

``demo_share_outside_forward_backward``: the built-in demo run once in this process with every
outermost ``nn.Module`` call and every ``Tensor.backward`` / ``torch.autograd.grad`` call timed;
the share of the run's wall time spent outside them (target < 0.15). Calls that bypass those entry
points (a module imported as ``from torch.autograd import grad``) count as outside: the share is
an upper bound.

Usage: ``python bench/ray_scaling.py [--repeats 3] [--skip-demo]`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compaudit import Experiment, build_model, fit, load_dataset, run_experiment
from compaudit.cli import demo_experiment_text
from compaudit.config import TrainSpec


def grid(checkpoint: Path, executor: str) -> Experiment:
    return Experiment.from_dict(
        {
            "name": "ray-scaling",
            "seed": 0,
            "data": {"name": "digits", "params": {"size": 16}},
            "model": {"name": "student_cnn", "checkpoint": str(checkpoint)},
            "variants": [
                {
                    "name": f"sparse{int(100 * s)}",
                    "steps": [{"method": "prune_unstructured", "params": {"sparsity": s}}],
                    "finetune": {"epochs": 1},
                }
                for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
            ],
            "probes": [
                {"name": "accuracy", "params": {"splits": ["test"]}},
                {
                    "name": "adversarial",
                    "params": {
                        "samples": 200,
                        "attacks": [{"attack": "pgd", "eps": [0.05], "params": {"steps": 10}}],
                    },
                },
            ],
            "executor": executor,
            "ray": {"num_cpus": 2, "cpus_per_task": 1},
        }
    )


def ray_speedup(repeats: int, work: Path) -> tuple[float, list[float], list[float]]:
    import ray

    data = load_dataset("digits", params={"size": 16})
    model = build_model("student_cnn", input_shape=data.input_shape, num_classes=data.num_classes)
    fit(model, data, TrainSpec(epochs=3, lr=0.05), seed=0)
    checkpoint = work / "baseline.pt"
    torch.save(model.state_dict(), checkpoint)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=1)
        def warm() -> int:
            import compaudit  # noqa: F401  (import torch and compaudit in both workers once)

            return 0

        ray.get([warm.remote() for _ in range(4)])
        local_s: list[float] = []
        ray_s: list[float] = []
        for i in range(repeats):
            for executor, times in (("local", local_s), ("ray", ray_s)):
                t0 = time.perf_counter()
                summary = run_experiment(grid(checkpoint, executor), work / f"{executor}-{i}", report=False)
                times.append(time.perf_counter() - t0)
                assert summary.new == 18 and not summary.failed, summary
    finally:
        ray.shutdown()
    return statistics.median(local_s) / statistics.median(ray_s), local_s, ray_s


def demo_share(work: Path) -> tuple[float, float, float]:
    inside = 0.0
    depth = 0
    call = nn.Module.__call__
    backward = torch.Tensor.backward
    grad = torch.autograd.grad

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal inside, depth
            if depth:
                return fn(*args, **kwargs)
            depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                inside += time.perf_counter() - t0
                depth -= 1

        return wrapper

    nn.Module.__call__ = timed(call)  # type: ignore[method-assign]
    torch.Tensor.backward = timed(backward)  # type: ignore[method-assign]
    torch.autograd.grad = timed(grad)
    try:
        exp = Experiment.from_yaml_text(demo_experiment_text(), source="demo.yaml")
        t0 = time.perf_counter()
        run_experiment(exp, work / "demo")
        wall = time.perf_counter() - t0
    finally:
        nn.Module.__call__ = call  # type: ignore[method-assign]
        torch.Tensor.backward = backward  # type: ignore[method-assign]
        torch.autograd.grad = grad
    return 1.0 - inside / wall, wall, inside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="compaudit-bench-") as tmp:
        work = Path(tmp)
        speedup, local_s, ray_s = ray_speedup(args.repeats, work)
        print(f"ray_jobs = {8 * 2}")
        print(f"local_seconds_median = {statistics.median(local_s):.2f}")
        print(f"ray_seconds_median = {statistics.median(ray_s):.2f}")
        print(f"ray_speedup = {speedup:.3f}")
        if not args.skip_demo:
            share, wall, inside = demo_share(work)
            print(f"demo_seconds = {wall:.1f}")
            print(f"demo_forward_backward_seconds = {inside:.1f}")
            print(f"demo_share_outside_forward_backward = {share:.3f}")


if __name__ == "__main__":
    main()
