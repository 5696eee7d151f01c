"""The model zoo, ``build_model`` errors and strict checkpoint loading."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compaudit.errors import ModelError
from compaudit.models import MODELS, build_model, load_checkpoint
from compaudit.models.plain import PlainCNN

# Small variants keep the parametrized build/forward test fast; a name not listed builds at defaults.
SMALL: dict[str, dict[str, Any]] = {
    "vgg6": {"width": 0.25},
    "cnn8": {"width": 0.25},
    "resnet18": {"width": 8},
    "resnet34": {"width": 8},
    "resnet50": {"width": 4},
    "wrn": {"depth": 10, "widen_factor": 1},
    "student_cnn": {"width": 0.5},
    "mobile_cnn": {"width": 0.25},
}
BUILTIN = {
    "vgg6",
    "cnn8",
    "lenet5",
    "resnet18",
    "resnet34",
    "resnet50",
    "wrn",
    "wrn28_10",
    "student_cnn",
    "mobile_cnn",
}


class NotAStateDict:
    """Pickled by ``torch.save`` as an arbitrary object; ``weights_only`` loading must refuse it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def vgg6(num_classes: int = 10, size: int = 32, **params: Any) -> nn.Module:
    return build_model("vgg6", input_shape=(3, size, size), num_classes=num_classes, params=params)


# --- the registry -------------------------------------------------------------------------------------


def test_all_seed_architectures_are_registered() -> None:
    assert set(MODELS.names()) >= BUILTIN


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_factory_signature_and_doc(name: str) -> None:
    fn = MODELS.get(name)
    assert MODELS.doc(name), f"{name} has no docstring"
    sig = inspect.signature(fn)
    assert {"in_channels", "num_classes", "input_size"} <= set(sig.parameters)
    for p in sig.parameters.values():
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p.name} is not keyword-only"
        if p.name not in {"in_channels", "num_classes", "input_size"}:
            assert p.default is not inspect.Parameter.empty, f"{name}: {p.name} has no default"


#: networks with a full-size ImageNet layout (no width knob): seconds per build, so the full-size
#: ones run in the slow suite (tests/test_arch_contracts.py covers every one at small inputs)
HEAVY = {
    "resnet50_imagenet",
    "resnet101_imagenet",
    "resnet152_imagenet",
    "vgg16",
    "vgg16_bn",
    "squeezenet1_0",
}
#: networks built for RGB weights: grey data goes through ``input_adapter: repeat``
RGB_NORMALISED = {
    n for n in MODELS.names() if n.endswith("_imagenet") or n.startswith(("vgg16", "squeezenet"))
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS.names()]
)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [10, 7])
def test_build_forward_backward(name: str, channels: int, num_classes: int) -> None:
    torch.manual_seed(0)
    params = dict(SMALL.get(name, {}))
    if name in RGB_NORMALISED and channels == 1:
        params["input_adapter"] = "repeat"
    model = build_model(name, input_shape=(channels, 32, 32), num_classes=num_classes, params=params)
    model.train()
    x = torch.randn(2, channels, 32, 32)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, num_classes - 1]))
    loss.backward()
    grad = first_conv(model).weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


# --- architecture details -----------------------------------------------------------------------------


def test_vgg6_matches_the_paper_at_32x32() -> None:
    model = vgg6()
    assert isinstance(model, PlainCNN)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [32, 32, 64, 64, 128, 128]
    fcs = linears(model.classifier)
    assert [(fc.in_features, fc.out_features) for fc in fcs] == [(2048, 1024), (1024, 512), (512, 10)]
    assert model.classifier[0] is fcs[0]
    # features: one block per conv layer, a max-pool ending blocks 2, 4 and 6
    assert len(model.features) == 6
    pools = [any(isinstance(m, nn.MaxPool2d) for m in block) for block in model.features]
    assert pools == [False, True, False, True, False, True]


def test_vgg6_sizes_its_classifier_from_the_input() -> None:
    assert linears(vgg6(size=64).classifier)[0].in_features == 8192
    assert linears(vgg6(width=0.5).classifier)[0].in_features == 1024


def test_plain_cnn_flatten_dim_supports_layer_ablation() -> None:
    model = vgg6()
    assert isinstance(model, PlainCNN)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    for kept in range(1, 7):
        out = model.features[:kept](x)
        assert model.flatten_dim(kept) == out[0].numel()
    # removing the last two conv layers and re-sizing the first FC layer gives a working model
    model.features = model.features[:4]
    model.classifier[0] = nn.Linear(model.flatten_dim(4), 1024)
    assert model(x).shape == (1, 10)


