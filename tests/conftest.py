"""Shared fixtures: tiny real experiments that train in seconds on 2 CPU cores."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
import yaml

if TYPE_CHECKING:
    from compaudit import Experiment, RunSummary

#: a real experiment, small enough to run end to end in a few seconds: digits at 16x16, a small CNN
TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits", "params": {"size": 16}},
    "model": {
        "name": "student_cnn",
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    },
    "variants": [
        {"name": "pruned50", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]},
        {
            "name": "pruned80-ft",
            "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.8, "scope": "layer"}}],
            "finetune": {"epochs": 1},
        },
    ],
    "probes": [
        {"name": "accuracy"},
        {"name": "efficiency", "params": {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1}},
    ],
}


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A deep copy of :data:`TINY` with top-level fields replaced."""
    cfg = copy.deepcopy(TINY)
    cfg.update(copy.deepcopy(overrides))
    return cfg


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``compaudit ARGS`` in-process: (exit code, stdout, stderr)."""
    from compaudit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 0), out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    """``err`` is one line, compaudit's error line, naming every one of ``needles``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("compaudit: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Decoded-image caches go to a folder of this test session, never the user's ~/.cache."""
    old = os.environ.get("COMPAUDIT_CACHE_DIR")
    os.environ["COMPAUDIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("compaudit-cache"))
    yield
    if old is None:
        os.environ.pop("COMPAUDIT_CACHE_DIR", None)
    else:
        os.environ["COMPAUDIT_CACHE_DIR"] = old


# ---------------------------------------------------------------- tiny real models and data


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    """A fresh ``student_cnn`` (width 0.5, ~15k parameters) for 1x16x16 inputs, initialised from ``seed``."""
    from compaudit import build_model

    torch.manual_seed(seed)
    return build_model("student_cnn", input_shape=(1, 16, 16), num_classes=10, params={"width": 0.5})


@pytest.fixture(scope="session")
def digits16() -> Any:
    """The embedded digits at 16x16 (1,295 train / 143 val / 359 test images); loaded once."""
    from compaudit import load_dataset

    return load_dataset("digits", params={"size": 16})


@pytest.fixture(scope="session")
def trained_state(digits16: Any) -> dict[str, torch.Tensor]:
    """State dict of :func:`tiny_cnn` trained 3 epochs on :func:`digits16` (about 2 s, once)."""
    from compaudit import fit
    from compaudit.config import TrainSpec

    torch.set_num_threads(2)
    model = tiny_cnn(0)
    fit(model, digits16, TrainSpec(epochs=3, batch_size=64, lr=0.05), seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained_cnn(trained_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A fresh copy of the trained tiny CNN, in eval mode; tests may change it freely."""
    model = tiny_cnn(0)
    model.load_state_dict(trained_state)
    return model.eval()


# ---------------------------------------------------------------- the built-in demo, run once


@dataclass(frozen=True)
class DemoRun:
    """The built-in demo, run once per test session into a fresh folder."""

    experiment: Experiment
    out: Path  #: the run folder (``out / "report.html"`` is its report)
    first: RunSummary  #: what that first run did (everything new, nothing from the cache)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The built-in demo (``compaudit demo``), run once for every test that needs it (minutes)."""
    from compaudit import Experiment, run_experiment
    from compaudit.cli import demo_experiment_text

    torch.set_num_threads(2)
    exp = Experiment.from_yaml_text(demo_experiment_text(), source="demo.yaml")
    out = tmp_path_factory.mktemp("demo-run") / "demo"
    return DemoRun(experiment=exp, out=out, first=run_experiment(exp, out))
