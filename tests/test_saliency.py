"""Saliency maps and their metrics: properties on hand-built models, parity with Captum, scipy and
scikit-image, and the guards against the mistakes of seed 004's code (DESIGN.md)."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from compaudit import build_model
from compaudit.errors import ProbeError
from compaudit.explain import SALIENCY, NotApplicableError, explain, normalize
from compaudit.explain import metrics as M
from compaudit.explain.layers import conv_layer, gap_head
from tests.conftest import tiny_cnn

METHODS = SALIENCY.names()
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def batch(data: Any, n: int = 16) -> tuple[Tensor, Tensor]:
    return data.test.x[:n], data.test.y[:n]


def site_of(model: nn.Module, x: Tensor, layer: str | None = None) -> nn.Module:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return conv_layer(model, x[:1], layer).module
    finally:
        for m, f in flags:
            m.training = f


# ---------------------------------------------------------------- hand-built models


class Mask(nn.Module):
    """Multiplies the input by a fixed 0/1 mask: only the masked region reaches the rest."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask


PATCH = (slice(2, 8), slice(8, 14))  # rows 2..7, columns 8..13 of a 16x16 image


def patch_model() -> nn.Module:
    """Class 1's logit is the mean over the image of ReLU(conv(x)) inside PATCH (zero elsewhere);
    the conv runs at 16x16, the GAP (CAM) reads a max-pooled 8x8 map."""
    mask = torch.zeros(1, 1, 16, 16)
    mask[(0, 0, *PATCH)] = 1.0
    conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    fc = nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, 1, 1] = torch.tensor([1.0, 0.5, 2.0, 1.5])  # identity kernels, positive
        fc.weight.copy_(torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 2.0, 0.5, 1.0]]))
        fc.bias.zero_()
    return nn.Sequential(
        Mask(mask), conv, nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc
    ).eval()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_puts_its_mass_where_the_answer_comes_from(method: str) -> None:
    model = patch_model()
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.1
    maps = normalize(explain(model, x, torch.ones(8, dtype=torch.long), method=method))
    assert maps.shape == (8, 16, 16)
    inside = maps[(slice(None), *PATCH)].sum(dim=(1, 2))
    share = inside / maps.sum(dim=(1, 2))
    # the CAM is read at 8x8 and upsampled: bilinear spreads it half a cell past the patch edge
    assert (share > (0.8 if method == "cam" else 0.99)).all(), share


def test_cam_equals_gradcam_on_a_gap_linear_head(trained_cnn: nn.Module, digits16: Any) -> None:
    # student_cnn: ... conv -> BN -> ReLU -> GAP -> fc; Grad-CAM reads the ReLU's output, which is
    # what enters the GAP, and its channel weights are the fc weights / (h w) (Selvaraju et al.)
    x, y = batch(digits16)
    cam = explain(trained_cnn, x, y, method="cam")
    gradcam = explain(trained_cnn, x, y, method="gradcam")
    h, w = trained_cnn.features(x[:1]).shape[2:]
    assert torch.allclose(cam, gradcam * (h * w), rtol=1e-4, atol=1e-5)
    assert torch.allclose(normalize(cam), normalize(gradcam), atol=1e-5)