@pytest.mark.parametrize("size", [28, 32])
def test_lenet5_sizes(size: int) -> None:
    model = build_model("lenet5", input_shape=(1, size, size), num_classes=10)
    assert [(fc.in_features, fc.out_features) for fc in linears(model)] == [(400, 120), (120, 84), (84, 10)]
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_cnn8_on_fashion_mnist_input() -> None:
    model = build_model("cnn8", input_shape=(1, 28, 28), num_classes=10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6
    assert [(fc.in_features, fc.out_features) for fc in linears(model)] == [(128 * 3 * 3, 256), (256, 10)]


@pytest.mark.parametrize("name", ["resnet18", "wrn", "student_cnn", "mobile_cnn"])
def test_gap_models_end_in_avgpool_and_fc(name: str) -> None:
    model = build_model(name, input_shape=(3, 32, 32), num_classes=10, params=SMALL.get(name, {}))
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.out_features == 10


def test_resnet18_parameter_count() -> None:
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    assert n_params(model) == 11_173_962


def test_wrn28_10_parameter_count() -> None:
    model = build_model("wrn28_10", input_shape=(3, 32, 32), num_classes=10)
    assert n_params(model) == 36_479_194


def test_resnet_blocks() -> None:
    r50 = build_model("resnet50", input_shape=(3, 32, 32), num_classes=10, params={"width": 4})
    assert r50.fc.in_features == 8 * 4 * 4  # Bottleneck expansion 4
    r34 = build_model("resnet34", input_shape=(3, 32, 32), num_classes=10, params={"width": 4})
    assert [len(getattr(r34, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


# --- build_model errors -------------------------------------------------------------------------------


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ModelError, match="vgg7") as exc:
        build_model("vgg7", input_shape=(3, 32, 32), num_classes=10)
    assert "vgg6" in str(exc.value) and "resnet18" in str(exc.value)


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ModelError, match="'depth'") as exc:
        vgg6(depth=3)
    assert "width" in str(exc.value)  # lists what it accepts


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("vgg6", (3, 4, 4), {}),
        ("vgg6", (3, 32, 32), {"width": 0}),
        ("vgg6", (3, 32, 32), {"dropout": 1.0}),
        ("lenet5", (1, 8, 8), {}),
        ("student_cnn", (3, 2, 2), {}),
        ("wrn", (3, 32, 32), {"depth": 20}),
        ("resnet18", (3, 32, 32), {"width": 0}),
    ],
)
def test_impossible_builds_are_model_errors(
    name: str, shape: tuple[int, int, int], params: dict[str, Any]
) -> None:
    with pytest.raises(ModelError) as exc:
        build_model(name, input_shape=shape, num_classes=10, params=params)
    assert "\n" not in str(exc.value)
    assert name in str(exc.value)


def test_user_factory_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "compaudit_test_user_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(*, in_channels, num_classes, input_size, hidden=4):
                h, w = input_size
                return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, hidden),
                                     nn.ReLU(), nn.Linear(hidden, num_classes))

            not_callable = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(
        "compaudit_test_user_models:tiny", input_shape=(1, 4, 4), num_classes=3, params={"hidden": 5}
    )
    assert model(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    assert linears(model)[0].out_features == 5
    with pytest.raises(ModelError, match="not_callable"):
        build_model("compaudit_test_user_models:not_callable", input_shape=(1, 4, 4), num_classes=3)


@pytest.mark.parametrize("path", ["nonexistent_mod_qzx:fn", "json:nope", "compaudit.models:nope"])
def test_bad_factory_path(path: str) -> None:
    with pytest.raises(ModelError):
        build_model(path, input_shape=(3, 32, 32), num_classes=10)


# --- checkpoints --------------------------------------------------------------------------------------


@pytest.fixture
def trained_vgg6() -> nn.Module:
    """A small vgg6 whose BN running statistics are not the defaults."""
    torch.manual_seed(1)
    model = vgg6(width=0.25)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


def test_checkpoint_round_trip(trained_vgg6: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "vgg6.pt"
    torch.save(trained_vgg6.state_dict(), path)
    torch.manual_seed(2)
    fresh = vgg6(width=0.25).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(fresh(x), trained_vgg6(x))
        assert load_checkpoint(fresh, path) is fresh
        assert torch.equal(fresh(x), trained_vgg6(x))


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "model"])
def test_wrapped_checkpoint_loads(trained_vgg6: nn.Module, tmp_path: Path, wrapper: str) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper: trained_vgg6.state_dict(), "epoch": 3}, path)
    fresh = load_checkpoint(vgg6(width=0.25), path)
    for key, value in trained_vgg6.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_checkpoint_of_another_architecture_names_the_key(tmp_path: Path) -> None:
    lenet = build_model("lenet5", input_shape=(3, 32, 32), num_classes=10)
    path = tmp_path / "lenet.pt"
    torch.save(lenet.state_dict(), path)
    model = vgg6()
    theirs = lenet.state_dict()
    first_bad = next(
        k for k, v in model.state_dict().items() if k not in theirs or theirs[k].shape != v.shape
    )
    with pytest.raises(ModelError) as exc:
        load_checkpoint(model, path)
    assert repr(first_bad) in str(exc.value)


def test_checkpoint_with_other_class_count(trained_vgg6: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    torch.save(trained_vgg6.state_dict(), path)
    with pytest.raises(ModelError, match="shape") as exc:
        load_checkpoint(vgg6(num_classes=7, width=0.25), path)
    message = str(exc.value)
    assert "classifier.6.weight" in message
    assert "(10, 512)" in message and "(7, 512)" in message


def test_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "missing.pt"
    with pytest.raises(ModelError, match=r"missing\.pt") as exc:
        load_checkpoint(vgg6(), path)
    assert str(path) in str(exc.value)


def test_garbage_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelError, match=r"garbage\.pt"):
        load_checkpoint(vgg6(), path)


def test_checkpoint_with_nan_is_refused(trained_vgg6: nn.Module, tmp_path: Path) -> None:
    state = trained_vgg6.state_dict()
    state["classifier.3.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="NaN") as exc:
        load_checkpoint(vgg6(width=0.25), path)
    assert "classifier.3.weight" in str(exc.value)


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "object.pt"
    torch.save(NotAStateDict(), path)
    with pytest.raises(ModelError, match="cannot be read safely"):
        load_checkpoint(vgg6(), path)


def test_non_tensor_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": [2, 3]}, path)
    with pytest.raises(ModelError, match="state dict of tensors"):
        load_checkpoint(vgg6(), path)


def test_data_parallel_prefix_is_stripped(trained_vgg6: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in trained_vgg6.state_dict().items()}, path)
    load_checkpoint(vgg6(width=0.25), path)
