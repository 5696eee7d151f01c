"""Memory layout: a run probes its models in channels-last, while every compression step gets an
NCHW copy and weights are trained and saved as before (README, "Memory layout")."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compaudit import Experiment
from compaudit.compress import METHODS, CompressContext, make_permanent
from compaudit.data import DataBundle
from compaudit.inference import channels_last
from compaudit.run.build import Builder
from compaudit.run.prepare import prepare
from compaudit.store import Store
from tests.conftest import tiny_config


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_a_step_on_a_channels_last_model_works_on_an_nchw_copy(
    trained_cnn: nn.Module, digits16: DataBundle
) -> None:
    # torch.nn.utils.prune's global pruning .view()s every weight: on channels-last weights it
    # raised "view size is not compatible with input tensor's size and stride"
    method = METHODS.get("prune_unstructured").from_spec("prune_unstructured", {"sparsity": 0.5})
    ctx = CompressContext(digits16, seed=0, device=torch.device("cpu"))
    plain = make_permanent(method.apply(trained_cnn, ctx))
    cl = channels_last(trained_cnn)
    assert all(is_channels_last(w) for w in conv_weights(cl) if w.shape[1] > 1)
    pruned = make_permanent(method.apply(cl, ctx))
    a, b = plain.state_dict(), pruned.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(is_channels_last(w) for w in conv_weights(cl) if w.shape[1] > 1)  # the input kept its layout


def test_a_run_probes_in_channels_last_and_saves_what_it_trained(tmp_path: Path) -> None:
    exp = Experiment.from_dict(tiny_config())
    prepared = prepare(exp)
    with Store(tmp_path / "run", create=True) as store:
        builder = Builder(prepared, store)
        base = builder.baseline()
        variant = builder.build(next(vp for vp in prepared.plan.all_variants if not vp.is_baseline))
        for model in (base.model, variant.model):
            convs = [w for w in conv_weights(model) if w.shape[1] > 1]
            assert convs and all(is_channels_last(w) for w in convs)
        # the saved baseline weights load into a fresh NCHW model that computes the same logits
        fresh = prepare(exp).base_model  # untrained, NCHW
        state = torch.load(builder.weights(base.key), weights_only=True)
        fresh.load_state_dict(state)
        x = prepared.data.test.x[:64]
        with torch.no_grad():
            assert torch.allclose(fresh.eval()(x), base.model(x), rtol=0, atol=1e-5)
