"""Scale-out and overhead, printed as ``name = value`` lines.

``ray_speedup``: one grid run by the local executor (this process, torch's default threads: every
core) and by the Ray executor on a local cluster of 2 workers (one CPU and one torch thread
each), interleaved, ``--repeats`` times; the median of the local run's wall time over the Ray
run's (target >= 1.7 with 2 workers). The grid is the audit the seed papers run over a pruning
sweep: 8 sparsities of the digits baseline, each with one epoch of fine-tuning, and 4 probes:
accuracy, adversarial (a 10-step PGD on 200 test images, with the probe's sanity attack and
transfer route), shift (4 corruptions at 3 severities) and explain (saliency maps of 200 images).
That makes 36 independent (variant, probe) jobs (the baseline's 4 included) and 8 variants to
build: the Ray executor runs 44 tasks, 8 builds and then 36 probe tasks of 0.1 to 3 seconds on
one thread. Why this grid: it is what a user runs, its jobs are uneven (accuracy takes a tenth of
the attack's time), which per-job scheduling has to balance, and it carries the costs of
spreading a run out: the values probes share within a run (the corrupted images, the baseline's
saliency maps and clean predictions) are computed once by the local executor but once per worker
by Ray. Nothing in it is there to hide overhead: the tasks are short enough that the per-task
costs below matter. The baseline is a checkpoint trained once before timing, and Ray is started
once and warmed up (its workers have imported torch and compaudit), so both sides time the grid
only; each repeat names its experiment afresh, so the workers prepare it again in every timed
run, as in a run of its own.

``ray_speedup_ceiling``: what 2 workers could reach with no overhead at all, the local run's
median over half the median of the same grid run locally on one torch thread
(``local_1thread_seconds_median``). Two workers of one thread each do at best twice the work of
one thread, so where two torch threads already speed a job up by a factor ``f`` the ceiling is
``2 / f``: ``ray_speedup`` can only pass 1.7 on grids whose jobs gain less than 1.18x from a
second thread.

``ray_speedup_same_threads``: the same Ray runs against the local executor given the threads of one
Ray task (``local_1thread_seconds_median`` over the Ray median): how 2 workers scale over 1 when
each job gets the same resources. It is the figure that carries over to a cluster whose nodes add
cores; it is not ``ray_speedup``, whose local side uses every core of this machine.

``ray_task_setup_seconds_mean`` and ``_median``: the per-task overhead inside the timed Ray
runs, over every task: how long a task took to get ready for its work, as each task measured it:
its worker's prepared experiment looked up, or prepared by the first task of each worker (which
also imports what the probes need); the weights of its variant written and the variant restored,
unless the worker holds it already. ``ray_task_prepare_seconds_uncached``: what that preparation
costs when a worker keeps nothing between tasks, as every task paid it before workers kept it:
preparing the experiment (data, plan, base model), restoring the baseline and predicting its test
split, timed in this process on one thread with the imports done. ``ray_noop_task_seconds``:
Ray's own cost of a task, the wall time of 200 empty tasks on the 2 workers over 200.

``demo_share_outside_forward_backward``: the built-in demo run once in this process with every
outermost ``nn.Module`` call and every ``Tensor.backward`` / ``torch.autograd.grad`` call timed;
the share of the run's wall time spent outside them (target < 0.15). Calls that bypass those entry
points (a module imported as ``from torch.autograd import grad``) count as outside: the share is
an upper bound.

Usage: ``python bench/ray_scaling.py [--repeats 3] [--skip-demo]`` on a quiet machine: with
other processes on the cores, the local run's torch threads wait on each other and the ratio
means little.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compaudit import Experiment, build_model, fit, load_dataset, run_experiment
from compaudit.cli import demo_experiment_text
from compaudit.config import TrainSpec
from compaudit.run import worker
from compaudit.run.plan import make_plan

SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
PROBES: list[dict[str, Any]] = [
    {"name": "accuracy", "params": {"splits": ["test"]}},
    {
        "name": "adversarial",
        "params": {"samples": 200, "attacks": [{"attack": "pgd", "eps": [0.05], "params": {"steps": 10}}]},
    },
    {
        "name": "shift",
        "params": {
            "corruptions": ["gaussian_noise", "motion_blur", "contrast", "jpeg_compression"],
            "severities": [1, 3, 5],
        },
    },
    {"name": "explain", "params": {"samples": 200}},
]
JOBS = (len(SPARSITIES) + 1) * len(PROBES)
TASKS = len(SPARSITIES) + JOBS


def grid(checkpoint: Path, executor: str, name: str = "ray-scaling") -> Experiment:
    return Experiment.from_dict(
        {
            "name": name,
            "seed": 0,
            "data": {"name": "digits", "params": {"size": 16}},
            "model": {"name": "student_cnn", "checkpoint": str(checkpoint)},
            "variants": [
                {
                    "name": f"sparse{int(100 * s)}",
                    "steps": [{"method": "prune_unstructured", "params": {"sparsity": s}}],
                    "finetune": {"epochs": 1},
                }
                for s in SPARSITIES
            ],
            "probes": PROBES,
            "executor": executor,
            "ray": {"num_cpus": 2, "cpus_per_task": 1},
        }
    )


class _Setups(logging.Handler):
    """Collects the per-task setup times the Ray executor logs at the end of a run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seconds += [s for s, _ in getattr(record, "ray_setups", [])]


