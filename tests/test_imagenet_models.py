"""The seeds' own networks in torchvision's layout: parameter counts, MACs, state_dict keys and the
forward computation held to torchvision itself (``tests/torchvision_fixture.py``), head replacement
and the input normalisation inside the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compaudit.errors import ModelError
from compaudit.models import build_model, classifier_head, load_pretrained, pretrained_of, read_state_dict
from compaudit.models.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize
from compaudit.probes.efficiency import count_macs, count_parameters
from tests.torchvision_fixture import ARCHITECTURES, load_fixture, synthetic_input, synthetic_state

#: published parameter counts at 1000 classes and MACs at 224x224 (torchvision's model docs)
PUBLISHED = {
    "resnet18_imagenet": (11_689_512, 1.81e9),
    "resnet34_imagenet": (21_797_672, 3.66e9),
    "resnet50_imagenet": (25_557_032, 4.09e9),
    "resnet101_imagenet": (44_549_160, 7.80e9),
    "resnet152_imagenet": (60_192_808, 11.51e9),
    "vgg16": (138_357_544, 15.47e9),
    "vgg16_bn": (138_365_992, 15.47e9),
    "squeezenet1_0": (1_248_424, 0.82e9),
    "squeezenet1_1": (1_235_496, 0.35e9),
}
HEADS = {
    "vgg16": "classifier.6",
    "vgg16_bn": "classifier.6",
    "squeezenet1_0": "classifier.1",
    "squeezenet1_1": "classifier.1",
}
#: the parity forward of the largest ones takes seconds; the default suite keeps one per family
SLOW = {
    "resnet34_imagenet",
    "resnet50_imagenet",
    "resnet101_imagenet",
    "resnet152_imagenet",
    "vgg16",
    "squeezenet1_0",
}


def _meta(name: str, size: int = 224, classes: int = 1000) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, input_shape=(3, size, size), num_classes=classes)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_count_and_macs_are_the_published_ones(name: str) -> None:
    params, macs = PUBLISHED[name]
    model = _meta(name)
    assert count_parameters_meta(model) == params
    measured = count_macs(model, torch.zeros(1, 3, 224, 224, device="meta"))
    assert abs(measured - macs) / macs < 0.01, f"{name}: {measured / 1e9:.3f} G, published {macs / 1e9} G"


def count_parameters_meta(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_squeezenet_1_1_at_cifar_size() -> None:
    """Seed 003's SqueezeNet: 1.1 with 10 classes has ~0.73 M parameters and runs on 32x32 inputs."""
    model = build_model("squeezenet1_1", input_shape=(3, 32, 32), num_classes=10).eval()
    total, _ = count_parameters(model)
    assert total == 1_235_496 - (512 * 1000 + 1000) + (512 * 10 + 10) == 727_626
    with torch.no_grad():
        assert model(torch.rand(4, 3, 32, 32)).shape == (4, 10)
    with pytest.raises(ModelError, match="at least 17x17"):
        build_model("squeezenet1_1", input_shape=(3, 16, 16), num_classes=10)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_state_dict_keys_and_shapes_are_torchvisions(name: str) -> None:
    expected = load_fixture()["models"][name]
    model = _meta(name)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in expected["state_dict"]]
    assert count_parameters_meta(model) == expected["parameters"]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ARCHITECTURES]
)
def test_forward_equals_torchvisions(name: str) -> None:
    """The same synthetic weights in torchvision's model and ours give the same logits (torchvision's
    input normalised by hand, ours by its ``normalize`` module)."""
    fixture = load_fixture()
    expected = fixture["models"][name]
    model = build_model(name, input_shape=(3, 64, 64), num_classes=1000).eval()
    model.load_state_dict(synthetic_state([(k, s) for k, s in expected["state_dict"]]))
    with torch.no_grad():
        logits = model(synthetic_input())
    scale = expected["logit_scale"]
    want = torch.tensor(expected["logits"])
    assert torch.allclose(logits[:, : want.shape[1]], want, atol=1e-4 * max(scale, 1.0), rtol=1e-4)
    assert logits.argmax(1).tolist() == expected["argmax"]


@pytest.mark.parametrize(
    "name", ["resnet18_imagenet", "squeezenet1_1", pytest.param("vgg16_bn", marks=pytest.mark.slow)]
)
def test_a_torchvision_checkpoint_loads_and_its_head_is_replaced(name: str, tmp_path) -> None:
    expected = load_fixture()["models"][name]
    state = synthetic_state([(k, s) for k, s in expected["state_dict"]])
    path = tmp_path / f"{name}-1000.pth"
    torch.save(state, path)
    model = build_model(name, input_shape=(3, 64, 64), num_classes=31)
    head = HEADS.get(name, "fc")
    assert classifier_head(model) == head
    fresh_head = model.state_dict()[f"{head}.weight"].clone()
    info = load_pretrained(model, read_state_dict(path), source=repr(str(path)))
    assert info.head == head and info.checkpoint_classes == 1000 and info.classes == 31
    assert pretrained_of(model) == info
    assert "head" in info.describe() and "1000 -> 31" in info.describe()
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith(head + "."):
            continue
        assert torch.equal(loaded[key], value), key  # the backbone is the checkpoint's
    assert torch.equal(loaded[f"{head}.weight"], fresh_head)  # the head keeps its initialisation
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 31)