def test_cam_matches_fc_weights_times_the_feature_map(trained_cnn: nn.Module, digits16: Any) -> None:
    x, y = batch(digits16)
    with torch.no_grad():
        a = trained_cnn.features(x)  # the input of the GAP
        fc = trained_cnn.fc
        assert isinstance(fc, nn.Linear)
        ref = F.relu(torch.einsum("nk,nkhw->nhw", fc.weight[y], a))
        ref = F.interpolate(ref[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(explain(trained_cnn, x, y, method="cam"), ref, atol=1e-5)


# ---------------------------------------------------------------- parity with Captum


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", input_shape=(3, 16, 16), num_classes=10, params={"width": 4}).eval()


def models_and_inputs(trained_cnn: nn.Module, digits16: Any) -> list[tuple[nn.Module, Tensor, Tensor]]:
    x, y = batch(digits16, 8)
    xr = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return [(trained_cnn, x, y), (small_resnet(), xr, torch.arange(8) % 10)]


def test_gradcam_equals_captum_layer_gradcam(trained_cnn: nn.Module, digits16: Any) -> None:
    from captum.attr import LayerAttribution, LayerGradCam

    for model, x, y in models_and_inputs(trained_cnn, digits16):
        layer = site_of(model, x)
        ref = LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)
        ref = LayerAttribution.interpolate(ref, (16, 16), interpolate_mode="bilinear")[:, 0]
        assert torch.allclose(explain(model, x, y, method="gradcam"), ref.detach(), atol=1e-5)


@pytest.mark.filterwarnings("ignore:Setting backward hooks")
def test_guided_gradcam_equals_captum_with_bilinear_upsampling(trained_cnn: nn.Module, digits16: Any) -> None:
    from captum.attr import GuidedGradCam

    for model, x, y in models_and_inputs(trained_cnn, digits16):
        layer = site_of(model, x)
        xg = x.clone().requires_grad_(True)
        ref = GuidedGradCam(model, layer).attribute(xg, target=y, interpolate_mode="bilinear")
        ref = ref.detach().abs().amax(dim=1)  # our documented channel reduction: max-abs
        assert torch.allclose(explain(model, x, y, method="guided_gradcam"), ref, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Setting backward hooks")
@pytest.mark.parametrize("method", ["guided_backprop", "gradient"])
def test_input_methods_equal_captum_reduced_by_max_abs(
    method: str, trained_cnn: nn.Module, digits16: Any
) -> None:
    from captum.attr import GuidedBackprop, Saliency

    x, y = batch(digits16, 8)
    if method == "gradient":
        ref = Saliency(trained_cnn).attribute(x.clone().requires_grad_(True), target=y, abs=True)
    else:
        ref = GuidedBackprop(trained_cnn).attribute(x.clone().requires_grad_(True), target=y)
    assert torch.allclose(explain(trained_cnn, x, y, method=method), ref.detach().abs().amax(1), atol=1e-6)


def test_gradcam_pp_matches_an_independent_computation(trained_cnn: nn.Module, digits16: Any) -> None:
    # pytorch-grad-cam's closed form, computed here with a plain hook and a full backward pass
    x, y = batch(digits16, 8)
    model = copy.deepcopy(trained_cnn)
    store: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _a: Any, out: Tensor) -> None:
        out.retain_grad()
        store["a"] = out

    handle = model.features[3][2].register_forward_hook(keep)
    model(x).gather(1, y[:, None]).sum().backward()
    handle.remove()
    a = store["a"].detach().double().numpy()
    g = store["a"].grad.double().numpy()  # type: ignore[union-attr]
    alpha = g**2 / (2 * g**2 + a.sum(axis=(2, 3), keepdims=True) * g**3 + 1e-7)
    alpha = np.where(g != 0, alpha, 0.0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(2, 3), keepdims=True)
    cam = torch.from_numpy(np.maximum((weights * a).sum(axis=1), 0)).float()
    ref = F.interpolate(cam[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(explain(trained_cnn, x, y, method="gradcam_pp"), ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- leaving the model as it was


def dropout_model() -> nn.Module:
    """A Wide ResNet with dropout and batch norm (seed 004's teacher family), tiny."""
    torch.manual_seed(0)
    return build_model(
        "wrn",
        input_shape=(3, 16, 16),
        num_classes=10,
        params={"depth": 16, "widen_factor": 1, "dropout": 0.5},
    )


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "flags": [m.training for m in model.modules()],
        "hooks": [(a, len(getattr(m, a))) for m in model.modules() for a in HOOKS],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


@pytest.mark.parametrize("method", METHODS)
def test_a_model_in_train_mode_is_explained_in_eval_mode_and_left_as_it_was(method: str) -> None:
    model = dropout_model().train()
    model.fc.bias.requires_grad_(False)  # an odd flag that must survive too
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    before = snapshot(model)
    first = explain(model, x, y, method=method)
    second = explain(model, x, y, method=method)
    after = snapshot(model)
    # dropout off and batch norm on running statistics: the same maps twice, equal to eval mode's
    assert torch.equal(first, second)
    reference = copy.deepcopy(model).eval()
    assert torch.allclose(first, explain(reference, x, y, method=method), atol=1e-6)
    assert after["flags"] == before["flags"] and all(after["flags"])  # back in train mode
    assert after["hooks"] == before["hooks"]  # no hook left behind (Captum's included)
    assert after["requires_grad"] == before["requires_grad"]
    assert all(after["grads"])  # no .grad written
    for k, v in before["state"].items():  # running statistics untouched
        assert torch.equal(after["state"][k], v), k


@pytest.mark.parametrize("method", METHODS)
def test_no_hook_is_left_behind_and_outputs_do_not_change(
    method: str, trained_cnn: nn.Module, digits16: Any
) -> None:
    x, y = batch(digits16, 8)
    with torch.no_grad():
        logits = trained_cnn(x)
    counts = [(m, a, len(getattr(m, a))) for m in trained_cnn.modules() for a in HOOKS]
    explain(trained_cnn, x, y, method=method)
    assert [(m, a, len(getattr(m, a))) for m, a, _ in counts] == counts
    with torch.no_grad():
        assert torch.equal(trained_cnn(x), logits)
    # and also when the call fails half-way (a bad target class)
    with pytest.raises(ProbeError):
        explain(trained_cnn, x, torch.full_like(y, 10), method=method)
    assert [(m, a, len(getattr(m, a))) for m, a, _ in counts] == counts


def test_inside_no_grad_and_inference_mode_it_still_works(trained_cnn: nn.Module, digits16: Any) -> None:
    x, y = batch(digits16, 4)
    ref = explain(trained_cnn, x, y, method="gradcam")
    with torch.no_grad():
        assert torch.equal(explain(trained_cnn, x, y, method="gradcam"), ref)
    with torch.inference_mode():
        assert torch.equal(explain(trained_cnn, x, y, method="gradcam"), ref)


# ---------------------------------------------------------------- layers and resolutions


def test_auto_layer_is_the_last_spatial_conv_read_with_its_bn_and_relu(trained_cnn: nn.Module) -> None:
    x = torch.rand(1, 1, 16, 16)
    method = SALIENCY.get("gradcam")("gradcam")
    assert method.where(trained_cnn, x) == "features.3.0"
    assert site_of(trained_cnn, x) is trained_cnn.features[3][2]  # conv -> BN -> ReLU: the ReLU
    resnet = small_resnet()
    xr = torch.rand(1, 3, 16, 16)
    assert method.where(resnet, xr) == "layer4.1.conv2"
    assert site_of(resnet, xr) is resnet.layer4[1].bn2  # the ReLU comes after the residual addition
    assert SALIENCY.get("cam")("cam").where(resnet, xr) == "avgpool"
    assert SALIENCY.get("gradient")("gradient").where(resnet, xr) == "input"


class ConvThenIdentity(nn.Module):
    """conv -> identity -> 1x1-output conv -> add a residual -> BN -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.skip = nn.Identity()
        self.squeeze = nn.Conv2d(4, 4, 16)  # 16x16 -> 1x1: not a spatial map
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = self.skip(self.conv(x))
        a = self.bn(a + 1.0)  # BN after an addition: not part of the conv's block
        return self.fc(torch.flatten(self.pool(a + 0 * self.squeeze(a)), 1))


def test_auto_layer_is_a_real_spatial_conv_never_an_identity() -> None:
    model = ConvThenIdentity().eval()
    x = torch.rand(1, 1, 16, 16)
    site = site_of(model, x)
    assert site is model.conv and isinstance(site, nn.Conv2d)
    with pytest.raises(ProbeError, match="identity layer"):
        explain(model, x, torch.tensor([0]), method="gradcam", layer="skip")


def test_maps_come_at_the_input_resolution_for_layers_of_any_resolution(trained_cnn: nn.Module) -> None:
    x = torch.rand(3, 1, 16, 16)
    y = torch.tensor([0, 1, 2])
    for layer in ("features.0.0", "features.2.0", "features.3.0"):  # 16x16, 8x8 (before pool), 4x4
        maps = explain(trained_cnn, x, y, method="gradcam", layer=layer)
        assert maps.shape == (3, 16, 16) and maps.dtype == torch.float32 and (maps >= 0).all()
    torch.manual_seed(0)
    wide = build_model("student_cnn", input_shape=(1, 12, 20), num_classes=10)  # not square
    for method in METHODS:
        assert explain(wide, torch.rand(2, 1, 12, 20), torch.tensor([0, 1]), method=method).shape == (
            2,
            12,
            20,
        )


def test_unknown_layer_is_one_line_naming_it_and_some_conv_layers(trained_cnn: nn.Module) -> None:
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ProbeError) as err:
        explain(trained_cnn, x, torch.tensor([0, 1]), method="gradcam", layer="features.9.0")
    msg = str(err.value)
    assert "\n" not in msg and "'features.9.0'" in msg and "features.3.0" in msg
    with pytest.raises(ProbeError, match="takes no layer"):
        explain(trained_cnn, x, torch.tensor([0, 1]), method="cam", layer="features.3.0")


def test_ablated_and_pruned_models_find_their_own_last_conv(digits16: Any) -> None:
    torch.manual_seed(0)
    vgg = build_model("vgg6", input_shape=(1, 16, 16), num_classes=10, params={"width": 0.25}).eval()
    ablated = copy.deepcopy(vgg)
    ablated.features = ablated.features[:-2]  # what compress/ablate.py does, before retraining
    ablated.classifier[0] = nn.Linear(ablated.flatten_dim(4), ablated.classifier[0].out_features)
    x, y = batch(digits16, 4)
    method = SALIENCY.get("gradcam")("gradcam")
    assert method.where(vgg, x) == "features.5.0"
    assert method.where(ablated, x) == "features.3.0"
    assert explain(ablated, x, y, method="gradcam").shape == (4, 16, 16)
    # CAM needs a GAP + linear head: VGG's fully-connected head is not one
    with pytest.raises(NotApplicableError, match="global-average-pooling"):
        explain(vgg, x, y, method="cam")
    from compaudit.compress import METHODS as COMPRESS
    from compaudit.compress import CompressContext

    model = tiny_cnn(0).eval()
    m = COMPRESS.get("prune_filters").from_spec("prune_filters", {"ratio": 0.5})
    pruned = m.apply(copy.deepcopy(model), CompressContext(data=digits16, seed=0, device=torch.device("cpu")))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert method.where(pruned.eval(), x) == "features.3.0"
    for name in METHODS:
        assert explain(pruned, x, y, method=name).shape == (4, 16, 16)


def test_gap_head_is_detected_structurally(trained_cnn: nn.Module) -> None:
    x = torch.rand(1, 1, 16, 16)
    assert gap_head(trained_cnn.eval(), x).module is trained_cnn.avgpool
    two_layer_head = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)
    )
    with pytest.raises(NotApplicableError, match="fed by ReLU"):
        gap_head(two_layer_head, x)
    max_pooled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(NotApplicableError):
        gap_head(max_pooled, x)
    avg_pool_whole = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AvgPool2d(14), nn.Flatten(), nn.Linear(4, 3))
    assert isinstance(gap_head(avg_pool_whole, x).module, nn.AvgPool2d)


class SlicedHead(nn.Module):
    """A conv with 4 channels, averaged, of which the forward keeps 2 as its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.conv(x)), 1)[:, :2]


def squeezenet(version: str = "1_1", size: int = 64) -> nn.Module:
    """A fresh SqueezeNet (torchvision's layout, 2 classes), its class conv given weights whose
    ReLU'd outputs are not all zero (torchvision's init, std 0.01, leaves many of them at 0)."""
    torch.manual_seed(0)
    model = build_model(f"squeezenet{version}", input_shape=(3, size, size), num_classes=2).eval()
    head: Any = model.classifier
    with torch.no_grad():
        head[1].weight.normal_(0.0, 0.05)
        head[1].bias.fill_(0.1)
    return model


def test_cam_on_a_conv_classifier_head_is_the_class_map_whose_mean_is_the_logit() -> None:
    model = squeezenet("1_1")
    x = torch.rand(3, 3, 64, 64)
    target = torch.tensor([0, 1, 1])
    site = gap_head(model, x[:1])
    head: Any = model.classifier
    assert site.name == "classifier.3" and site.module is head[3] and site.head == "conv"
    cam = SALIENCY.get("cam")("cam")
    assert cam.where(model, x) == "classifier.3"
    with torch.no_grad():
        logits = model(x)
        class_map = F.relu(head[1](model.features(model.normalize(x))))  # (N, classes, h, w)
    with torch.enable_grad():
        raw = cam._attribute(model, x, target, site)  # before upsampling and normalisation
    assert raw.shape == (3, *class_map.shape[2:])
    assert torch.allclose(raw, class_map[torch.arange(3), target], atol=1e-6)
    assert torch.allclose(raw.mean(dim=(1, 2)), logits[torch.arange(3), target], atol=1e-6)
    maps = explain(model, x, target, method="cam")
    assert maps.shape == (3, 64, 64) and torch.isfinite(maps).all() and (maps >= 0).all()
    # the head without its ReLU is a conv classifier head too (the map may then be negative: ReLU'd)
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    assert gap_head(plain, x[:1]).module is plain[2]
    # a conv head averaged by a max-pool, or a conv whose output is not the classes, is no CAM head
    for other in (nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten()), SlicedHead()):
        with pytest.raises(NotApplicableError, match="global-average-pooling") as err:
            gap_head(other.eval(), x[:1])
        assert "\n" not in str(err.value)


def test_gradcam_skips_a_conv_classifier_head_and_reads_the_last_fire_module() -> None:
    method = SALIENCY.get("gradcam")("gradcam")
    x = torch.rand(2, 3, 64, 64)
    target = torch.tensor([0, 1])
    for version in ("1_0", "1_1"):
        model = squeezenet(version)
        fire: Any = model.features
        # the class conv (classifier.1) is the head, not a feature map: the last fire module is
        # read, i.e. the concatenation of its two rectified expand branches
        assert method.where(model, x) == "features.12"
        assert site_of(model, x) is fire[12]
        maps = explain(model, x, target, method="gradcam")
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
        # Grad-CAM at the fire module equals Captum's LayerGradCam there
        from captum.attr import LayerGradCam

        with torch.enable_grad():
            ref = LayerGradCam(model, fire[12]).attribute(x, target=target, relu_attributions=True)
        ref = F.interpolate(ref, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
        assert torch.allclose(maps, ref.clamp(min=0), atol=1e-5)
        # a named layer is still read as named (the class conv too)
        assert method.where(model, x, "classifier.1") == "classifier.1"
    # its int8 fake-quant surrogate (an FX graph: no fire module runs, the concatenation is a
    # torch.cat) reads the same concatenation, under the same name, up to int8 rounding
    from compaudit.compress import METHODS as COMPRESS
    from compaudit.compress import CompressContext
    from compaudit.data import DataBundle
    from compaudit.data.base import ArrayDataset

    model = squeezenet("1_1")
    images = ArrayDataset(torch.rand(8, 3, 64, 64), torch.arange(8) % 2)
    data = DataBundle("noise", images, images, images, ("a", "b"), (3, 64, 64))
    int8 = COMPRESS.get("quantize_int8").from_spec(
        "quantize_int8", {"calibration_batches": 1, "batch_size": 8}
    )
    fake = int8.apply(model, CompressContext(data=data, seed=0, device=torch.device("cpu"))).eval()
    assert method.where(fake, x) == "features.12"
    ours = explain(fake, x, target, method="gradcam")
    reference = explain(model, x, target, method="gradcam")
    assert float(torch.corrcoef(torch.stack([ours.flatten(), reference.flatten()]))[0, 1]) > 0.95
    assert SALIENCY.get("cam")("cam").where(fake, x) == "classifier.3"
    # at 32x32 the last fire module's map is 1x1 in SqueezeNet 1.1: an earlier, spatial one is read
    small = squeezenet("1_1", size=32)
    assert method.where(small, torch.rand(1, 3, 32, 32)) == "features.7"


def test_bad_inputs_are_clear_errors(trained_cnn: nn.Module) -> None:
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ProbeError, match="class indices"):
        explain(trained_cnn, x, torch.tensor([0]), method="gradcam")
    with pytest.raises(ProbeError, match=r"0\.\.9"):
        explain(trained_cnn, x, torch.tensor([0, 10]), method="gradcam")
    with pytest.raises(ProbeError, match="unknown saliency method"):
        explain(trained_cnn, x, torch.tensor([0, 1]), method="lime")


# ---------------------------------------------------------------- metrics: hand-computed cases


def t(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_average_drop_and_increase_in_confidence_by_hand() -> None:
    y, o = t([0.5, 0.8, 0.2, 0.4]), t([0.25, 0.9, 0.2, 0.1])
    assert M.average_drop(y, o).tolist() == pytest.approx([0.5, 0.0, 0.0, 0.75])
    assert M.increase_in_confidence(y, o).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_average_drop_is_on_probabilities_not_logits() -> None:
    # logits [2, 0] -> [1, 0]: the logit of class 0 halves, its probability barely moves
    before, after = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    p_before, p_after = before.softmax(1)[:, 0], after.softmax(1)[:, 0]
    drop = float(M.average_drop(p_before, p_after)[0])
    assert drop == pytest.approx((p_before - p_after).item() / p_before.item())
    assert abs(drop - 0.5) > 0.1  # the logit ratio would say 50%
    with pytest.raises(ValueError, match="softmax probabilities"):
        M.average_drop(before[:, 0], after[:, 0])


def test_complexity_by_hand() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, :2] = 1.0
    maps[0, 1, 0] = 0.5
    maps[1] = 1.0
    assert M.complexity(maps).tolist() == pytest.approx([2.5 / 16, 1.0])


def test_adcc_by_hand() -> None:
    value = M.adcc(t([0.2]), t([0.8]), t([0.3]))
    assert float(value[0]) == pytest.approx(3 / (1 / 0.8 + 1 / 0.7 + 1 / 0.8))
    zeros = M.adcc(t([1.0, 0.1, 0.1]), t([0.5, 0.0, 0.5]), t([0.2, 0.2, 1.0]))
    assert zeros.tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(float(M.adcc(t([0.1]), t([math.nan]), t([0.1]))[0]))


def test_drift_metrics_by_hand() -> None:
    a = torch.zeros(1, 4, 4)
    b = torch.zeros(1, 4, 4)
    b[0, :2, :2] = 1.0
    assert M.mean_absolute_deviation(a, b).tolist() == [0.25]
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0], a[0, 0, 1] = 1.0, 0.9  # top 2 of a: pixels 0 and 1
    b = torch.zeros(1, 4, 4)
    b[0, 0, 1], b[0, 0, 2] = 1.0, 0.9  # top 2 of b: pixels 1 and 2
    assert M.topk_iou(a, b, k=2 / 16).tolist() == pytest.approx([1 / 3])
    assert M.topk_iou(a, a, k=0.1).tolist() == [1.0]


