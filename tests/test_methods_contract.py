"""The contract every registered compression method keeps, checked on a tiny real model.

A new method must add its smallest useful parameters to ``PARAMS``: the first test fails otherwise.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compaudit import METHODS, build_model
from compaudit.compress import CompressContext, make_permanent
from compaudit.config import TrainSpec
from compaudit.data import DataBundle
from compaudit.train import fit

PARAMS: dict[str, dict[str, Any]] = {
    "prune_unstructured": {"sparsity": 0.5},
    "prune_filters": {"ratio": 0.5},
    "quantize_int8": {"calibration_batches": 2},
    "quantize_kbit": {"weight_bits": 4, "act_bits": 8, "calibration_batches": 2},
    "qat": {"weight_bits": 4, "act_bits": 8, "epochs": 1},
    "distill": {"student": "student_cnn", "student_params": {"width": 0.5}, "train": {"epochs": 1}},
    "ablate": {"layers": 1, "train": {"epochs": 1}},
    "retrain": {"from_scratch": True, "train": {"epochs": 1}},
    "onnx": {},
    "onnx_int8": {"calibration_batches": 2},
    "openvino": {},
    "openvino_int8": {"calibration_batches": 2},
    # the path is the test's own export of the model under test (the vgg_onnx fixture)
    "deployed_file": {"path": "vgg.onnx"},
}


@pytest.fixture(scope="module")
def vgg(digits16: DataBundle) -> nn.Module:
    """A VGG-6 (width 0.25) trained 2 epochs on digits at 16x16: every method applies to it."""
    torch.manual_seed(0)
    model = build_model("vgg6", input_shape=digits16.input_shape, num_classes=10, params={"width": 0.25})
    fit(model, digits16, TrainSpec(epochs=2), seed=0)
    return model


def test_every_registered_method_is_covered() -> None:
    assert set(PARAMS) == set(METHODS.names())


@pytest.fixture(scope="module")
def vgg_onnx(vgg: nn.Module, digits16: DataBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model under test as a user's own .onnx file (TorchScript exporter, not compaudit's)."""
    path = tmp_path_factory.mktemp("contract") / "vgg.onnx"
    work = copy.deepcopy(vgg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            work,
            (digits16.test.x[:2],),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    return path


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_method_contract(
    name: str, vgg: nn.Module, digits16: DataBundle, request: pytest.FixtureRequest
) -> None:
    params = dict(PARAMS[name])
    if name == "deployed_file":
        params["path"] = request.getfixturevalue("vgg_onnx")
    vgg.train()
    vgg.features.eval()  # mixed flags: each must come back as it was
    flags = [(m, m.training) for m in vgg.modules()]
    before = copy.deepcopy(vgg.state_dict())
    method = METHODS.get(name).from_spec(name, params)
    ctx = CompressContext(digits16, seed=0, device=torch.device("cpu"))
    out = method.apply(vgg, ctx)

    # the caller's model is left exactly as it was: weights, buffers, modes, trainability
    after = vgg.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(m.training == f for m, f in flags)
    assert all(p.requires_grad for p in vgg.parameters())
    assert out is not vgg

    # the result runs on the data and gives logits
    x = digits16.test.x[:4]
    out.eval()
    with torch.no_grad():
        y = out(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()

    # the described step is what the lineage records, normalised (defaults spelled out)
    desc = method.describe()
    assert desc["method"] == name and set(PARAMS[name]) <= set(desc["params"])

    # restoring replays the architecture: the saved state loads strictly, outputs match
    saved = out.state_dict()
    replay = method.apply(vgg, CompressContext(digits16, seed=0, device=torch.device("cpu"), restoring=True))
    replay.load_state_dict(saved, strict=True)
    replay.eval()
    with torch.no_grad():
        assert torch.allclose(replay(x), y, atol=1e-5)

    # deploying (if the method deploys) gives a model that agrees with the trained one
    final = make_permanent(copy.deepcopy(out)).eval()
    deployment = method.deploy(final, ctx)
    assert isinstance(method.simulated(), bool)
    if deployment is not None:
        deployed = deployment.model
        if not deployment.gradient_path:  # the declared capability holds: no gradient reaches the input
            assert not deployed(digits16.test.x[:2].clone().requires_grad_(True)).requires_grad
        if deployment.graph is not None:  # the declared graph computes what the deployed model does
            with torch.no_grad():
                assert torch.equal(deployment.graph(digits16.test.x[:4]), deployed(digits16.test.x[:4]))
        with torch.no_grad():
            agree = (deployed(digits16.test.x).argmax(1) == final(digits16.test.x).argmax(1)).float().mean()
        assert agree >= 0.9
