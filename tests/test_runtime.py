"""Content keys, derived seeds, device resolution and eval_mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compaudit.errors import CompauditError
from compaudit.inference import eval_mode
from compaudit.runtime import derive_seed, resolve_device, spec_key

SPEC = {"model": "vgg6", "steps": [{"method": "prune", "params": {"sparsity": 0.5, "scope": "global"}}]}


def test_spec_key_ignores_dict_key_order() -> None:
    reordered = {
        "steps": [{"params": {"scope": "global", "sparsity": 0.5}, "method": "prune"}],
        "model": "vgg6",
    }
    assert spec_key(SPEC) == spec_key(reordered)
    assert len(spec_key(SPEC)) == 16
    int(spec_key(SPEC), 16)  # hex digits


@pytest.mark.parametrize(
    "changed",
    [
        {**SPEC, "model": "vgg7"},
        {**SPEC, "steps": [{"method": "prune", "params": {"sparsity": 0.51, "scope": "global"}}]},
        {**SPEC, "steps": [{"method": "prune", "params": {"sparsity": 0.5, "scope": "layer"}}]},
        {**SPEC, "steps": [{"method": "prune", "params": {"sparsity": 0.5}}]},
        {**SPEC, "extra": None},
        {**SPEC, "steps": []},
    ],
)
def test_spec_key_changes_with_any_value(changed: dict[str, object]) -> None:
    assert spec_key(changed) != spec_key(SPEC)


def test_spec_key_accepts_paths_and_refuses_unknown_objects() -> None:
    assert spec_key({"root": Path("/data")}) == spec_key({"root": "/data"})
    with pytest.raises(TypeError):
        spec_key({"x": object()})


def test_derive_seed_differs_by_parts_and_is_stable() -> None:
    seeds = {
        derive_seed(0, "a"),
        derive_seed(0, "b"),
        derive_seed(1, "a"),
        derive_seed(0, "a", "b"),
        derive_seed(0, "ab"),
        derive_seed(0),
    }
    assert len(seeds) == 6
    assert derive_seed(0, "a") == derive_seed(0, "a")
    for s in seeds:
        assert 0 <= s < 2**31
        torch.Generator().manual_seed(s)  # usable as a torch seed


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_device_refuses_absent_cuda(name: str) -> None:
    with pytest.raises(CompauditError, match="no CUDA device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_resolve_device_auto_and_cpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def _mixed() -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2), nn.Dropout()), nn.ReLU())
    model.train()
    model[1][0].eval()
    model[2].eval()
    return model


def test_eval_mode_restores_mixed_flags() -> None:
    model = _mixed()
    before = [m.training for m in model.modules()]
    with eval_mode(model) as m:
        assert m is model
        assert not any(x.training for x in model.modules())
    assert [m.training for m in model.modules()] == before


def test_eval_mode_restores_mixed_flags_when_the_body_raises() -> None:
    model = _mixed()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not any(x.training for x in model.modules())
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