def prepare_uncached(checkpoint: Path, repeats: int = 5) -> float:
    """Median seconds to prepare the grid for one task with nothing kept (one torch thread)."""
    exp = grid(checkpoint, "local")
    cell = worker.Cell(exp, "", "uncached", (), 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for _ in range(repeats + 1):  # the first one imports what preparing needs
            worker.forget_cells()
            t0 = time.perf_counter()
            w, _ = worker.warm_cell(cell, dict)
            w.context.predictions(w.context.baseline, "test")
            times.append(time.perf_counter() - t0)
    finally:
        worker.forget_cells()
        torch.set_num_threads(threads)
    return statistics.median(times[1:])


def ray_speedup(repeats: int, work: Path) -> dict[str, float]:
    """The ``ray_*`` and ``local_*`` lines; every run's wall time goes to stderr."""
    import ray

    data = load_dataset("digits", params={"size": 16})
    model = build_model("student_cnn", input_shape=data.input_shape, num_classes=data.num_classes)
    fit(model, data, TrainSpec(epochs=3, lr=0.05), seed=0)
    checkpoint = work / "baseline.pt"
    torch.save(model.state_dict(), checkpoint)
    assert len(make_plan(grid(checkpoint, "local")).jobs) == JOBS

    setups = _Setups()
    log = logging.getLogger("compaudit")
    level = log.level
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=1)
        def warm() -> int:
            import compaudit.run.worker  # noqa: F401  (import torch and compaudit in both workers once)

            return 0

        @ray.remote(num_cpus=1)
        def noop() -> int:
            return 0

        ray.get([warm.remote() for _ in range(4)])
        t0 = time.perf_counter()
        ray.get([noop.remote() for _ in range(200)])
        noop_s = (time.perf_counter() - t0) / 200

        default_threads = torch.get_num_threads()
        runs: dict[str, list[float]] = {"local": [], "local-1thread": [], "ray": []}
        log.setLevel(logging.INFO)
        log.addHandler(setups)
        for i in range(repeats):
            for kind, times in runs.items():
                executor = "ray" if kind == "ray" else "local"
                torch.set_num_threads(1 if kind == "local-1thread" else default_threads)
                exp = grid(checkpoint, executor, name=f"ray-scaling-{i}")
                t0 = time.perf_counter()
                summary = run_experiment(exp, work / f"{kind}-{i}", report=False)
                times.append(time.perf_counter() - t0)
                assert summary.new == JOBS and not summary.failed, summary
        torch.set_num_threads(default_threads)
    finally:
        log.removeHandler(setups)
        log.setLevel(level)
        ray.shutdown()
    for kind, times in runs.items():
        print(f"# {kind} runs (s): {', '.join(f'{t:.2f}' for t in times)}", file=sys.stderr)
    local, local1, ray_s = (statistics.median(runs[k]) for k in ("local", "local-1thread", "ray"))
    assert len(setups.seconds) == repeats * TASKS, len(setups.seconds)
    return {
        "ray_jobs": JOBS,
        "ray_tasks": TASKS,
        "local_seconds_median": local,
        "local_1thread_seconds_median": local1,
        "ray_seconds_median": ray_s,
        "ray_speedup": local / ray_s,
        "ray_speedup_ceiling": local / (local1 / 2),
        "ray_speedup_same_threads": local1 / ray_s,
        "ray_task_setup_seconds_mean": statistics.mean(setups.seconds),
        "ray_task_setup_seconds_median": statistics.median(setups.seconds),
        "ray_task_prepare_seconds_uncached": prepare_uncached(checkpoint),
        "ray_noop_task_seconds": noop_s,
    }


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
        for name, value in ray_speedup(args.repeats, work).items():
            print(f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {value}")
        if not args.skip_demo:
            share, wall, inside = demo_share(work)
            print(f"demo_seconds = {wall:.1f}")
            print(f"demo_forward_backward_seconds = {inside:.1f}")
            print(f"demo_share_outside_forward_backward = {share:.3f}")


if __name__ == "__main__":
    main()
