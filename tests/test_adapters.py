"""Models from torchvision, timm and transformers: ``torchvision:``, ``timm:``, ``hf:``
(:mod:`compaudit.models.adapters`), the ``state_dict_prefix`` the loaders honour, and
``.safetensors`` checkpoints.

torchvision and timm do not import with the torch this project pins (no torchvision build exists
for torch 2.13.0 here, and timm needs torchvision), so their adapters are tested against
**stand-ins**: a fake ``torchvision`` package and a fake ``timm`` module, put into ``sys.modules``
with monkeypatch for one test. They follow the libraries' documented call signatures,
``torchvision.models.get_model(name, weights=None, **kwargs)``, ``get_model_weights(name)`` returning
an enum whose members carry ``.url`` (``DEFAULT`` an alias), ``timm.create_model(name,
pretrained=False, num_classes=..., in_chans=..., checkpoint_path=..., **kwargs)`` returning a model
with ``pretrained_cfg``, and build small real ``nn.Module``s with the module names of torchvision's
ResNet, VGG and SqueezeNet. The stand-ins refuse anything that could download
(``WeightsEnum.get_state_dict``, ``pretrained=True`` without ``HF_HUB_OFFLINE=1``). The adapters
were run once by hand against the real torchvision 0.29.1 and timm 1.0.31 (torch 2.14.1), outside
these tests.

``hf:`` runs the real transformers on a tiny, randomly initialised ResNet saved to a temporary folder.
"""

from __future__ import annotations

