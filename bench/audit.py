"""What the adversarial probe's savings buy, with the same numbers, and what the demo costs.

Prints ``name = value`` lines.

**The adversarial probe both ways.** One fixed experiment: VGG-6 trained on the embedded digits data
set as 3x32x32 images (real images at CIFAR-10's shape; nothing is downloaded), 8 variants of which
two run int8 kernels (PyTorch's ``quantize_int8`` and ONNX Runtime's ``onnx_int8``), and the
adversarial probe on 200 test samples with FGSM and PGD-20 at eps 2/255 and 8/255, C&W with its
default settings and DeepFool. The variants are built once (a run with the accuracy probe); then,
for each variant in turn, the probe runs with ``savings: true`` and with ``savings: false``, the
order alternating from one variant to the next (interleaved), each way with its own probe context
(so the transfer examples are crafted once per run with savings on, for every variant with them
off, as before the savings).

- ``adversarial_probe_seconds_{on,off}``: the probe's time over the 8 variants, each way;
- ``adversarial_probe_speedup``: off / on (target >= 3);
- ``adversarial_numbers_identical``: 1 when every robust accuracy, success rate, fooled count,
  masking check and verdict of the two ways is identical and every median norm agrees within
  1e-5 relative; else 0, and the first difference is printed;
- ``adversarial_seconds_{on,off}_<variant>``: per variant;
- ``adversarial_seconds_{on,off}_<attack>``: the wall time inside each attack's ``Attack.run``
  calls, each way (the rest is predictions and bookkeeping);
- ``adversarial_probe_speedup_ceiling``: off / (the C&W seconds of the savings-on side): the
  speedup if everything else the probe does with savings on took no time at all. C&W's work cannot
  be skipped without changing its norms (its result is the smallest fooling perturbation over
  every iterate and search step), so no saving (work skipped, numbers kept) can go past this
  figure; only making C&W's own passes cheaper, in both modes alike, moves it.

**The demo** (``--demo``, default on; ``--no-demo`` skips it): ``compaudit demo`` in a fresh folder,
timed from the command's start to its end (``demo_seconds``, target < 150 on 2 quiet cores), and
each probe's share of the demo's wall time from the seconds the run folder records per result
(``demo_share_<probe>``), with the rest (building and training the variants, the report)
as ``demo_share_build_and_report``.

Run it alone on the machine (two cores shared with anything else give meaningless times):
``python bench/audit.py [--samples N] [--no-demo] [--no-probe]``.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from compaudit.attacks import Attack, AttackResult
from compaudit.config import Experiment
from compaudit.probes import PROBES, ProbeContext
from compaudit.results import ProbeResult
from compaudit.run import run_experiment
from compaudit.run.build import Builder
from compaudit.run.prepare import prepare
from compaudit.run.validate import validate
from compaudit.store import Store
from compaudit.variant import Variant

VARIANTS: list[dict[str, Any]] = [
    {"name": "global-l1-50", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]},
    {
        "name": "layer-l1-90",
        "steps": [
            {
                "method": "prune_unstructured",
                "params": {"sparsity": 0.9, "scope": "layer", "skip_first_conv": True},
            }
        ],
    },
    {"name": "filters-50", "steps": [{"method": "prune_filters", "params": {"ratio": 0.5}}]},
    {
        "name": "filters-50-ft",
        "steps": [{"method": "prune_filters", "params": {"ratio": 0.5}}],
        "finetune": {"epochs": 1, "lr": 0.01},
    },
    {
        "name": "wbits-4",
        "steps": [{"method": "quantize_kbit", "params": {"weight_bits": 4, "act_bits": 8}}],
    },
    {"name": "int8", "steps": [{"method": "quantize_int8", "params": {"calibration_batches": 8}}]},
    {"name": "onnx-int8", "steps": [{"method": "onnx_int8", "params": {"calibration_batches": 8}}]},
]


def attacks() -> list[dict[str, Any]]:
    return [
        {"attack": "fgsm", "eps": [2 / 255, 8 / 255]},
        {"attack": "pgd", "eps": [2 / 255, 8 / 255], "params": {"steps": 20}},
        {"attack": "cw", "eps": [0.5, 1.0]},
        {"attack": "deepfool", "eps": [0.5, 1.0]},
    ]


def experiment(samples: int) -> Experiment:
    spec = {
        "name": "audit-bench",
        "seed": 0,
        "device": "cpu",
        "data": {"name": "digits", "params": {"channels": 3, "size": 32}},
        "model": {
            "name": "vgg6",
            "train": {"epochs": 6, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
        },
        "variants": VARIANTS,
        "probes": [
            {"name": "accuracy"},
            {"name": "adversarial", "params": {"samples": samples, "attacks": attacks()}},
        ],
    }
    return validate(Experiment.model_validate(spec), source="bench/audit.py")


def comparable(
    res: ProbeResult,
) -> tuple[dict[tuple[Any, ...], float], dict[tuple[Any, ...], float], list[Any]]:
    """(exact metrics, norms, masking checks) of a result, keyed by metric name and tags."""
    exact: dict[tuple[Any, ...], float] = {}
    norms: dict[tuple[Any, ...], float] = {}
    for m in res.metrics:
        if m.name in ("seconds_per_sample", "time_to_fool"):
            continue
        key = (m.name, *sorted((k, str(v)) for k, v in m.params.items()))
        (norms if m.name == "median_norm" else exact)[key] = m.value
    checks = [{k: v for k, v in c.items()} for c in res.tables.get("masking_checks", [])]
    return exact, norms, checks


def same(a: float, b: float, rel: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b if rel == 0 else abs(a - b) <= rel * max(abs(a), abs(b))


def differences(on: ProbeResult, off: ProbeResult) -> list[str]:
    e1, n1, c1 = comparable(on)
    e2, n2, c2 = comparable(off)
    out = []
    if e1.keys() != e2.keys() or n1.keys() != n2.keys():
        out.append("different metric rows")
    out += [f"{k}: {e1[k]} vs {e2[k]}" for k in e1.keys() & e2.keys() if not same(e1[k], e2[k])]
    out += [f"{k}: {n1[k]} vs {n2[k]}" for k in n1.keys() & n2.keys() if not same(n1[k], n2[k], 1e-5)]
    if len(c1) != len(c2):
        out.append("different masking checks")
    for a, b in zip(c1, c2, strict=False):
        for field in ("check", "route", "attack", "passed", "verdict"):
            if a[field] != b[field]:
                out.append(f"masking check {a['check']}: {field} {a[field]} vs {b[field]}")
        for field in ("value", "reference"):
            if not same(float(a[field]), float(b[field])):
                out.append(f"masking check {a['check']}: {field} {a[field]} vs {b[field]}")
    return out


def adversarial_both_ways(samples: int) -> None:
    exp = experiment(samples)
    with tempfile.TemporaryDirectory(prefix="compaudit-bench-audit-") as tmp:
        build = exp.model_copy(update={"probes": [p for p in exp.probes if p.name == "accuracy"]})
        run_experiment(build, Path(tmp))  # builds and stores every variant's weights
        prepared = prepare(exp)
        builder = Builder(prepared, Store(Path(tmp)))
        baseline = builder.baseline()
        variants: list[Variant] = [builder.build(vp) for vp in prepared.plan.all_variants]
        spec = next(p for p in exp.probes if p.name == "adversarial")
        cls = PROBES.get("adversarial")
        probes = {
            mode: cls.from_spec("adversarial", {**spec.params, "savings": mode}) for mode in (True, False)
        }
        contexts: dict[bool, ProbeContext] = {
            mode: prepared.probe_context(baseline) for mode in (True, False)
        }
        seconds: dict[bool, dict[str, float]] = {True: {}, False: {}}
        results: dict[bool, dict[str, ProbeResult]] = {True: {}, False: {}}
        attack_seconds: dict[bool, dict[str, float]] = {True: {}, False: {}}
        run = Attack.run
        current = [True]

        def timed(self: Attack[Any], *args: Any, **kwargs: Any) -> AttackResult:
            t0 = time.perf_counter()
            try:
                return run(self, *args, **kwargs)
            finally:
                spent = attack_seconds[current[0]]
                spent[self.name] = spent.get(self.name, 0.0) + time.perf_counter() - t0

        Attack.run = timed  # type: ignore[method-assign]
        try:
            for i, variant in enumerate(variants):
                for mode in (True, False) if i % 2 == 0 else (False, True):
                    current[0] = mode
                    t0 = time.perf_counter()
                    results[mode][variant.name] = probes[mode].run(variant, contexts[mode])
                    seconds[mode][variant.name] = time.perf_counter() - t0
                    print(f"# {variant.name} savings={mode}: {seconds[mode][variant.name]:.1f}s", flush=True)
        finally:
            Attack.run = run  # type: ignore[method-assign]
    diffs = [f"{v}: {d}" for v in results[True] for d in differences(results[True][v], results[False][v])]
    on, off = sum(seconds[True].values()), sum(seconds[False].values())
    print(f"adversarial_probe_seconds_on = {on:.1f}")
    print(f"adversarial_probe_seconds_off = {off:.1f}")
    for v in seconds[True]:
        print(f"adversarial_seconds_on_{v} = {seconds[True][v]:.2f}")
        print(f"adversarial_seconds_off_{v} = {seconds[False][v]:.2f}")
    for mode, label in ((True, "on"), (False, "off")):
        for name, secs in sorted(attack_seconds[mode].items(), key=lambda kv: -kv[1]):
            print(f"adversarial_seconds_{label}_{name} = {secs:.1f}")
    print(f"adversarial_probe_speedup = {off / on:.2f}")
    cw_on = attack_seconds[True].get("cw", 0.0)
    if cw_on > 0:
        print(f"adversarial_probe_speedup_ceiling = {off / cw_on:.2f}")
    print(f"adversarial_numbers_identical = {int(not diffs)}")
    for d in diffs[:20]:
        print(f"# difference: {d}")


def demo() -> None:
    with tempfile.TemporaryDirectory(prefix="compaudit-bench-demo-") as tmp:
        out = Path(tmp) / "demo"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "compaudit", "demo", "--out", str(out), "-q"], check=True)
        total = time.perf_counter() - t0
        with sqlite3.connect(out / "results.sqlite") as db:
            rows = db.execute("SELECT probe, SUM(seconds) FROM results GROUP BY probe").fetchall()
    print(f"demo_seconds = {total:.1f}")
    probes = {probe: float(s) for probe, s in rows if probe in PROBES}
    for probe, s in sorted(probes.items(), key=lambda kv: -kv[1]):
        print(f"demo_share_{probe} = {s / total:.3f}")
    print(f"demo_share_build_and_report = {(total - sum(probes.values())) / total:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="attacked test samples (default 200)")
    ap.add_argument("--demo", action=argparse.BooleanOptionalAction, default=True, help="time the demo")
    ap.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the adversarial probe both ways (--no-probe: the demo only)",
    )
    args = ap.parse_args()
    print(f"cpu_threads = {torch.get_num_threads()}")
    if args.probe:
        adversarial_both_ways(args.samples)
    if args.demo:
        demo()


if __name__ == "__main__":
    main()
