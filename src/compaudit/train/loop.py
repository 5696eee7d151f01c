"""The one training loop. Objectives plug into it; baselines, recovery fine-tuning and (later)
adversarial and distillation training all run through :func:`fit`.

The loop keeps the weights of the epoch with the best validation accuracy, can save its full state
after every epoch and resume from it after a crash, and shuffles each epoch with a generator
seeded from ``(seed, epoch)``, so a resumed run is identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compaudit.config import TrainSpec
from compaudit.data.base import DataBundle, batches, num_batches
from compaudit.errors import CompauditError
from compaudit.inference import modes_restored, predict
from compaudit.progress import progress
from compaudit.runtime import atomic_torch_save, derive_seed
from compaudit.train.adversarial import PGDAdversarial
from compaudit.train.objective import CrossEntropy, Objective

log = logging.getLogger("compaudit")


@dataclass
class TrainResult:
    """What a training run did: per-epoch history and the epoch whose weights were kept."""

    epochs: int
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def _optimizer(params: list[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, spec: TrainSpec, steps_per_epoch: int) -> Any:
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, spec.epochs * steps_per_epoch))
    if spec.schedule == "step":
        milestones = [m * steps_per_epoch for m in spec.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=spec.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def fit(
    model: nn.Module,
    data: DataBundle,
    spec: TrainSpec,
    *,
    seed: int,
    objective: Objective | None = None,
    device: torch.device | str = "cpu",
    desc: str = "train",
    resume_path: Path | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train`` and keep the weights of the best validation epoch.

    ``resume_path``, when given, receives the loop's state after every epoch and is read back on the
    next call with the same arguments; it is deleted when training ends. The model's train/eval
    flags are restored on return.
    """
    objective = objective or default_objective(spec, data.bounds, seed)
    dev = torch.device(device)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CompauditError(f"{desc}: the model has no trainable parameters")
    steps = num_batches(data.train, spec.batch_size)
    opt = _optimizer(params, spec)
    sched = _scheduler(opt, spec, steps)
    start_epoch = 0
    best_acc = -1.0
    best_epoch = 0
    best_state: dict[str, Tensor] | None = None
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    if resume_path is not None and resume_path.is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and dev.type == "cuda":  # dropout on CUDA draws from the CUDA generator
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        start_epoch = int(state["epoch"])
        best_acc = float(state["best_acc"])
        best_epoch = int(state["best_epoch"])
        best_state = state["best_state"]
        history = [dict(h) for h in state["history"]]
        log.info("%s: resuming at epoch %d/%d", desc, start_epoch + 1, spec.epochs)
    elif spec.epochs == 0:
        best_acc = predict(model, data.val, device=device, desc=f"{desc} validation").accuracy
    with modes_restored(model):
        for epoch in range(start_epoch, spec.epochs):
            model.train()
            gen = torch.Generator().manual_seed(derive_seed(seed, "epoch", str(epoch)))
            objective.start_epoch(derive_seed(seed, "objective", str(epoch)))
            checked = 0
            losses: list[Tensor] = []  # one per batch, left on the device: no sync per batch
            sizes: list[int] = []
            it = batches(data.train, spec.batch_size, shuffle=True, generator=gen, device=device)
            for xb, yb in progress(it, desc=f"{desc} epoch {epoch + 1}/{spec.epochs}", total=steps):
                loss = objective.loss(model, xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.detach().float())
                sizes.append(len(yb))
                if len(losses) - checked >= CHECK_EVERY:
                    _check_finite(losses, checked, desc=desc, epoch=epoch, lr=spec.lr)
                    checked = len(losses)
            _check_finite(losses, checked, desc=desc, epoch=epoch, lr=spec.lr)
            total = sum(v * n for v, n in zip(torch.stack(losses).cpu().tolist(), sizes, strict=True))
            count = sum(sizes)
            val_acc = predict(
                model, data.val, device=device, desc=f"{desc} epoch {epoch + 1}/{spec.epochs} validation"
            ).accuracy
            history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "val_accuracy": val_acc})
            log.info(
                "%s: epoch %d/%d loss %.4f val_acc %.4f", desc, epoch + 1, spec.epochs, total / count, val_acc
            )
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch + 1
                best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            if resume_path is not None and epoch + 1 < spec.epochs:
                atomic_torch_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state(),
                        **({"cuda_rng": torch.cuda.get_rng_state(dev)} if dev.type == "cuda" else {}),
                        "epoch": epoch + 1,
                        "best_acc": best_acc,
                        "best_epoch": best_epoch,
                        "best_state": best_state,
                        "history": history,
                    },
                    resume_path,
                )
        if best_state is not None:
            model.load_state_dict(best_state)
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    return TrainResult(
        epochs=spec.epochs,
        best_epoch=best_epoch,
        best_val_accuracy=best_acc if not math.isinf(best_acc) else float("nan"),
        seconds=time.perf_counter() - t0,
        history=history,
    )


#: the training loop reads the losses back (one synchronisation) every this many batches
CHECK_EVERY = 32


def _check_finite(losses: list[Tensor], start: int, *, desc: str, epoch: int, lr: float) -> None:
    """Raise if a loss from batch ``start`` on is NaN or infinite, naming the first such batch."""
    if start >= len(losses):
        return
    window = torch.stack(losses[start:])
    bad = (~torch.isfinite(window)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise CompauditError(
            f"{desc}: training diverged (loss {float(window[i])}) at epoch {epoch + 1}, "
            f"batch {start + i + 1}; lower the learning rate (lr={lr})"
        )


def default_objective(spec: TrainSpec, bounds: tuple[float, float], seed: int) -> Objective:
    """The objective ``spec`` asks for: cross-entropy, or PGD adversarial training (seed 002)."""
    if spec.objective == "adversarial":
        return PGDAdversarial(spec.pgd, bounds=bounds, seed=seed)
    return CrossEntropy(spec.label_smoothing)