import copy
import enum
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compaudit.errors import ModelError
from compaudit.models import (
    build_model,
    classifier_head,
    load_checkpoint,
    load_pretrained,
    pretrained_of,
    read_state_dict,
    resolve_factory,
)
from compaudit.models.adapters import LibraryModel, hf_hub_offline, missing
from compaudit.models.normalize import IMAGENET_MEAN, IMAGENET_STD
from compaudit.models.weights import with_state_dict_prefix

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------- stand-in networks (torchvision's names)


class TinyResNet(nn.Module):
    """torchvision ResNet's module names: conv1, bn1, relu, maxpool, layer1, avgpool, fc."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.conv1 = nn.Conv2d(in_chans, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


class TinyVGG(nn.Module):
    """torchvision VGG's names: features, avgpool, classifier (Linear at 0, 3 and 6)."""

    def __init__(self, num_classes: int = 1000, **kwargs: Any) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(32, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(),
            nn.Linear(16, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
        return out


class TinySqueezeNet(nn.Module):
    """torchvision SqueezeNet's names: features, classifier (Dropout, the final 1x1 Conv2d, ReLU, pool)."""

    def __init__(self, num_classes: int = 1000, **kwargs: Any) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU())
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Conv2d(16, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# ---------------------------------------------------------------- the torchvision stand-in


class FakeWeightsEnum(enum.Enum):
    """torchvision's ``WeightsEnum``: members carry ``url``; ``get_state_dict`` would download."""

    @property
    def url(self) -> str:
        return str(self.value[0])

    def get_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the adapter called WeightsEnum.get_state_dict, which may download")


class ResNet18Weights(FakeWeightsEnum):
    # no digest in these names (torch.hub's ``name-<sha256 prefix>.pth``), so any content is accepted
    IMAGENET1K_V1 = ("https://download.pytorch.org/models/tinyresnet18_v1.pth", 10)
    IMAGENET1K_V2 = ("https://download.pytorch.org/models/tinyresnet18-0000beef.pth", 10)
    DEFAULT = IMAGENET1K_V1


class VGG16Weights(FakeWeightsEnum):
    IMAGENET1K_V1 = ("https://download.pytorch.org/models/tinyvgg16.pth", 10)
    DEFAULT = IMAGENET1K_V1


class SqueezeNetWeights(FakeWeightsEnum):
    IMAGENET1K_V1 = ("https://download.pytorch.org/models/tinysqueezenet1_1.pth", 10)
    DEFAULT = IMAGENET1K_V1


TV_BUILDERS: dict[str, tuple[Callable[..., nn.Module], type[FakeWeightsEnum]]] = {
    "resnet18": (TinyResNet, ResNet18Weights),
    "vgg16": (TinyVGG, VGG16Weights),
    "squeezenet1_1": (TinySqueezeNet, SqueezeNetWeights),
    "vit_b_16": (TinyResNet, ResNet18Weights),
}


@pytest.fixture
def torchvision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A stand-in ``torchvision`` in ``sys.modules`` (see the module docstring) and an empty torch
    hub cache under ``tmp_path``; returns the list of ``get_model`` calls."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def get_model(name: str, **config: Any) -> nn.Module:
        calls.append((name, dict(config)))
        if name not in TV_BUILDERS:
            raise ValueError(f"Unknown model {name}")
        assert config.pop("weights", None) is None, "torchvision must never load weights itself"
        return TV_BUILDERS[name][0](**config)

    def get_model_weights(name: str) -> type[FakeWeightsEnum]:
        if name not in TV_BUILDERS:
            raise ValueError(f"Unknown model {name}")
        return TV_BUILDERS[name][1]

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.get_model = get_model  # type: ignore[attr-defined]
    models.get_model_weights = get_model_weights  # type: ignore[attr-defined]
    tv.models = models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return calls


def put_in_hub_cache(url: str, state: dict[str, torch.Tensor]) -> Path:
    dest = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


def test_torchvision_builds_with_imagenet_normalisation_inside(torchvision: list[Any]) -> None:
    model = build_model("torchvision:resnet18", input_shape=(3, 32, 32), num_classes=3)
    assert isinstance(model, LibraryModel) and model.state_dict_prefix == "model."
    assert torchvision == [("resnet18", {"weights": None, "num_classes": 3})]
    assert set(model.state_dict()) == {"model." + k for k in model.model.state_dict()}  # normalize: no keys
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), model.model((x - MEAN) / STD))
    plain = build_model(
        "torchvision:resnet18", input_shape=(3, 32, 32), num_classes=3, params={"normalize": "none"}
    )
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(plain.eval()(x), model.model(x))
    assert pretrained_of(model) is None


@pytest.mark.parametrize(
    ("name", "head"),
    [("resnet18", "model.fc"), ("vgg16", "model.classifier.6"), ("squeezenet1_1", "model.classifier.1")],
)
def test_torchvision_weights_from_the_hub_cache_replace_the_head(
    torchvision: list[Any], name: str, head: str
) -> None:
    builder, weights = TV_BUILDERS[name]
    torch.manual_seed(1)
    published = builder(num_classes=10)  # the "ImageNet" weights: 10 classes here
    state = dict(published.state_dict())
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as old files
    put_in_hub_cache(weights.IMAGENET1K_V1.url, state)
    model = build_model(
        f"torchvision:{name}", input_shape=(3, 32, 32), num_classes=3, params={"weights": "DEFAULT"}
    )
    assert classifier_head(model) == head
    info = pretrained_of(model)
    assert info is not None and info.head == head and (info.checkpoint_classes, info.classes) == (10, 3)
    assert info.source.startswith(f"torchvision {name} IMAGENET1K_V1")
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith(head.removeprefix("model.") + "."):
            assert torch.equal(own["model." + key], value), key
    assert own[f"{head}.weight"].shape[0] == 3
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_torchvision_weights_not_cached_is_one_line_and_never_downloads(torchvision: list[Any]) -> None:
    with pytest.raises(ModelError) as err:
        build_model(
            "torchvision:resnet18",
            input_shape=(3, 32, 32),
            num_classes=3,
            params={"weights": "IMAGENET1K_V1"},
        )
    msg = str(err.value)
    assert "\n" not in msg and "never downloads" in msg and "model.checkpoint" in msg
    assert str(Path(torch.hub.get_dir()) / "checkpoints" / "tinyresnet18_v1.pth") in msg
    put_in_hub_cache(ResNet18Weights.IMAGENET1K_V2.url, TinyResNet(num_classes=10).state_dict())
    with pytest.raises(ModelError, match="its SHA-256 does not start with 0000beef") as err:
        build_model(
            "torchvision:resnet18",
            input_shape=(3, 32, 32),
            num_classes=3,
            params={"weights": "IMAGENET1K_V2"},
        )
    assert "\n" not in str(err.value)
    with pytest.raises(
        ModelError, match=r"no weights 'V9'; choose one of: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"
    ):
        build_model("torchvision:resnet18", input_shape=(3, 32, 32), num_classes=3, params={"weights": "V9"})


def test_torchvision_maps_channels_and_image_size(torchvision: list[Any]) -> None:
    grey = build_model(
        "torchvision:resnet18", input_shape=(1, 32, 32), num_classes=3, params={"input_adapter": "repeat"}
    )
    assert grey.model.conv1.in_channels == 3
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(grey.eval()(x), grey.model((x.expand(-1, 3, -1, -1) - MEAN) / STD))
    own = build_model(
        "torchvision:resnet18", input_shape=(1, 32, 32), num_classes=3, params={"normalize": "none"}
    )
    assert own.model.conv1.in_channels == 1 and own.eval()(x).shape == (2, 3)
    build_model("torchvision:vit_b_16", input_shape=(3, 48, 48), num_classes=3, params={"dropout": 0.1})
    assert torchvision[-1] == (
        "vit_b_16",
        {"weights": None, "num_classes": 3, "dropout": 0.1, "image_size": 48},
    )
    with pytest.raises(ModelError, match="Unknown model nonet"):
        build_model("torchvision:nonet", input_shape=(3, 32, 32), num_classes=3)


def test_plain_library_state_dict_loads_as_model_checkpoint(torchvision: list[Any], tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = TinyVGG(num_classes=3)
    plain = tmp_path / "vgg_plain.pth"
    torch.save(trained.state_dict(), plain)
    model = load_checkpoint(build_model("torchvision:vgg16", input_shape=(3, 32, 32), num_classes=3), plain)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x), trained.eval()((x - MEAN) / STD))
    wrapped = tmp_path / "vgg_wrapped.pth"  # what compaudit itself saves: the keys with the prefix
    torch.save(model.state_dict(), wrapped)
    again = load_checkpoint(build_model("torchvision:vgg16", input_shape=(3, 32, 32), num_classes=3), wrapped)
    assert torch.allclose(again.eval()(x), model(x))
    torch.save(TinyVGG(num_classes=5).state_dict(), tmp_path / "five.pth")
    with pytest.raises(ModelError, match=r"key 'model\.classifier\.6\.weight' has shape \(5, 16\)"):
        load_checkpoint(
            build_model("torchvision:vgg16", input_shape=(3, 32, 32), num_classes=3), tmp_path / "five.pth"
        )
    info = load_pretrained(
        build_model("torchvision:vgg16", input_shape=(3, 32, 32), num_classes=3),
        TinyVGG(num_classes=5).state_dict(),
        source="five",
    )
    assert (info.head, info.checkpoint_classes, info.classes) == ("model.classifier.6", 5, 3)