def test_a_checkpoint_that_fits_loads_without_replacement(tmp_path) -> None:
    model = build_model("resnet18_imagenet", input_shape=(3, 64, 64), num_classes=5)
    twin = build_model("resnet18_imagenet", input_shape=(3, 64, 64), num_classes=5)
    info = load_pretrained(twin, model.state_dict(), source="twin")
    assert not info.head_replaced and info.describe() == "weights twin"
    for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_other_mismatches_are_one_line_errors() -> None:
    state = synthetic_state([(k, s) for k, s in load_fixture()["models"]["resnet18_imagenet"]["state_dict"]])
    model = build_model("resnet50_imagenet", input_shape=(3, 64, 64), num_classes=1000)
    with pytest.raises(
        ModelError, match=r"does not fit ImageNetResNet: key 'layer1\.0\.conv1\.weight' has shape"
    ):
        load_pretrained(model, state, source="r18")
    grey = build_model(
        "resnet18_imagenet", input_shape=(1, 64, 64), num_classes=1000, params={"normalize": "none"}
    )
    with pytest.raises(ModelError, match=r"first conv 'conv1' takes 3 input channel\(s\), the data has 1; "):
        load_pretrained(grey, state, source="r18")
    missing = dict(state)
    del missing["layer4.1.bn2.running_mean"]
    r18 = build_model("resnet18_imagenet", input_shape=(3, 64, 64), num_classes=1000)
    with pytest.raises(ModelError, match=r"missing key 'layer4\.1\.bn2\.running_mean'"):
        load_pretrained(r18, missing, source="x")


def test_grey_images_use_rgb_weights_through_the_repeat_adapter() -> None:
    """``input_adapter: repeat`` gives a grey image to the RGB network as three equal channels: the
    logits equal those of the RGB model on the repeated image."""
    expected = load_fixture()["models"]["resnet18_imagenet"]
    state = synthetic_state([(k, s) for k, s in expected["state_dict"]])
    grey = build_model(
        "resnet18_imagenet", input_shape=(1, 64, 64), num_classes=1000, params={"input_adapter": "repeat"}
    ).eval()
    rgb = build_model("resnet18_imagenet", input_shape=(3, 64, 64), num_classes=1000).eval()
    load_pretrained(grey, state, source="s")
    rgb.load_state_dict(state)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)
    with pytest.raises(ModelError, match="needs 3-channel"):
        build_model("resnet18_imagenet", input_shape=(1, 64, 64), num_classes=2)


def test_normalisation_is_inside_the_model_and_outside_its_state_dict() -> None:
    model = build_model("squeezenet1_1", input_shape=(3, 32, 32), num_classes=2)
    assert isinstance(model.normalize, Normalize)
    assert not any(k.startswith("normalize") for k in model.state_dict())
    x = torch.rand(1, 3, 8, 8)
    want = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), want)
    plain = build_model("squeezenet1_1", input_shape=(3, 32, 32), num_classes=2, params={"normalize": "none"})
    assert torch.equal(plain.normalize(x), x)


def test_torchvision_weights_come_from_the_hub_cache_never_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``weights: IMAGENET1K_V1`` reads torchvision's file from torch's hub cache, checks the digest
    its name carries, replaces the head and records it; a missing or altered file is one line."""
    import hashlib

    from compaudit.models import hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    assert hub.hub_checkpoints_dir() == cache
    params = {"weights": "IMAGENET1K_V1"}
    with pytest.raises(ModelError, match=r"not in torch's hub cache .*never downloads: fetch https://"):
        build_model("squeezenet1_1", input_shape=(3, 32, 32), num_classes=10, params=params)

    expected = load_fixture()["models"]["squeezenet1_1"]
    state = synthetic_state([(k, s) for k, s in expected["state_dict"]])
    cache.mkdir(parents=True)
    blob = tmp_path / "blob.pth"
    torch.save(state, blob)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()[:8]
    (cache / "squeezenet1_1-b8a52dc0.pth").write_bytes(blob.read_bytes())  # the real name, other bytes
    with pytest.raises(ModelError, match="SHA-256 does not start with b8a52dc0"):
        build_model("squeezenet1_1", input_shape=(3, 32, 32), num_classes=10, params=params)

    blob.rename(cache / f"squeezenet1_1-{digest}.pth")
    monkeypatch.setitem(
        hub.TORCHVISION_WEIGHTS, "squeezenet1_1", {"IMAGENET1K_V1": (f"squeezenet1_1-{digest}.pth", 0.0)}
    )
    model = build_model("squeezenet1_1", input_shape=(3, 32, 32), num_classes=10, params=params)
    info = pretrained_of(model)
    assert (
        info is not None
        and info.head == "classifier.1"
        and (info.checkpoint_classes, info.classes) == (1000, 10)
    )
    assert torch.equal(model.state_dict()["features.3.squeeze.weight"], state["features.3.squeeze.weight"])
    with pytest.raises(
        ModelError, match="unknown for squeezenet1_1; torchvision has: DEFAULT, IMAGENET1K_V1"
    ):
        build_model("squeezenet1_1", input_shape=(3, 32, 32), num_classes=10, params={"weights": "V9"})


def test_weights_saved_before_batchnorm_counted_batches_load() -> None:
    """Files written before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; they load (counted 0)."""
    expected = load_fixture()["models"]["resnet18_imagenet"]
    state = synthetic_state([(k, s) for k, s in expected["state_dict"]])
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = build_model("resnet18_imagenet", input_shape=(3, 32, 32), num_classes=1000)
    assert not load_pretrained(model, old, source="old").head_replaced
    assert int(model.bn1.num_batches_tracked) == 0
    assert torch.equal(model.layer1[0].conv1.weight, old["layer1.0.conv1.weight"])