def test_normalize_scales_each_map_to_unit_range() -> None:
    maps = torch.stack([torch.linspace(2.0, 6.0, 16).view(4, 4), torch.full((4, 4), 3.0)])
    out = normalize(maps)
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    assert torch.equal(out[1], torch.zeros(4, 4))  # constant: nothing stands out


# ---------------------------------------------------------------- metrics: parity with libraries


def random_maps(n: int, h: int, w: int, seed: int, *, levels: int | None = None) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    m = F.avg_pool2d(torch.rand(n, 1, h + 2, w + 2, generator=g), 3, stride=1)[:, 0]  # smooth-ish
    m = normalize(m)
    return torch.round(m * levels) / levels if levels else m


def test_pearson_and_spearman_equal_scipy() -> None:
    a, b = random_maps(5, 16, 16, 0, levels=6), random_maps(5, 16, 16, 1, levels=6)  # with ties
    r = M.pearson(a, b)
    rho = M.spearman(a, b)
    for i in range(5):
        x, y = a[i].flatten().double().numpy(), b[i].flatten().double().numpy()
        assert float(r[i]) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-5)
        assert float(rho[i]) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-5)
    assert float(M.coherency(a, b)[0]) == pytest.approx((float(r[0]) + 1) / 2)
    constant = torch.ones(1, 16, 16)
    assert math.isnan(float(M.pearson(constant, a[:1])[0]))
    assert float(M.coherency(constant, a[:1])[0]) == 0.0  # as the ADCC reference code scores it
    assert math.isnan(float(M.spearman(constant, a[:1])[0]))
    assert M.nanmean(t([0.5, math.nan, 1.0])) == pytest.approx(0.75)


@pytest.mark.parametrize("shape", [(16, 16), (20, 27), (11, 11)])
def test_ssim_equals_scikit_image(shape: tuple[int, int]) -> None:
    from skimage.metrics import structural_similarity

    a, b = random_maps(4, *shape, seed=2), random_maps(4, *shape, seed=3)
    b[1] = a[1]  # identical maps: 1
    b[2] = (a[2] + b[2]) / 2  # related maps
    ours = M.ssim(a, b)
    for i in range(4):
        ref = structural_similarity(
            a[i].double().numpy(), b[i].double().numpy(), gaussian_weights=True, sigma=1.5, data_range=1.0
        )
        assert float(ours[i]) == pytest.approx(float(ref), abs=1e-5)
    assert float(ours[1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="11x11"):
        M.ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))