def test_state_dict_prefix_only_where_it_fits() -> None:
    model = LibraryModel(TinyResNet(num_classes=2), nn.Identity(), source="x")  # type: ignore[arg-type]
    plain = TinyResNet(num_classes=2).state_dict()
    assert set(with_state_dict_prefix(model, plain)) == set(model.state_dict())
    prefixed = model.state_dict()
    assert with_state_dict_prefix(model, prefixed) is prefixed
    other = {"unrelated.weight": torch.zeros(1)}
    assert with_state_dict_prefix(model, other) is other
    assert with_state_dict_prefix(TinyResNet(), plain) is plain  # no prefix declared


# ---------------------------------------------------------------- the timm stand-in

TIMM_CFGS: dict[str, dict[str, Any]] = {
    "resnet18": {
        "hf_hub_id": "timm/resnet18.a1_in1k", "num_classes": 10, "input_size": (3, 224, 224),
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
    },
    "vit_tiny": {
        "hf_hub_id": "timm/vit_tiny.augreg_in21k", "num_classes": 10, "input_size": (3, 224, 224),
        "fixed_input_size": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
    },
}  # fmt: skip


class FakeTimm:
    """Records ``create_model`` calls; ``pretrained=True`` returns seeded "published" weights, only
    with ``HF_HUB_OFFLINE=1`` set, or raises what huggingface_hub raises on a cache miss."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.cached = True
        torch.manual_seed(3)
        self.published = TinyResNet(num_classes=10).state_dict()

    def create_model(
        self, model_name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: Any
    ) -> nn.Module:
        self.calls.append((model_name, {"pretrained": pretrained, **kwargs}))
        assert checkpoint_path is None
        cfg = TIMM_CFGS[model_name]
        if pretrained:
            assert os.environ.get("HF_HUB_OFFLINE") == "1", "timm pretrained=True outside HF_HUB_OFFLINE=1"
            if not self.cached:
                raise OSError(
                    "An error happened while trying to locate the file on the Hub and we cannot find the\n"
                    "requested files in the local cache."
                )
            kwargs.setdefault("num_classes", cfg["num_classes"])
        model = TinyResNet(**kwargs)
        if pretrained:
            model.load_state_dict(self.published)
        model.pretrained_cfg = dict(cfg)  # type: ignore[assignment]
        return model


@pytest.fixture
def timm(monkeypatch: pytest.MonkeyPatch) -> FakeTimm:
    fake = FakeTimm()
    module = types.ModuleType("timm")
    module.create_model = fake.create_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", module)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fake


def test_timm_builds_with_its_pretrained_cfg_normalisation(timm: FakeTimm) -> None:
    model = build_model("timm:resnet18", input_shape=(3, 32, 32), num_classes=3)
    assert timm.calls == [("resnet18", {"pretrained": False, "num_classes": 3, "in_chans": 3})]
    assert classifier_head(model) == "model.fc" and pretrained_of(model) is None
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x), model.model((x - MEAN) / STD))
    vit = build_model("timm:vit_tiny", input_shape=(3, 32, 32), num_classes=3, params={"drop_rate": 0.1})
    expected = {"pretrained": False, "num_classes": 3, "in_chans": 3, "drop_rate": 0.1, "img_size": (32, 32)}
    assert timm.calls[-1] == ("vit_tiny", expected)
    assert torch.allclose(vit.eval()(x), vit.model((x - 0.5) / 0.5))
    grey = build_model("timm:resnet18", input_shape=(1, 32, 32), num_classes=3, params={"normalize": "none"})
    assert timm.calls[-1][1]["in_chans"] == 1 and grey.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 3)


def test_timm_pretrained_only_from_the_cache_with_the_environment_restored(
    timm: FakeTimm, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(
        "timm:resnet18", input_shape=(3, 32, 32), num_classes=3, params={"weights": "pretrained"}
    )
    assert "HF_HUB_OFFLINE" not in os.environ
    assert timm.calls[-1] == ("resnet18", {"pretrained": True, "in_chans": 3})
    info = pretrained_of(model)
    assert info is not None and (info.head, info.checkpoint_classes, info.classes) == ("model.fc", 10, 3)
    assert "timm/resnet18.a1_in1k" in info.source
    assert torch.equal(model.model.conv1.weight, timm.published["conv1.weight"])
    timm.cached = False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ModelError) as err:
        build_model("timm:resnet18", input_shape=(3, 32, 32), num_classes=3, params={"weights": "pretrained"})
    msg = str(err.value)
    assert "\n" not in msg and "not in the local cache" in msg and "never downloads" in msg
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_hf_hub_offline_sets_and_restores_huggingface_hubs_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = constants.HF_HUB_OFFLINE
    with hf_hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.is_offline_mode()
    assert "HF_HUB_OFFLINE" not in os.environ and before == constants.HF_HUB_OFFLINE


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_from_a_local_file(timm: FakeTimm, tmp_path: Path, suffix: str) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(4)
    published = TinyResNet(num_classes=7).state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in published.items()}, str(path))
    else:
        torch.save({"state_dict": published}, path)
    model = build_model(
        "timm:resnet18", input_shape=(3, 32, 32), num_classes=3, params={"weights": str(path)}
    )
    info = pretrained_of(model)
    assert info is not None and (info.head, info.checkpoint_classes) == ("model.fc", 7)
    assert torch.equal(model.model.layer1[0].weight, published["layer1.0.weight"])
    with pytest.raises(ModelError, match="no such file"):
        build_model("timm:resnet18", input_shape=(3, 32, 32), num_classes=3, params={"weights": "nope.pth"})


# ---------------------------------------------------------------- names, missing libraries, imports


@pytest.mark.parametrize(
    ("name", "library", "extra", "module"),
    [
        ("torchvision:resnet18", "torchvision", "vision", "torchvision"),
        ("timm:resnet18", "timm", "timm", "timm"),
        ("hf:org/model", "transformers", "hf", "transformers"),
    ],
)
def test_a_missing_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, name: str, library: str, extra: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModelError) as err:
        build_model(name, input_shape=(3, 32, 32), num_classes=3)
    assert str(err.value) == (
        f"model {name!r} needs {library}, which is not installed: pip install 'compaudit[{extra}]'"
    )


def test_reserved_prefixes_win_and_other_names_resolve_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_factory("timm:resnet18").__name__ == "timm:resnet18"
    from compaudit.models import adapters

    assert resolve_factory("compaudit.models.adapters:build_hf") is adapters.build_hf
    with pytest.raises(ModelError, match=r"model 'timm:' names no model"):
        resolve_factory("timm:")
    with pytest.raises(ModelError, match="has no parameter 'weights'"):
        build_model("hf:org/model", input_shape=(3, 32, 32), num_classes=3, params={"weights": "x"})
    assert missing("student_cnn") is None and missing("hf:x") is None  # transformers is installed here
    monkeypatch.setitem(sys.modules, "timm", None)
    assert missing("timm:resnet18") == (
        "model 'timm:resnet18' needs timm, which is not installed: pip install 'compaudit[timm]'"
    )


def test_importing_compaudit_imports_no_model_library() -> None:
    code = (
        "import sys, compaudit, compaudit.models as m; m.MODELS.names(); "
        "[m.resolve_factory(n) for n in ('torchvision:resnet18', 'timm:resnet18', 'hf:org/model')]; "
        "print(sorted(k for k in ('torchvision', 'timm', 'transformers') if k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- .safetensors checkpoints


def test_read_state_dict_reads_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    got = read_state_dict(path)
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelError, match="cannot be read as safetensors") as err:
        read_state_dict(tmp_path / "bad.safetensors")
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ModelError, match="needs the safetensors package: pip install safetensors"):
        read_state_dict(path)


# ---------------------------------------------------------------- hf: the real transformers

PREPROCESSOR = {"do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}


@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny, randomly initialised transformers ResNet (5 classes) saved with a preprocessor config."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5
    )
    net = transformers.ResNetForImageClassification(config)
    folder = tmp_path_factory.mktemp("hf_resnet")
    net.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder, {k: v.clone() for k, v in net.state_dict().items()}


def test_hf_builds_a_logits_model_with_the_saved_backbone(
    hf_resnet: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    folder, saved = hf_resnet
    model = build_model(f"hf:{folder}", input_shape=(3, 32, 32), num_classes=2)
    assert model.training and model.state_dict_prefix == "model."
    x = torch.rand(4, 3, 32, 32)
    logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, 2)
    own = model.state_dict()
    backbone = [k for k in saved if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(own["model." + k], saved[k]) for k in backbone)
    assert classifier_head(model) == "model.classifier.1"
    info = pretrained_of(model)
    assert info is not None and (info.head, info.checkpoint_classes, info.classes) == (
        "model.classifier.1",
        5,
        2,
    )
    mean = torch.tensor(PREPROCESSOR["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESSOR["image_std"]).view(1, 3, 1, 1)
    assert torch.allclose(logits, model.model(pixel_values=(x - mean) / std).logits)
    assert not torch.allclose(logits, model.model(pixel_values=x).logits)
    assert torch.equal(copy.deepcopy(model)(x), logits)  # variants are deep copies of the baseline


def test_hf_plain_and_prefixed_state_dicts_load(
    hf_resnet: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    folder, saved = hf_resnet
    torch.save(saved, tmp_path / "plain.pth")
    model = load_checkpoint(
        build_model(f"hf:{folder}", input_shape=(3, 32, 32), num_classes=5), tmp_path / "plain.pth"
    )
    assert torch.equal(model.state_dict()["model.classifier.1.weight"], saved["classifier.1.weight"])
    torch.save(model.state_dict(), tmp_path / "prefixed.pth")
    load_checkpoint(
        build_model(f"hf:{folder}", input_shape=(3, 32, 32), num_classes=5), tmp_path / "prefixed.pth"
    )


def test_hf_normalisation_params_and_grey_images(
    hf_resnet: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    folder, _ = hf_resnet
    x = torch.rand(2, 3, 32, 32)
    off = build_model(f"hf:{folder}", input_shape=(3, 32, 32), num_classes=2, params={"normalize": "none"})
    assert torch.allclose(off.eval()(x), off.model(pixel_values=x).logits)
    grey = build_model(
        f"hf:{folder}", input_shape=(1, 32, 32), num_classes=2, params={"input_adapter": "repeat"}
    )
    assert grey.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    no_norm = tmp_path / "no_norm"
    no_norm.mkdir()
    for f in folder.iterdir():
        (no_norm / f.name).write_bytes(f.read_bytes())
    (no_norm / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, "do_normalize": False}))
    model = build_model(f"hf:{no_norm}", input_shape=(3, 32, 32), num_classes=2)
    assert torch.allclose(model.eval()(x), model.model(pixel_values=x).logits)


def test_hf_errors_are_one_line(hf_resnet: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    folder, _ = hf_resnet
    cases: list[tuple[str, tuple[int, int, int], str]] = [
        (f"hf:{tmp_path / 'nope'}", (3, 32, 32), "does not exist"),
        (f"hf:{folder}", (1, 32, 32), "takes 3-channel images (config num_channels), the data has 1; set "
         "input_adapter: repeat"),
        ("hf:nobody-here/no-such-model", (3, 32, 32), "Hugging Face cache"),
        (f"hf:{folder / 'config.json'}", (3, 32, 32), "is not a folder"),
    ]  # fmt: skip
    for name, shape, text in cases:
        with pytest.raises(ModelError) as err:
            build_model(name, input_shape=shape, num_classes=2)
        assert text in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_hf_vit_image_size_must_fit(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=1, intermediate_size=8, num_labels=3,
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
    model = build_model(f"hf:{tmp_path}", input_shape=(3, 32, 32), num_classes=3)
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3) and pretrained_of(model).head is None  # type: ignore[union-attr]
    with pytest.raises(
        ModelError, match=r"takes 32x32 images \(config image_size\), the data is 64x64"
    ) as err:
        build_model(f"hf:{tmp_path}", input_shape=(3, 64, 64), num_classes=3)
    assert "\n" not in str(err.value)


def test_the_plan_key_covers_local_weights(
    hf_resnet: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """Results are keyed by the weights' content, not their path: rewriting an hf: folder or a timm
    weights file in place changes the baseline's key (a cached run would otherwise be reused)."""
    import shutil

    from compaudit.run.plan import weights_digest

    folder = tmp_path / "model"
    shutil.copytree(hf_resnet[0], folder)
    before = weights_digest(f"hf:{folder}", {})
    assert before is not None and before == weights_digest(f"hf:{folder}", {})
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("{", '{"x": 1, ', 1))
    assert weights_digest(f"hf:{folder}", {}) not in (None, before)
    ckpt = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, ckpt)
    first = weights_digest("timm:resnet18", {"weights": str(ckpt)})
    torch.save({"a": torch.ones(2)}, ckpt)
    assert first is not None and weights_digest("timm:resnet18", {"weights": str(ckpt)}) != first
    assert weights_digest("resnet18_imagenet", {"weights": "IMAGENET1K_V1"}) is None
