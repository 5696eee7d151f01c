"""How fast our batched white-box attacks are: against the bare loop and against torchattacks / Foolbox.

Prints ``name = value`` lines, each measured in this one run (medians of interleaved runs: every
round times every contender once, in a rotating order, so drifts of the machine hit all alike):

- ``pgd_limit_ratio``: bare loop (``steps`` x forward + input-gradient backward, nothing else) / our
  PGD's full ``Attack.run`` (random start, projection, clipping, mode bookkeeping and the final
  forward that judges success) (target >= 0.85)
- ``pgd_vs_torchattacks_ratio``, ``pgd_vs_foolbox_ratio``: their PGD time / ours, same eps, step,
  steps and random start (target >= 1.0). Equal work: our ``run`` and Foolbox's call both end with
  the forward pass that judges success, so torchattacks is timed with that forward on its result
  too; ``pgd_vs_torchattacks_attack_only_ratio`` leaves it out (torchattacks then does one forward
  pass less than we do: expect about ``steps / (steps + 1/3)``)
- ``deepfool_vs_torchattacks_ratio``: torchattacks.DeepFool(steps=50, overshoot=0.02) time / ours
  (target >= 3) on a smaller batch; ``deepfool_success_ours`` / ``deepfool_success_torchattacks``:
  fraction of that batch fooled (ours must be equal or better)
- ``cw_step_vs_pgd_step_ratio``: time per C&W iteration / time per PGD iteration (target <= 1.1)

Model: CIFAR-style ResNet-18 of width 16 at 3x32x32 with random weights (speed does not depend on
the values), labels = its own predictions so that every sample starts correctly classified.
Usage: ``python bench/attacks.py [--rounds N] [--steps S] [--batch B] [--deepfool-batch B]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compaudit import build_model
from compaudit.attacks import ATTACKS, Attack


def make(name: str, **params: object) -> Attack:
    return ATTACKS.get(name).from_spec(name, dict(params))


def interleaved_s(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in rotating order over ``rounds`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    items = list(fns.items())
    for r in range(rounds):
        for name, fn in items[r % len(items) :] + items[: r % len(items)]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bare_loop(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> None:
    """The limit: forward + input-gradient backward, ``steps`` times, no bookkeeping at all."""
    adv = x.clone().requires_grad_(True)
    for _ in range(steps):
        torch.autograd.grad(F.cross_entropy(model(adv), y), adv)


def fooled(model: nn.Module, adv: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(dim=1) != y).float().mean())


def main() -> None:
    import foolbox
    import torchattacks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--deepfool-batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, params={"width": 16}).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        # a random ResNet sends every input to one class; centre its logits over the batch so that
        # labels (its own predictions) are spread over the classes and DeepFool has real work to do
        assert last.bias is not None
        last.bias.sub_(model(x).mean(dim=0))
        y = model(x).argmax(dim=1)
    eps, step, steps = 8 / 255, 2 / 255, args.steps

    ours_pgd = make("pgd", eps=eps, step_size=step, steps=steps)
    ours_cw = make("cw", steps=steps)
    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
    fmodel = foolbox.models.PyTorchModel(model, bounds=(0, 1))  # type: ignore[attr-defined]
    fb_pgd = foolbox.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=True)

    def frozen_bare() -> None:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        bare_loop(model, x, y, steps)
        for p, flag in flags:
            p.requires_grad_(flag)

    t = interleaved_s(
        {
            "bare": frozen_bare,
            "pgd": lambda: ours_pgd.run(model, x, y, generator=torch.Generator().manual_seed(0)),
            "torchattacks": lambda: ta_pgd(x, y),
            "torchattacks+judge": lambda: fooled(model, ta_pgd(x, y), y),
            "foolbox": lambda: fb_pgd(fmodel, x, y, epsilons=eps),
            "cw": lambda: ours_cw.run(model, x, y),
        },
        args.rounds,
    )
    print(f"pgd_limit_ratio = {t['bare'] / t['pgd']:.3f}")
    print(f"pgd_vs_torchattacks_ratio = {t['torchattacks+judge'] / t['pgd']:.3f}")
    print(f"pgd_vs_torchattacks_attack_only_ratio = {t['torchattacks'] / t['pgd']:.3f}")
    print(f"pgd_vs_foolbox_ratio = {t['foolbox'] / t['pgd']:.3f}")
    print(f"cw_step_vs_pgd_step_ratio = {t['cw'] / t['pgd']:.3f}")  # same number of iterations

    xd, yd = x[: args.deepfool_batch], y[: args.deepfool_batch]
    ours_df = make("deepfool", steps=50, overshoot=0.02)
    ta_df = torchattacks.DeepFool(model, steps=50, overshoot=0.02)
    out: dict[str, Tensor] = {}

    def run_ours() -> None:
        out["ours"] = ours_df.run(model, xd, yd).adv

    def run_ta() -> None:
        out["torchattacks"] = ta_df(xd, yd)

    td = interleaved_s({"ours": run_ours, "torchattacks": run_ta}, max(3, args.rounds // 2))
    print(f"deepfool_vs_torchattacks_ratio = {td['torchattacks'] / td['ours']:.3f}")
    print(f"deepfool_success_ours = {fooled(model, out['ours'], yd):.3f}")
    print(f"deepfool_success_torchattacks = {fooled(model, out['torchattacks'], yd):.3f}")
    for name, seconds in t.items():
        print(f"{name.replace('+', '_')}_ms = {1000 * seconds:.1f}")
    print(f"deepfool_ms = {1000 * td['ours']:.1f}")
    print(f"deepfool_torchattacks_ms = {1000 * td['torchattacks']:.1f}")


if __name__ == "__main__":
    main()
